"""End to end in the ecosystem: what `clslm export` writes, converted by llama.cpp's own converters and run by
llama-cpp-python, answers exactly as `clslm ask` does.

The real default model (SmolLM2-135M) learns a short document through the CLI, once with ttt and once with
doc2lora (its bundled hypernetwork, refined mode), both with `-o beams=1`: `clslm ask` then decodes greedily,
as llama.cpp does (by default both strategies answer with 2 beams where the document's deltas act, a search
no llama.cpp server runs). `clslm ask --json` answers three questions about the document, each routed to it
(its deltas are on, as they always are in an export). Then:

- ttt's merged export → GGUF (convert_hf_to_gguf.py, f32) → llama_cpp.Llama;
- ttt's peft export (rank 64: exact) and doc2lora's own LoRA of the document (`--document`) → GGUF LoRA
  (convert_lora_to_gguf.py, f32), applied by llama.cpp to the f32 GGUF of the base model the adapter names
  (clslm's dequantized copy of the embedded Q4_1 GGUF).

Each question goes to llama-cpp-python's `create_chat_completion` (the chat template the converter stored in
the GGUF; greedy: temperature 0, top_k 1, no repeat penalty) with the same 32-token limit. Compared: the
prompt's token ids (clslm's chat prompt tokenized by the exported HF tokenizer and by llama.cpp), the number
of prompt tokens llama.cpp reports against `clslm ask`'s `prompt_tokens`, and the answer text, exactly (both
sides strip surrounding whitespace, as `clslm ask` does). Then the numbers under the answers: llama.cpp's
logits at every position of each prompt + answer against transformers' on the export (the merged model, or
the base model with the adapter through peft; `clslm export` checked either against the session), with an
f32 KV cache: within LOGIT_TOL. llama.cpp's default f16 KV cache alone moves them by ~0.05 (measured), which
the greedy answers absorb here; an f16 GGUF changed one answer of three (docs/export.md).

The converters and the gguf-py they import come from the llama-cpp-python source package the Makefile
builds; `make test-integration` extracts them to build/llama.cpp-convert (or $CLSLM_LLAMA_CPP_CONVERT).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

from conftest import DOCUMENT, USER_CLSLM_HOME

pytestmark = pytest.mark.integration
if find_spec("llama_cpp") is None:
    pytest.skip("llama-cpp-python is not installed (`make test-integration` builds it)", allow_module_level=True)

REPO = Path(__file__).resolve().parents[2]
CONVERT_ENV = "CLSLM_LLAMA_CPP_CONVERT"
DOC_NAME = "kessenbrock.txt"
QUESTIONS = (
    "Who built the Kessenbrock Light?",
    "How tall is the granite tower of the Kessenbrock Light?",
    "In which year was the Kessenbrock Light finished?",
)
MAX_TOKENS = 32
GREEDY = dict(temperature=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, seed=0)
LOGIT_TOL = 2e-3  # f32 throughout, summed in another order: ~1.3e-4 measured; learning moves these logits by > 1


@pytest.fixture(scope="module")
def converters() -> Path:
    """The directory holding llama.cpp's convert_hf_to_gguf.py, convert_lora_to_gguf.py and gguf-py/."""
    where = os.environ.get(CONVERT_ENV)
    directory = Path(where) if where else REPO / "build" / "llama.cpp-convert"
    if not (directory / "convert_hf_to_gguf.py").is_file():
        message = f"llama.cpp's converters are not in {directory} (`make test-integration` extracts them from the llama-cpp-python source package)"
        if where:  # the Makefile said where they are: their absence is a failure, not a skip
            pytest.fail(message)
        pytest.skip(message)
    return directory


def clslm_env() -> dict[str, str]:
    """The environment of a user's `clslm`: their model cache (the real model's GGUF → safetensors conversion is
    reused), one torch thread (a shared 2-core machine), no session or model taken from the test run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLSLM_")}
    if USER_CLSLM_HOME is not None:
        env["CLSLM_HOME"] = USER_CLSLM_HOME
    return env | {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def clslm(*args, cwd: Path | None = None) -> dict:
    """`clslm ARGS --json` in a process of its own, as a user runs it: exit 0 and one JSON object."""
    done = subprocess.run([sys.executable, "-m", "clslm", *map(str, args), "--json"], env=clslm_env(), cwd=cwd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"clslm {' '.join(map(str, args))} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def convert(converters: Path, script: str, *args) -> None:
    """One of llama.cpp's converters, with the gguf-py it was released with (not the one clslm uses)."""
    env = clslm_env() | {"PYTHONPATH": str(converters / "gguf-py")}
    done = subprocess.run([sys.executable, str(converters / script), *map(str, args)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stderr[-3000:]}"


def learn_and_ask(work: Path, strategy: str) -> list[dict]:
    """`clslm learn` DOCUMENT into work/session with `strategy` (greedy answers), then `clslm ask` each question."""
    (work / DOC_NAME).write_text(DOCUMENT, encoding="utf-8")
    session = work / "session"
    clslm("learn", DOC_NAME, "-s", session, "--strategy", strategy, "-o", "beams=1", "--device", "cpu", cwd=work)  # named DOC_NAME
    asked = [clslm("ask", q, "-s", session, "--max-new-tokens", MAX_TOKENS, "--compare-base", "--device", "cpu") for q in QUESTIONS]
    assert all(a["deltas"] for a in asked), f"every question must route to the document, or the export (always on) answers otherwise: {asked}"
    assert any(a["answer"] != a["base_answer"] for a in asked), f"learning must change an answer for this test to mean anything: {asked}"
    return asked


@pytest.fixture(scope="module")
def ttt(tmp_path_factory):
    """A ttt session that learned DOCUMENT on the default model, `clslm ask`'s answers, its merged and peft exports."""
    work = tmp_path_factory.mktemp("export-gguf-ttt")
    asked = learn_and_ask(work, "ttt")
    merged = clslm("export", work / "merged", "-s", work / "session", "--format", "merged", "--device", "cpu")
    # ttt's weight changes have rank <= the neurons a part changes per layer (64 for this document): rank 64 is exact
    peft = clslm("export", work / "adapter", "-s", work / "session", "--format", "peft", "--rank", 64, "--device", "cpu")
    assert merged["exact"] and peft["exact"], (merged, peft)
    yield {"work": work, "asked": asked}
    shutil.rmtree(work, ignore_errors=True)  # an f32 GGUF of 540 MB


@pytest.fixture(scope="module")
def doc2lora(tmp_path_factory):
    """A doc2lora session that learned DOCUMENT, `clslm ask`'s answers, the document's own LoRA as a peft adapter."""
    work = tmp_path_factory.mktemp("export-gguf-doc2lora")
    asked = learn_and_ask(work, "doc2lora")
    peft = clslm("export", work / "adapter", "-s", work / "session", "--format", "peft", "--document", DOC_NAME, "--device", "cpu")
    assert peft["exact"], peft
    yield {"work": work, "asked": asked}
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def base_ggufs(tmp_path_factory, converters):
    """base model directory → its f32 GGUF, converted once (both adapters name the same base)."""
    made: dict[Path, Path] = {}

    def gguf(base: Path) -> Path:
        if base not in made:
            made[base] = tmp_path_factory.mktemp("base-gguf") / "base-f32.gguf"
            convert(converters, "convert_hf_to_gguf.py", base, "--outtype", "f32", "--outfile", made[base])
        return made[base]

    yield gguf
    for path in made.values():
        path.unlink(missing_ok=True)


def served_answers(gguf: Path, asked: list[dict], tokenizer_dir: Path, lora: Path | None = None) -> list[str]:
    """llama-cpp-python's greedy chat answers to QUESTIONS; checks on the way that it sees clslm's prompt tokens."""
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    from clslm.generation import chat_prompt

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    llm = Llama(model_path=str(gguf), lora_path=None if lora is None else str(lora), n_ctx=512, n_threads=1, seed=0, verbose=False)
    answers = []
    for question, clslm_answer in zip(QUESTIONS, asked):
        prompt = chat_prompt(tokenizer, question)
        assert llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True) == tokenizer(prompt, add_special_tokens=False)["input_ids"]
        reply = llm.create_chat_completion([{"role": "user", "content": question}], max_tokens=MAX_TOKENS, **GREEDY)
        assert reply["usage"]["prompt_tokens"] == clslm_answer["prompt_tokens"], "the GGUF's chat template gives another prompt"
        answers.append(reply["choices"][0]["message"]["content"].strip())
    return answers


def logit_gap(gguf: Path, asked: list[dict], model_dir: Path, lora: Path | None = None, adapter: Path | None = None) -> float:
    """Largest |llama.cpp logit − transformers logit| over every position of each prompt + clslm's answer, with
    llama.cpp's KV cache in f32 (its default is f16); the reference is the export in transformers (`model_dir`,
    with the peft `adapter` on it if given)."""
    import numpy as np
    import torch
    from llama_cpp import GGML_TYPE_F32, Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from clslm.generation import chat_prompt

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    llm = Llama(model_path=str(gguf), lora_path=None if lora is None else str(lora), n_ctx=512, n_threads=1, seed=0, verbose=False, logits_all=True, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
    gap = 0.0
    for question, clslm_answer in zip(QUESTIONS, asked):
        ids = tokenizer(chat_prompt(tokenizer, question) + clslm_answer["answer"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            reference = model(input_ids=torch.tensor([ids])).logits[0].numpy()
        llm.reset()
        llm.eval(ids)
        gap = max(gap, float(np.abs(np.asarray(llm.scores[: len(ids)]) - reference).max()))
    return gap


def check(asked: list[dict], answers: list[str], gap: float, label: str) -> None:
    print(json.dumps({"clslm ask": [a["answer"] for a in asked], label: answers, "max |Δ logit|": gap}, indent=1, ensure_ascii=False))
    assert answers == [a["answer"] for a in asked]
    assert gap < LOGIT_TOL


def test_ttt_merged_export_as_gguf_answers_like_clslm_ask(ttt, converters):
    merged, gguf = ttt["work"] / "merged", ttt["work"] / "merged-f32.gguf"
    convert(converters, "convert_hf_to_gguf.py", merged, "--outtype", "f32", "--outfile", gguf)
    answers = served_answers(gguf, ttt["asked"], merged)
    check(ttt["asked"], answers, logit_gap(gguf, ttt["asked"], merged), "llama.cpp")


@pytest.mark.parametrize("strategy", ["ttt", "doc2lora"])
def test_peft_export_as_gguf_lora_on_the_base_gguf_answers_like_clslm_ask(strategy, request, converters, base_ggufs):
    learned = request.getfixturevalue(strategy)
    adapter, lora = learned["work"] / "adapter", learned["work"] / "lora-f32.gguf"
    base = Path(json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"])
    convert(converters, "convert_lora_to_gguf.py", adapter, "--base", base, "--outtype", "f32", "--outfile", lora)
    answers = served_answers(base_ggufs(base), learned["asked"], base, lora=lora)
    check(learned["asked"], answers, logit_gap(base_ggufs(base), learned["asked"], base, lora=lora, adapter=adapter), "llama.cpp + LoRA")
