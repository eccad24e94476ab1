"""Crash safety and concurrency with real processes: `clslm learn` killed (SIGKILL) or interrupted (SIGINT)
at named points (CLSLM_TEST_CRASH_AT, see clslm/atomic.py), the session lock across processes, and the
GGUF → safetensors cache built once by two cold loads.

Each case is one fresh `clslm` process on a tiny model (about 7 s, most of it importing torch).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clslm.documents import Document
from clslm.models import resolve_model
from clslm.session import MANIFEST, Session

from conftest import DOCUMENT, fast_options, snapshot
from test_cli import QUESTION, subprocess_env

OTHER = "The Velmar Bridge crosses the river Oss at Brackley. It opened in 1902 and has seven stone arches."
CLSLM = Path(sys.executable).parent / "clslm"
COMMAND = [str(CLSLM)] if CLSLM.exists() else [sys.executable, "-m", "clslm"]


def manifest(path: Path) -> dict:
    return json.loads((path / MANIFEST).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """One $CLSLM_HOME for this module's processes, so ttt's calibration is computed once."""
    return tmp_path_factory.mktemp("crash-home")


@pytest.fixture(scope="module")
def template(llama_dir, home, tmp_path_factory) -> dict[str, Path]:
    """A session that learned DOCUMENT ("old"), and a copy that then learned OTHER in this process ("new")."""
    root = tmp_path_factory.mktemp("crash-template")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLSLM_HOME", str(home))
        with Session.create(root / "old", model=str(llama_dir), strategy="ttt", options=fast_options("ttt"), device="cpu") as s:
            s.learn([Document(name="kessenbrock", text=DOCUMENT)])
        shutil.copytree(root / "old", root / "new")
        with Session.open(root / "new", device="cpu") as s:
            s.learn([Document(name=str(root / "other.txt"), text=OTHER)])
    (root / "other.txt").write_text(OTHER, encoding="utf-8")
    return {"old": root / "old", "new": root / "new", "doc": root / "other.txt"}


@pytest.fixture
def session(template, tmp_path) -> Path:
    path = tmp_path / "session"
    shutil.copytree(template["old"], path)
    return path


def default_sigint() -> None:
    """A child started from a background job inherits SIGINT ignored, and Python then never raises
    KeyboardInterrupt; the SIGINT tests need the disposition a terminal gives."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def learn(session: Path, doc: Path, home: Path, *, crash_at: str, signal_name: str = "SIGKILL") -> subprocess.CompletedProcess:
    env = subprocess_env(home) | {"CLSLM_TEST_CRASH_AT": crash_at, "CLSLM_TEST_CRASH_SIGNAL": signal_name}
    command = [*COMMAND, "learn", str(doc), "-s", str(session), "--device", "cpu"]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=180, preexec_fn=default_sigint)


def state_files(path: Path) -> dict:
    return manifest(path)["state"]


# ---- SIGKILL: the session opens and answers with the old or the new state ---------------------------------

KILL_POINTS = {
    "learning": "old",  # inside the training loop
    "before-replace:deltas-*": "old",  # the new tensors file written to a temp file, not renamed yet
    "after-replace:deltas-*": "old",  # the new tensors file in place, the manifest not yet written
    "after-replace:state-*": "old",
    "before-replace:session.json": "old",  # the new manifest in a temp file: the commit point not reached
    "after-replace:session.json": "new",  # committed; old files not yet pruned
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_leaves_the_old_or_the_new_session(session, template, home, point):
    proc = learn(session, template["doc"], home, crash_at=point)
    assert proc.returncode == -signal.SIGKILL, proc.stderr

    expected = template[KILL_POINTS[point]]
    # Exactly the old or the new state (the new one is the same bytes as an uninterrupted learn: CPU
    # learning is deterministic), and it verifies and loads.
    assert state_files(session) == state_files(expected)
    assert [d["name"] for d in manifest(session)["documents"]] == [d["name"] for d in manifest(expected)["documents"]]
    with Session.open(session, device="cpu", wait=0) as s:  # the killed holder does not block the lock
        answer = s.ask(QUESTION, max_new_tokens=3)
    with Session.open(expected, device="cpu") as s:
        assert answer.text == s.ask(QUESTION, max_new_tokens=3).text

    # The next learn succeeds and sweeps what the kill left behind (temp files, uncommitted state).
    with Session.open(session, device="cpu", wait=0) as s:
        s.learn([Document(name="again", text="Brackley lies on the river Oss, upstream of the old mill.")])
    state = state_files(session)
    assert {p.name for p in session.iterdir()} == {MANIFEST, ".lock"} | {e["file"] for e in state.values() if e}


# ---- SIGINT: exit 130, one line, the session byte-identical -------------------------------------------------


@pytest.mark.parametrize("point", ["learning", "after-replace:deltas-*", "before-replace:session.json"])
def test_sigint_exits_130_and_leaves_the_session_unchanged(session, template, home, point):
    before = snapshot(session)
    proc = learn(session, template["doc"], home, crash_at=point, signal_name="SIGINT")
    assert proc.returncode == 130, proc.stderr
    # Besides the progress bar's last frame ("learning NAME ..."), one line.
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("learning ")]
    assert lines == ["interrupted; the session is unchanged"], proc.stderr
    assert proc.stdout == ""
    assert snapshot(session) == before


def test_sigint_on_a_first_learn_leaves_no_session(tmp_path, llama_dir, template, home):
    path = tmp_path / "new-session"
    env = subprocess_env(home) | {"CLSLM_TEST_CRASH_AT": "after-replace:deltas-*", "CLSLM_TEST_CRASH_SIGNAL": "SIGINT"}
    command = [*COMMAND, "learn", str(template["doc"]), "-s", str(path), "--model", str(llama_dir), "--device", "cpu"]
    proc = subprocess.run([*command, *sum((["-o", f"{k}={v}"] for k, v in fast_options("ttt").items()), [])], capture_output=True, text=True, env=env, timeout=180, preexec_fn=default_sigint)
    assert proc.returncode == 130, proc.stderr
    assert not path.exists()


# ---- the lock across processes -------------------------------------------------------------------------------


def waiting_in_sleep(proc: subprocess.Popen, samples: int = 5) -> bool:
    """True once the process sits in a sleep for `samples` looks in a row (filelock's retry loop)."""
    for _ in range(samples):
        try:
            wchan = Path(f"/proc/{proc.pid}/wchan").read_text()
        except OSError:
            return False
        if proc.poll() is not None or "nanosleep" not in wchan:
            return False
        time.sleep(0.02)
    return True


def wait_until_blocked(*procs: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not all(waiting_in_sleep(p) for p in procs):
        assert all(p.poll() is None for p in procs), "a process ended instead of waiting"
        assert time.monotonic() < deadline, "the processes never reached the lock"
        time.sleep(0.1)


@pytest.mark.skipif(not Path("/proc/self/wchan").exists(), reason="needs Linux /proc to see a process wait")
def test_wait_blocks_until_the_holder_lets_go(session, home):
    command = [*COMMAND, "ask", QUESTION, "-s", str(session), "--device", "cpu", "--max-new-tokens", "2", "--json", "--wait", "120"]
    with Session.open(session):
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(home))
        wait_until_blocked(proc)
        time.sleep(0.5)
        assert proc.poll() is None, "the waiting process gave up while the lock was held"
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert json.loads(out)["question"] == QUESTION


def test_busy_is_immediate_without_wait_and_after_wait_seconds(session):
    from clslm.cli import main

    with Session.open(session):
        for wait, low, high in [("0", 0.0, 0.5), ("0.6", 0.6, 3.0)]:
            start = time.monotonic()
            with pytest.raises(SystemExit) as e:
                main(["ask", QUESTION, "-s", str(session), "--device", "cpu", "--wait", wait])
            elapsed = time.monotonic() - start
            assert e.value.code == 4
            assert low <= elapsed < high, f"--wait {wait}: gave up after {elapsed:.2f} s"


# ---- the GGUF cache is built once by two cold loads -------------------------------------------------------------


def write_tiny_gguf(path: Path, model, tokenizer) -> Path:
    """A real GGUF (F32, llama architecture, gpt2-style BPE vocabulary) of a tiny random model."""
    import gguf

    cfg, writer = model.config, gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(256)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(len(tokenizer))
    writer.add_file_type(0)
    bpe = json.loads(tokenizer.backend_tokenizer.to_str())
    tokens = [""] * len(tokenizer)
    for token, i in [*bpe["model"]["vocab"].items(), *((t["content"], t["id"]) for t in bpe["added_tokens"])]:
        tokens[i] = token
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t.startswith("<") and t.endswith(">") else 1 for t in tokens])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in bpe["model"]["merges"]])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_chat_template(tokenizer.chat_template)
    for name, tensor in model.state_dict().items():
        writer.add_tensor(gguf_name(name), tensor.float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


GGUF_LAYER = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}  # fmt: skip
GGUF_GLOBAL = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}


def gguf_name(name: str) -> str:
    if name in GGUF_GLOBAL:
        return GGUF_GLOBAL[name]
    _, _, layer, *rest, _ = name.split(".")  # model.layers.N.<module>.weight
    return f"blk.{layer}.{GGUF_LAYER['.'.join(rest)]}.weight"


def cold_loads(model_ref: str, home: Path, tmp_path: Path, command: list[str]) -> list[subprocess.CompletedProcess]:
    """Two processes load `model_ref` with an empty cache while the test holds the cache's lock; once both
    wait on it, let go."""
    from filelock import FileLock

    models = home / "models"
    models.mkdir(parents=True)
    lock = FileLock(str(models / f"{resolve_model(model_ref).fingerprint[:32]}.lock"))  # the lock clslm.models takes
    env = subprocess_env(home)
    with lock:
        procs = [subprocess.Popen([*command, str(tmp_path / f"s{i}")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for i in (1, 2)]
        wait_until_blocked(*procs)
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=600), *p.communicate()) for p in procs]


def check_built_once(results: list[subprocess.CompletedProcess], home: Path) -> None:
    for r in results:
        assert r.returncode == 0, r.stderr
    assert sum("converting" in r.stderr for r in results) == 1, [r.stderr for r in results]
    caches = [p for p in (home / "models").iterdir() if p.is_dir()]
    assert len(caches) == 1 and (caches[0] / "config.json").is_file()  # no half-built temp dir left


@pytest.mark.skipif(not Path("/proc/self/wchan").exists(), reason="needs Linux /proc to see a process wait")
def test_two_cold_loads_of_a_gguf_build_the_cache_once(tmp_path, tokenizer, doc_file):
    from conftest import build_model

    gguf_file = write_tiny_gguf(tmp_path / "tiny.gguf", build_model("llama", tokenizer), tokenizer)
    options = sum((["-o", f"{k}={v}"] for k, v in fast_options("ttt").items()), [])
    command = [*COMMAND, "learn", str(doc_file), "--model", str(gguf_file), "--device", "cpu", *options, "-s"]
    home = tmp_path / "home"
    check_built_once(cold_loads(str(gguf_file), home, tmp_path, command), home)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/wchan").exists(), reason="needs Linux /proc to see a process wait")
def test_two_cold_loads_of_the_default_model_build_the_cache_once(tmp_path):
    code = "import sys; from clslm.models import load_model, resolve_model; load_model(resolve_model('smollm2-135m'), device='cpu')"
    home = tmp_path / "home"
    check_built_once(cold_loads("smollm2-135m", home, tmp_path, [sys.executable, "-c", code]), home)
