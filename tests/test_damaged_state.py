"""Damaged manifests and state files (issue 18, items 3-5): one validating loader, so every file that does
not fit is exit 4 with one line naming the file and what is wrong, never an internal error (exit 1).

The state files are rewritten with their size and sha256 fixed in the manifest, so the file checks pass
and the content itself is what is judged.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from clslm.session import MANIFEST

from helpers import run, run_json
from test_cli import QUESTION, check_failure, session, template_session  # noqa: F401  (fixtures)

DEEP = 200_000


def manifest(path: Path) -> dict:
    return json.loads((path / MANIFEST).read_text(encoding="utf-8"))


def write_manifest(path: Path, data: dict | str) -> None:
    (path / MANIFEST).write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")


def replace_state(session: Path, kind: str, data: bytes) -> Path:
    """Write `data` as the session's `kind` state file, with size and sha256 fixed in the manifest."""
    m = manifest(session)
    entry = m["state"][kind]
    (session / entry["file"]).write_bytes(data)
    entry |= {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    write_manifest(session, m)
    return session / entry["file"]


def edit_tensors(session: Path, edit) -> Path:
    from safetensors.torch import load, save

    path = session / manifest(session)["state"]["tensors"]["file"]
    tensors = load(path.read_bytes())
    edit(tensors)
    return replace_state(session, "tensors", save(tensors))


def patch_key(tensors: dict, suffix: str) -> str:
    return next(k for k in tensors if k.endswith(suffix))


def refused_by(capfd, session: Path, commands: list[str], words: str, file: Path | None = None) -> None:
    for command in commands:
        args = {"info": ["info"], "ask": ["ask", QUESTION, "--device", "cpu", "--max-new-tokens", "2"]}[command]
        line = check_failure(capfd, [*args, "-s", session], 4, words, session)
        if file is not None:
            assert str(file) in line, line


# ---- item 3: nesting is limited before parsing -------------------------------------------------------------


def test_a_manifest_nested_200000_deep_is_exit_4(capfd, session):  # noqa: F811
    write_manifest(session, "[" * DEEP + "]" * DEEP)
    refused_by(capfd, session, ["info", "ask"], "nested 200000 deep", session / MANIFEST)


def test_a_deep_field_inside_a_valid_manifest_is_exit_4(capfd, session):  # noqa: F811
    text = json.dumps(manifest(session))
    write_manifest(session, text[:-1] + ', "notes": ' + "[" * DEEP + "]" * DEEP + "}")
    refused_by(capfd, session, ["info", "ask"], "more than 64", session / MANIFEST)


def test_a_state_json_nested_200000_deep_is_exit_4(capfd, session):  # noqa: F811
    file = replace_state(session, "extra", ("[" * DEEP + "]" * DEEP).encode())
    refused_by(capfd, session, ["info", "ask"], "nested 200000 deep", file)


# ---- item 4: types and bounds of every manifest field --------------------------------------------------------


def test_info_shows_a_loss_before_without_a_loss_after(capfd, session):  # noqa: F811
    m = manifest(session)
    m["documents"][0] |= {"loss_before": 2.5, "loss_after": None}
    write_manifest(session, m)
    code, out, err = run(capfd, "info", "-s", session)
    assert code == 0, err
    assert "2.500 → -" in out


@pytest.mark.parametrize("value", [[], 5, None, {"a": 1}], ids=["list", "int", "null", "object"])
def test_a_learned_at_that_is_not_a_string_is_exit_4(capfd, session, value):  # noqa: F811
    m = manifest(session)
    m["documents"][0]["learned_at"] = value
    write_manifest(session, m)
    refused_by(capfd, session, ["info", "ask"], "documents[0].learned_at must be a string", session / MANIFEST)


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda m: m.update(format_version=True), "format_version must be a whole number from 1"),
        (lambda m: m.update(format_version=0), "format_version must be a whole number from 1"),
        (lambda m: m.update(format_version=-7), "format_version must be a whole number from 1"),
        (lambda m: m["documents"][0].update(tokens=-1), "documents[0].tokens must be a whole number from 0"),
        (lambda m: m["documents"][0].update(tokens=2.5), "documents[0].tokens must be a whole number from 0"),
        (lambda m: m["documents"][0].update(seconds="1"), "documents[0].seconds must be a number from 0"),
        (lambda m: m["documents"][0].update(extra=[1]), "documents[0].extra must be an object"),
        (lambda m: m["state"]["tensors"].update(bytes=-5), "state.tensors.bytes must be a whole number"),
        (lambda m: m["state"]["tensors"].update(sha256="xyz"), "state.tensors.sha256 must be 64 lowercase hex digits"),
        (lambda m: m["state"]["tensors"].update(file="session.json"), "state.tensors.file must be a plain file name like deltas-"),
        (lambda m: m.update(created=5), "'created' must be a string"),
        (lambda m: m["model"].update(ref=""), "'model' needs string ref, kind and fingerprint"),
    ],
    ids=["version-true", "version-0", "version-negative", "tokens-negative", "tokens-float", "seconds-string", "extra-list", "bytes-negative", "sha-not-hex", "file-not-content-named", "created-int", "model-ref-empty"],
)
def test_every_field_is_checked(capfd, session, edit, words):  # noqa: F811
    m = manifest(session)
    edit(m)
    write_manifest(session, m)
    refused_by(capfd, session, ["info", "ask"], words, session / MANIFEST)


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_in_a_manifest_are_exit_4(capfd, session, number):  # noqa: F811
    """Decision: a manifest is strict JSON (clslm never writes NaN or Infinity), so `info --json` prints strict JSON."""
    text = json.dumps(manifest(session) | {"documents": [manifest(session)["documents"][0] | {"loss_before": 0.0}]})
    write_manifest(session, text.replace('"loss_before": 0.0', f'"loss_before": {number}'))
    refused_by(capfd, session, ["info", "ask"], "corrupt manifest", session / MANIFEST)


def test_a_saved_config_value_of_the_wrong_type_is_exit_4(capfd, session):  # noqa: F811
    m = manifest(session)
    m["strategy"]["config"]["epochs"] = 2.5  # range(2.5) would fail inside training
    write_manifest(session, m)
    refused_by(capfd, session, ["ask"], "epochs=2.5 is not of type int", None)


# ---- item 5: state files that do not fit the strategy or the model ----------------------------------------


@pytest.mark.parametrize("data", [b"[1, 2]", b'"text"', b"3", b"null"], ids=["list", "string", "number", "null"])
def test_a_state_json_that_is_not_an_object_is_exit_4(capfd, session, data):  # noqa: F811
    file = replace_state(session, "extra", data)
    refused_by(capfd, session, ["info", "ask"], "a JSON object expected", file)


def test_a_state_json_of_the_wrong_shape_is_exit_4(capfd, session):  # noqa: F811
    file = replace_state(session, "extra", json.dumps({"keys": [{"vocabulary": "abc", "sentences": [[[0, 1.0]]]}]}).encode())
    refused_by(capfd, session, ["ask"], "state does not fit 'ttt'", file)


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda t: t.update({(k := patch_key(t, ".gate")): t[k][:, :-1].contiguous()}), "gate should be floating-point or int8 of shape"),
        (lambda t: t.update({(k := patch_key(t, ".index")): t[k].to(__import__("torch").int8)}), "index should be a 1-D int64 tensor, not torch.int8"),
        (lambda t: t[patch_key(t, ".index")].__setitem__(0, 10**9), "index names neurons outside 0..63"),
        (lambda t: t[patch_key(t, ".index")].__setitem__(0, -1), "index names neurons outside 0..63"),
        (lambda t: t.pop(patch_key(t, ".up")), "lacks ['up']"),
        (lambda t: t.update({"model.layers.0.mlp.ttt_patches.0.index": t[patch_key(t, ".index")].clone()}), "is not a neuron patch of an MLP ttt patches"),
        (lambda t: t.update({(k := patch_key(t, ".down")): t[k] * float("nan")}), "holds non-finite values"),
        (lambda t: [t.pop(k) for k in list(t)], "holds no tensors"),
    ],
    ids=["wrong-width", "int8-index", "index-1e9", "index-negative", "missing-part", "unpatched-layer", "nan-deltas", "no-tensors"],
)
def test_ttt_tensors_that_do_not_fit_the_model_are_exit_4(capfd, session, edit, words):  # noqa: F811
    file = edit_tensors(session, edit)
    refused_by(capfd, session, ["ask"], words, file)
    assert run(capfd, "info", "-s", session)[0] == 0  # info checks files, not what the tensors mean


def test_the_undamaged_session_still_answers(capfd, session):  # noqa: F811
    """The fixture itself passes every check (the cases above fail for their damage only)."""
    edit_tensors(session, lambda t: None)
    replace_state(session, "extra", (session / manifest(session)["state"]["extra"]["file"]).read_bytes())
    assert run_json(capfd, "ask", QUESTION, "-s", session, "--device", "cpu", "--max-new-tokens", "2")["strategy"] == "ttt"
