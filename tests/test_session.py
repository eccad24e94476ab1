"""Sessions on disk: round trip, commit order, locking, corruption, mismatches, reset, finiteness."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from clslm import session as session_module
from clslm import state_files as state_files_module
from clslm.documents import Document
from clslm.errors import InputError, SessionBusy, SessionCorrupt, SessionMismatch, SessionNotFound, TrainingDiverged
from clslm.models import load_model, resolve_model
from clslm.session import FORMAT_VERSION, MANIFEST, Session

from conftest import DOCUMENT, build_model, fast_options, snapshot

OTHER = "The Velmar Bridge crosses the river Oss at Brackley. It opened in 1902 and has seven stone arches."
QUESTION = "Which engineer built the Kessenbrock Light?"


def new_session(path: Path, model_dir: Path, **kw) -> Session:
    return Session.create(path, model=str(model_dir), strategy="ttt", options=fast_options("ttt"), device="cpu", **kw)


@pytest.fixture
def learned_session(tmp_path, llama_dir) -> Path:
    """A session that learned one document, saved and closed."""
    path = tmp_path / "session"
    with new_session(path, llama_dir) as s:
        s.learn([Document(name="kessenbrock", text=DOCUMENT)])
    return path


def manifest(path: Path) -> dict:
    return json.loads((path / MANIFEST).read_text(encoding="utf-8"))


def state_file(path: Path) -> Path:
    return path / manifest(path)["state"]["tensors"]["file"]


def load_state(path: Path) -> None:
    """Open and load the strategy with its state (where corruption and mismatches surface)."""
    with Session.open(path, device="cpu") as s:
        s.strategy()


# ---- round trip --------------------------------------------------------------------------------------


def test_round_trip(learned_session, llama_dir):
    data = manifest(learned_session)
    assert data["format_version"] == FORMAT_VERSION
    assert data["model"]["ref"] == str(llama_dir) and data["model"]["kind"] == "dir"
    assert data["model"]["fingerprint"] == resolve_model(str(llama_dir)).fingerprint
    assert data["strategy"]["name"] == "ttt"
    assert data["strategy"]["config"]["epochs"] == int(fast_options("ttt")["epochs"])
    [doc] = data["documents"]
    assert doc["name"] == "kessenbrock" and doc["sha256"] == hashlib.sha256(DOCUMENT.encode()).hexdigest()
    assert doc["tokens"] > 0 and doc["loss_after"] < doc["loss_before"] and doc["learned_at"]

    with Session.open(learned_session, device="cpu") as s:
        assert s.documents == data["documents"]
        info = s.info()
        files = [learned_session / e["file"] for e in data["state"].values() if e]
        assert info["state_bytes"] == s.state_bytes() == sum(f.stat().st_size for f in files) > 0
        assert info["strategy"]["name"] == "ttt" and info["model"]["ref"] == str(llama_dir)
        s.ask(QUESTION, max_new_tokens=2)
        # Once the strategy is loaded, info also describes its state.
        assert "state" in s.info()["strategy"]


def test_int8_deltas_round_trip_through_the_session_files(tmp_path, llama_dir):
    path = tmp_path / "int8"
    with Session.create(path, model=str(llama_dir), strategy="ttt", options={**fast_options("ttt"), "state_dtype": "int8"}, device="cpu") as s:
        s.learn([Document(name="kessenbrock", text=DOCUMENT)])
        live = s.ask(QUESTION, max_new_tokens=4).text
    with Session.open(path, device="cpu") as s:
        assert s.ask(QUESTION, max_new_tokens=4).text == live
    from safetensors.torch import load_file

    saved = load_file(state_file(path))
    assert {v.dtype for k, v in saved.items() if k.endswith(".down")} == {torch.int8}


def test_state_is_the_learned_part_not_a_model_copy(learned_session, llama_dir):
    model_bytes = sum(p.stat().st_size for p in llama_dir.glob("*.safetensors"))
    assert 0 < state_file(learned_session).stat().st_size < model_bytes / 4


def test_learning_again_adds_to_the_session(learned_session):
    with Session.open(learned_session, device="cpu") as s:
        s.learn([Document(name="bridge", text=OTHER)])
    assert [d["name"] for d in manifest(learned_session)["documents"]] == ["kessenbrock", "bridge"]
    with Session.open(learned_session, device="cpu") as s:
        assert s.strategy().describe()["parts"] == 2  # one routed part per short document


def test_open_missing_session(tmp_path):
    with pytest.raises(SessionNotFound) as e:
        Session.open(tmp_path / "nothing")
    assert e.value.exit_code == 4
    assert not (tmp_path / "nothing").exists()


def test_create_refuses_an_existing_session(learned_session, llama_dir):
    with pytest.raises(SessionMismatch, match="already exists"):
        new_session(learned_session, llama_dir)


def test_empty_question_is_bad_input(learned_session):
    with Session.open(learned_session, device="cpu") as s, pytest.raises(InputError):
        s.ask("   ")


def test_nul_in_session_path_is_bad_input():
    with pytest.raises(InputError):
        Session.open("a\x00b")


# ---- commit order ----------------------------------------------------------------------------------


def test_manifest_is_written_last_and_files_are_content_named(tmp_path, llama_dir, monkeypatch):
    written: list[str] = []
    real_atomic, real_json = state_files_module.write_atomic, session_module.write_json_atomic
    monkeypatch.setattr(state_files_module, "write_atomic", lambda p, w: (written.append(Path(p).name), real_atomic(p, w))[1])
    monkeypatch.setattr(session_module, "write_json_atomic", lambda p, d: (written.append(Path(p).name), real_json(p, d))[1])
    path = tmp_path / "session"
    with new_session(path, llama_dir) as s:
        s.learn([Document(name="kessenbrock", text=DOCUMENT)])
    assert written[-1] == MANIFEST and written.count(MANIFEST) == 1
    assert any(name.startswith("deltas-") for name in written[:-1])

    data = manifest(path)
    for entry in data["state"].values():
        if entry is None:
            continue
        blob = (path / entry["file"]).read_bytes()
        digest = hashlib.sha256(blob).hexdigest()
        assert entry["sha256"] == digest and entry["bytes"] == len(blob)
        assert entry["file"] in (f"deltas-{digest[:16]}.safetensors", f"state-{digest[:16]}.json")
    # Only the manifest, the lock and the current state files: no temp files left behind.
    expected = {MANIFEST, ".lock"} | {e["file"] for e in data["state"].values() if e}
    assert {p.name for p in path.iterdir()} == expected


def test_old_state_files_are_pruned(learned_session):
    first = state_file(learned_session).name
    with Session.open(learned_session, device="cpu") as s:
        s.learn([Document(name="bridge", text=OTHER)])
    second = state_file(learned_session).name
    assert second != first
    assert not (learned_session / first).exists()
    assert sorted(p.name for p in learned_session.glob("deltas-*")) == [second]


def test_a_crash_before_the_manifest_leaves_the_old_session(learned_session, monkeypatch):
    before = manifest(learned_session)

    def crash(path, data):
        raise KeyboardInterrupt

    monkeypatch.setattr(session_module, "write_json_atomic", crash)
    with Session.open(learned_session, device="cpu") as s, pytest.raises(KeyboardInterrupt):
        s.learn([Document(name="bridge", text=OTHER)])
    monkeypatch.undo()
    assert manifest(learned_session) == before
    # The old state file is still there and verifies; the session still loads.
    load_state(learned_session)
    with Session.open(learned_session, device="cpu") as s:
        assert s.strategy().describe()["parts"] == 1


# ---- locking ------------------------------------------------------------------------------------------


def test_a_second_session_on_a_held_path_is_busy(learned_session):
    with Session.open(learned_session):
        with pytest.raises(SessionBusy, match="busy") as e:
            with Session.open(learned_session):
                pass
        assert e.value.exit_code == 4
    # Released on exit: it can be taken again.
    with Session.open(learned_session):
        pass


def test_the_lock_is_released_after_an_error(learned_session):
    with pytest.raises(RuntimeError):
        with Session.open(learned_session):
            raise RuntimeError("boom")
    with Session.open(learned_session):
        pass


# ---- corruption ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda text, data: "{not json", id="bad-json"),
        pytest.param(lambda text, data: "", id="empty"),
        pytest.param(lambda text, data: "[1, 2]", id="not-an-object"),
        pytest.param(lambda text, data: json.dumps({k: v for k, v in data.items() if k != "format_version"}), id="no-format-version"),
        pytest.param(lambda text, data: json.dumps(data | {"format_version": "1"}), id="format-version-not-int"),
        pytest.param(lambda text, data: json.dumps(data | {"format_version": FORMAT_VERSION + 1}), id="newer-format"),
        pytest.param(lambda text, data: json.dumps({k: v for k, v in data.items() if k != "state"}), id="missing-state"),
        pytest.param(lambda text, data: json.dumps({k: v for k, v in data.items() if k != "model"}), id="missing-model"),
        pytest.param(lambda text, data: text.encode("utf-8")[:-40].decode("utf-8", "ignore"), id="truncated"),
        pytest.param(lambda text, data: b"\xff\xfe\x00garbage".decode("latin-1"), id="binary"),
    ],
)
def test_corrupt_manifest(learned_session, corrupt):
    path = learned_session / MANIFEST
    text = path.read_text(encoding="utf-8")
    path.write_text(corrupt(text, json.loads(text)), encoding="utf-8")
    with pytest.raises(SessionCorrupt) as e:
        load_state(learned_session)
    assert e.value.exit_code == 4
    assert "\n" not in str(e.value)


def test_newer_format_says_upgrade(learned_session):
    path = learned_session / MANIFEST
    path.write_text(json.dumps(manifest(learned_session) | {"format_version": FORMAT_VERSION + 1}), encoding="utf-8")
    with pytest.raises(SessionCorrupt, match="newer clslm"):
        Session.open(learned_session)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[: len(b) // 2], id="truncated"),
        pytest.param(lambda b: b[:-1], id="one-byte-short"),
        pytest.param(lambda b: b[:-1] + bytes([b[-1] ^ 1]), id="altered-same-size"),
        pytest.param(lambda b: b + b"\x00", id="extended"),
        pytest.param(lambda b: b"", id="empty"),
    ],
)
def test_damaged_safetensors(learned_session, damage):
    path = state_file(learned_session)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(SessionCorrupt, match="truncated or altered") as e:
        load_state(learned_session)
    assert e.value.exit_code == 4


def test_missing_state_file(learned_session):
    state_file(learned_session).unlink()
    with pytest.raises(SessionCorrupt, match="missing"):
        load_state(learned_session)


def test_state_file_outside_the_session_is_refused(learned_session, tmp_path):
    data = manifest(learned_session)
    outside = tmp_path / "elsewhere.safetensors"
    shutil.copy(state_file(learned_session), outside)
    data["state"]["tensors"]["file"] = "../elsewhere.safetensors"
    (learned_session / MANIFEST).write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(SessionCorrupt):
        load_state(learned_session)


def test_valid_file_that_does_not_fit_the_strategy(learned_session):
    """A well-formed safetensors (sha256 and size match) with foreign tensor names is still corrupt."""
    from safetensors.torch import save

    data = manifest(learned_session)
    blob = save({"something.else": torch.zeros(2)})
    digest = hashlib.sha256(blob).hexdigest()
    name = f"deltas-{digest[:16]}.safetensors"
    (learned_session / name).write_bytes(blob)
    data["state"]["tensors"] = {"file": name, "bytes": len(blob), "sha256": digest}
    (learned_session / MANIFEST).write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(SessionCorrupt, match="does not fit"):
        load_state(learned_session)


def test_sha256_verified_not_just_size(learned_session):
    data = manifest(learned_session)
    data["state"]["tensors"]["sha256"] = "0" * 64
    (learned_session / MANIFEST).write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(SessionCorrupt, match="truncated or altered"):
        load_state(learned_session)


# ---- mismatches ------------------------------------------------------------------------------------


def test_model_changed_since_the_session_was_made(tmp_path, llama_dir, tokenizer):
    model_dir = tmp_path / "model"
    shutil.copytree(llama_dir, model_dir)
    path = tmp_path / "session"
    with new_session(path, model_dir) as s:
        s.learn([Document(name="kessenbrock", text=DOCUMENT)])
    # Another model under the same path: a different config (and weights) than the session was made with.
    other = build_model("qwen2", tokenizer)
    shutil.rmtree(model_dir)
    other.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    before = snapshot(path)
    with pytest.raises(SessionMismatch, match="fingerprint") as e:
        load_state(path)
    assert e.value.exit_code == 4
    assert snapshot(path) == before


def test_other_model_ref_on_an_existing_session(learned_session, tmp_path, tokenizer):
    with pytest.raises(SessionMismatch, match="made with model"):
        Session.open_or_create(learned_session, model=str(tmp_path / "another-model"))


def test_other_strategy_on_an_existing_session(learned_session):
    before = snapshot(learned_session)
    with pytest.raises(SessionMismatch, match="strategy 'ttt'") as e:
        Session.open_or_create(learned_session, strategy="ace")
    assert e.value.exit_code == 4
    assert snapshot(learned_session) == before


def test_same_model_and_strategy_reopen(learned_session, llama_dir):
    s = Session.open_or_create(learned_session, model=str(llama_dir), strategy="ttt")
    assert len(s.documents) == 1


def test_options_on_an_existing_session_update_its_config(learned_session):
    s = Session.open_or_create(learned_session, options={"epochs": "5"})
    assert s.manifest["strategy"]["config"]["epochs"] == 5
    # Kept from the session, not reset to defaults.
    assert s.manifest["strategy"]["config"]["neurons"] == int(fast_options("ttt")["neurons"])


# ---- reset and finiteness ------------------------------------------------------------------------------


def test_reset_keeps_settings_and_forgets_documents(learned_session, llama_dir):
    before = manifest(learned_session)
    old_state = state_file(learned_session)
    with Session.open(learned_session, device="cpu") as s:
        s.reset()
        assert s.documents == [] and s.state_bytes() == 0
    after = manifest(learned_session)
    assert after["documents"] == [] and after["state"] == {"tensors": None, "extra": None}
    assert after["model"] == before["model"] and after["strategy"] == before["strategy"]
    assert after["created"] == before["created"]
    assert not old_state.exists() and not list(learned_session.glob("deltas-*"))
    # What remains answers exactly as the base model.
    base, tokenizer = load_model(resolve_model(str(llama_dir)), device="cpu")
    ids = tokenizer(DOCUMENT, return_tensors="pt")["input_ids"]
    with Session.open(learned_session, device="cpu") as s, torch.no_grad():
        assert s.strategy().describe()["parts"] == 0
        assert torch.equal(s.strategy().model(input_ids=ids).logits, base(input_ids=ids).logits)


def test_non_finite_state_is_never_saved(learned_session):
    before = snapshot(learned_session)
    with Session.open(learned_session, device="cpu") as s:
        strategy = s.strategy()
        name, tensor = next((k, v) for k, v in strategy.model.state_dict().items() if type(strategy).prefix in k and v.is_floating_point())
        tensor.view(-1)[0] = float("nan")
        with pytest.raises(TrainingDiverged, match="not finite"):
            s.save()
    assert snapshot(learned_session) == before
    load_state(learned_session)


def test_non_finite_first_learn_leaves_no_session(tmp_path, llama_dir, monkeypatch):
    path = tmp_path / "session"
    with new_session(path, llama_dir) as s:
        strategy = s.strategy()
        real_learn = strategy.learn

        def diverging_learn(document, on_step=None):
            report = real_learn(document)
            for key, value in strategy.model.state_dict().items():
                if type(strategy).prefix in key and value.is_floating_point():
                    value.fill_(float("inf"))
            return report

        monkeypatch.setattr(strategy, "learn", diverging_learn)
        with pytest.raises(TrainingDiverged):
            s.learn([Document(name="kessenbrock", text=DOCUMENT)])
    assert not (path / MANIFEST).exists()
    assert not list(path.glob("deltas-*"))


def test_a_failed_learn_restores_the_saved_state(learned_session, monkeypatch):
    with Session.open(learned_session, device="cpu") as s:
        saved_documents = list(s.documents)
        strategy = s.strategy()

        def failing_learn(document, on_step=None):
            raise TrainingDiverged("boom")

        monkeypatch.setattr(strategy, "learn", failing_learn)
        with pytest.raises(TrainingDiverged):
            s.learn([Document(name="other", text=OTHER)])
        assert s.documents == saved_documents
        assert s.strategy() is not strategy  # the half-learned model is dropped and reloaded from disk


def test_a_failed_first_learn_leaves_no_directory(tmp_path, llama_dir):
    path = tmp_path / "new-session"
    with pytest.raises(TrainingDiverged):
        with new_session(path, llama_dir) as s:
            raise TrainingDiverged("before anything was saved")
    assert not path.exists()


def test_same_model_spelled_differently_is_not_a_mismatch(learned_session, llama_dir, monkeypatch):
    monkeypatch.chdir(llama_dir.parent)
    relative = f"./{llama_dir.name}"
    with Session.open_or_create(learned_session, model=relative, strategy="ttt", device="cpu") as s:
        assert s.model_ref == str(llama_dir)
