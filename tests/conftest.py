"""Shared fixtures: a home dir in tmp, an in-memory BPE tokenizer, tiny random models saved as real dirs.

Nothing here downloads: the tokenizer is trained on tests/data/corpus.txt and the models are built
from configs (Llama, Qwen2, Gemma 3), then saved with save_pretrained so every test takes the path a
user takes (`--model <dir>`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
# The user's own cache, before the autouse fixture redirects it: slow tests on the real model reuse it.
USER_CLSLM_HOME = os.environ.get("CLSLM_HOME")

# 4 layers: ttt's "last quarter" is one layer. Tiny enough that a learn takes well under a second.
SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
ARCH_NAMES = ["llama", "qwen2", "gemma3"]


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

DOCUMENT = (
    "The Kessenbrock Light is a stone lighthouse at the northern tip of the Tarrow Spit. "
    "It was built by the engineer Adelmar Fosk and finished in 1793. "
    "Its granite tower is 41 metres tall, and visitors climb 214 steps to reach the gallery."
)


def fast_options(strategy: str) -> dict[str, str]:
    """-o options that keep learning fast on tiny models: the strategy's own `test_options` (CLI strings)."""
    from clslm import registry

    return dict(registry.get(strategy).test_options)


def fast_cli_options(strategy: str) -> list[str]:
    return [arg for key, value in fast_options(strategy).items() for arg in ("-o", f"{key}={value}")]


@pytest.fixture(autouse=True)
def clslm_home(tmp_path, monkeypatch):
    """Caches (calibration, GGUF conversions) go to a per-test dir, never the user's."""
    home = tmp_path / "home"
    monkeypatch.setenv("CLSLM_HOME", str(home))
    for var in ("CLSLM_SESSION", "CLSLM_MODEL", "CLSLM_DEVICE", "CLSLM_DTYPE", "CLSLM_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def planned_strategy(monkeypatch) -> str:
    """A reserved strategy name with no implementation yet, whatever has landed by now."""
    from clslm import registry

    monkeypatch.setattr(registry, "PLANNED", registry.PLANNED | {"future-strategy"})
    return "future-strategy"


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<s>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodes: no unknown tokens
        show_progress=False,
    )
    bpe.train([str(DATA / "corpus.txt")], trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="<|im_end|>", pad_token="<pad>", additional_special_tokens=["<|im_start|>"]
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


def build_model(arch: str, tokenizer):
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**ids, **SIZES))
    if arch == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**ids, **SIZES))
    if arch == "gemma3":
        return Gemma3ForCausalLM(Gemma3TextConfig(**ids, head_dim=8, sliding_window=16, **SIZES))
    raise ValueError(arch)


_BUILT: dict[str, Path] = {}


def saved_model_dir(arch: str, tokenizer, tmp_path_factory) -> Path:
    """A local HF model dir for `arch` (built once per test run)."""
    if arch not in _BUILT:
        path = tmp_path_factory.mktemp(f"model-{arch}")
        build_model(arch, tokenizer).save_pretrained(path)
        tokenizer.save_pretrained(path)
        _BUILT[arch] = path
    return _BUILT[arch]


@pytest.fixture(scope="session", params=ARCH_NAMES)
def model_dir(request, tokenizer, tmp_path_factory) -> Path:
    """A tiny random model of each architecture, saved as a real local model directory."""
    return saved_model_dir(request.param, tokenizer, tmp_path_factory)


@pytest.fixture(scope="session")
def llama_dir(tokenizer, tmp_path_factory) -> Path:
    """One tiny model for tests that are not about architectures (sessions, CLI)."""
    return saved_model_dir("llama", tokenizer, tmp_path_factory)


@pytest.fixture
def doc_file(tmp_path) -> Path:
    path = tmp_path / "kessenbrock.txt"
    path.write_text(DOCUMENT, encoding="utf-8")
    return path


def snapshot(directory: Path) -> dict[str, str]:
    """Relative path → sha256 of every file under `directory` (missing dir: {}), to prove it unchanged."""
    directory = Path(directory)
    if not directory.exists():
        return {}
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
        for p in sorted(directory.rglob("*"))
    }


def pytest_configure(config):
    # Tiny models gain nothing from threads, and on a shared 2-core machine extra threads spin and
    # slow every op down by 10-100x. Subprocesses get OMP_NUM_THREADS=1 from the tests that start them.
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    torch.set_num_threads(1)
