"""`clslm export` on tiny models: merged and peft round trips reload with the session's logits, an
empty session exports the base model, prompt-side strategies write their context, bad OUT is one line."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from clslm import registry
from clslm.documents import Document
from clslm.export import MARKER, PROBE
from clslm.generation import chat_prompt
from clslm.session import Session
from clslm.strategies.base import LearnReport, Strategy

from conftest import DOCUMENT, fast_options
from test_cli import run, run_json

QUESTION = "Which engineer built the Kessenbrock Light?"
OTHER = "The Velmar Bridge crosses the river Oss at Brackley. It opened in 1902 and has seven stone arches."
TOL = 1e-5  # float32 round-off; learning moves these logits by > 100 x TOL


def new_session(path: Path, model_dir: Path, strategy: str = "ttt", **options: str) -> Session:
    return Session.create(path, model=str(model_dir), strategy=strategy, options=fast_options(strategy) | options, device="cpu")


def prompt_ids(tokenizer, question: str = QUESTION) -> torch.Tensor:
    return tokenizer(chat_prompt(tokenizer, question), return_tensors="pt", add_special_tokens=False)["input_ids"]


def session_logits(session: Session, question: str = QUESTION, *, routed: bool = True) -> torch.Tensor:
    """The logits `clslm ask` computes on the question's prompt (routing included), or with every document on."""
    strategy = session.strategy()
    ids = prompt_ids(strategy.tokenizer, question)
    with torch.no_grad():
        if not routed:
            return strategy.model(input_ids=ids).logits.float()
        with strategy.routed(question):
            return strategy.model(input_ids=ids).logits.float()


def reload_logits(model_dir: Path, adapter: Path | None = None, question: str = QUESTION) -> torch.Tensor:
    """Logits of the exported model loaded the ecosystem's way, without clslm."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        with warnings.catch_warnings():  # peft's own deprecation notices
            warnings.simplefilter("ignore", FutureWarning)
            model = PeftModel.from_pretrained(model, adapter)
    tokenizer = AutoTokenizer.from_pretrained(adapter if adapter is not None and (adapter / "tokenizer.json").exists() else model_dir)
    with torch.no_grad():
        return model.eval()(input_ids=prompt_ids(tokenizer, question)).logits.float()


def safetensors_dict(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path)


@pytest.fixture
def ttt_session(tmp_path, llama_dir) -> Session:
    with new_session(tmp_path / "session", llama_dir) as s:
        s.learn([Document("kessenbrock", DOCUMENT)])
    return Session.open(tmp_path / "session", device="cpu")


# ---- merged --------------------------------------------------------------------------------------


def test_merged_ttt_single_document_is_exact(tmp_path, model_dir):
    with new_session(tmp_path / "session", model_dir) as s:
        s.learn([Document("kessenbrock", DOCUMENT)])
        assert s.strategy().active_documents(QUESTION) == [0], "the question must route to the document"
        asked = session_logits(s)
        with s.strategy().disabled():
            base = session_logits(s)
        report = s.export(tmp_path / "out")
    assert (report.format, report.exact, report.documents) == ("merged", True, 1)
    assert report.max_abs_logit_diff < TOL
    assert {"config.json", "model.safetensors", "tokenizer.json", MARKER} <= set(report.files)
    got = reload_logits(tmp_path / "out")
    assert (got - asked).abs().max() < TOL
    assert (got - base).abs().max() > 100 * TOL, "the export must hold what was learned, not the base model"
    assert any("route_threshold" in note for note in report.notes)
    assert json.loads((tmp_path / "out" / MARKER).read_text())["exact"] is True


def test_merged_empty_session_is_the_base_model(tmp_path, llama_dir):
    s = new_session(tmp_path / "session", llama_dir)
    report = s.export(tmp_path / "out")
    assert report.exact and report.max_abs_logit_diff == 0 and report.notes == []
    exported, base = safetensors_dict(tmp_path / "out" / "model.safetensors"), safetensors_dict(llama_dir / "model.safetensors")
    assert exported.keys() == base.keys()
    assert all(torch.equal(exported[k], base[k]) for k in base)


def test_merged_shared_neurons_fold_to_first_order(tmp_path, llama_dir):
    # neurons=0: both documents patch every neuron, so the fold adds their deltas (not exact).
    with new_session(tmp_path / "session", llama_dir, neurons="0") as s:
        s.learn([Document("kessenbrock", DOCUMENT), Document("velmar", OTHER)])
        all_on = session_logits(s, PROBE, routed=False)
        report = s.export(tmp_path / "out")
    assert report.exact is False and report.documents == 2
    assert any("more than one document" in note for note in report.notes)
    assert any("all 2 documents always on" in note for note in report.notes)
    got = reload_logits(tmp_path / "out", question=PROBE)
    assert report.max_abs_logit_diff > 10 * TOL  # first order: a real difference, well above round-off
    assert abs(float((got - all_on).abs().max()) - report.max_abs_logit_diff) < TOL, "the reported difference is the real one"


def test_merged_disjoint_documents_are_exact(tmp_path, llama_dir):
    with new_session(tmp_path / "session", llama_dir) as s:
        s.learn([Document("kessenbrock", DOCUMENT), Document("velmar", OTHER)])
        patches = s.strategy().dual_mlps()[3].ttt_patches
        disjoint = not set(patches[0].index.tolist()) & set(patches[1].index.tolist())
        all_on = session_logits(s, routed=False)
        report = s.export(tmp_path / "out")
    assert report.exact is disjoint
    if disjoint:
        assert (reload_logits(tmp_path / "out") - all_on).abs().max() < TOL


# ---- peft ----------------------------------------------------------------------------------------


def test_peft_ttt_round_trip(tmp_path, model_dir, ttt_session_for):
    session, asked = ttt_session_for(model_dir)
    report = session.export(tmp_path / "adapter", format="peft")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == report.rank == 16 and config["lora_alpha"] == 16
    assert Path(config["base_model_name_or_path"]).resolve() == Path(model_dir).resolve()
    assert sorted(config["target_modules"]) == [f"model.layers.3.mlp.{p}" for p in ("down_proj", "gate_proj", "up_proj")]
    keys = safetensors_dict(tmp_path / "adapter" / "adapter_model.safetensors")
    assert "base_model.model.model.layers.3.mlp.down_proj.lora_A.weight" in keys
    assert all(layer["relative_error"] < 1e-6 and layer["change_rank"] <= 8 for layer in report.layers)  # 8 neurons: rank <= 8 < 16
    assert report.exact and report.max_abs_logit_diff < TOL
    assert (reload_logits(Path(config["base_model_name_or_path"]), tmp_path / "adapter") - asked).abs().max() < TOL


@pytest.fixture
def ttt_session_for(tmp_path):
    def make(model_dir: Path) -> tuple[Session, torch.Tensor]:
        with new_session(tmp_path / "session", model_dir) as s:
            s.learn([Document("kessenbrock", DOCUMENT)])
            return s, session_logits(s)

    return make


def test_peft_low_rank_reports_the_true_error(tmp_path, ttt_session):
    from clslm.strategies.ttt_export import ttt_deltas

    deltas = ttt_deltas(ttt_session.strategy()).deltas
    ttt_session._strategy = None  # ttt_deltas took the wrappers out: reload
    report = ttt_session.export(tmp_path / "adapter", format="peft", rank=2)
    assert report.rank == 2 and report.exact is False
    saved = safetensors_dict(tmp_path / "adapter" / "adapter_model.safetensors")
    for layer in report.layers:
        key = f"base_model.model.{layer['module']}"
        product = saved[f"{key}.lora_B.weight"] @ saved[f"{key}.lora_A.weight"]
        delta = deltas[layer["module"] + ".weight"]
        assert saved[f"{key}.lora_A.weight"].shape[0] == 2
        assert float((delta - product).norm() / delta.norm()) == pytest.approx(layer["relative_error"], abs=1e-5)
    assert max(layer["relative_error"] for layer in report.layers) > 0.01
    assert any("larger --rank" in note for note in report.notes)


def test_peft_empty_session_is_the_base_model(tmp_path, llama_dir):
    report = new_session(tmp_path / "session", llama_dir).export(tmp_path / "adapter", format="peft")
    assert report.exact and all(layer["relative_error"] == 0 for layer in report.layers)
    assert torch.equal(reload_logits(llama_dir, tmp_path / "adapter"), reload_logits(llama_dir))


# ---- a peft-LoRA strategy (doc2lora's shape) plugs in through the base-class seams --------------------


class FakeLoRA(Strategy):
    """A stand-in for a peft LoRA strategy: a named adapter on down_proj; learning writes random B."""

    name = "test-export-lora"
    prefix = "lora_"

    def attach(self) -> None:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=4, lora_alpha=8, target_modules=["down_proj"], lora_dropout=0.0)
        with warnings.catch_warnings():  # peft's own deprecation notices
            warnings.simplefilter("ignore", FutureWarning)
            self.model = get_peft_model(self.model, config, adapter_name="learned")

    def learn(self, document, on_step=None) -> LearnReport:
        torch.manual_seed(len(document.text))
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.5)
        return LearnReport(document.name, document.sha256, 1, None, None, 0.0)


@pytest.fixture
def lora_strategy():
    registry.register(FakeLoRA)
    yield FakeLoRA.name
    registry.unregister(FakeLoRA.name)


def test_peft_strategy_exports_through_the_seams(tmp_path, llama_dir, lora_strategy):
    with new_session(tmp_path / "session", llama_dir, strategy=lora_strategy) as s:
        s.learn([Document("kessenbrock", DOCUMENT)])
        asked = session_logits(s)
        peft_report = s.export(tmp_path / "adapter", format="peft")
        merged_report = s.export(tmp_path / "merged", format="merged")
    assert peft_report.rank == 4 and merged_report.exact
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["target_modules"] == ["down_proj"] and config["lora_alpha"] == 8
    assert (reload_logits(llama_dir, tmp_path / "adapter") - asked).abs().max() < TOL
    assert (reload_logits(tmp_path / "merged") - asked).abs().max() < TOL
    assert (asked - reload_logits(llama_dir)).abs().max() > 100 * TOL


# ---- prompt-side strategies: their context -----------------------------------------------------------


def test_jitrl_mvp_writes_its_chunks(tmp_path, llama_dir):
    with new_session(tmp_path / "session", llama_dir, strategy="jitrl-mvp") as s:
        s.learn([Document("kessenbrock", DOCUMENT)])
        report = s.export(tmp_path / "out", format="merged")
    assert report.format == "context" and "in the prompt, not in the weights" in report.notes[0]
    data = json.loads((tmp_path / "out" / "context.json").read_text())
    assert data["strategy"] == "jitrl-mvp" and data["documents"][0]["name"] == "kessenbrock"
    assert "Adelmar Fosk" in " ".join(c["text"] for c in data["state"]["chunks"])
    markdown = (tmp_path / "out" / "context.md").read_text()
    assert "## kessenbrock" in markdown and "Adelmar Fosk" in markdown
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_ace_writes_its_playbook(tmp_path, llama_dir):
    playbook = {"bullets": [{"id": "b1", "text": "Adelmar Fosk built the Kessenbrock Light in 1793.", "doc": "abc", "chunk": 0}], "next_id": 2}
    s = new_session(tmp_path / "session", llama_dir, strategy="ace")
    s.strategy().load_extra_state({"playbook": playbook})
    report = s.export(tmp_path / "out", format="context")
    assert report.format == "context" and report.notes == []
    assert json.loads((tmp_path / "out" / "context.json").read_text())["state"]["playbook"] == playbook
    assert "## Playbook\n\n- Adelmar Fosk built the Kessenbrock Light in 1793." in (tmp_path / "out" / "context.md").read_text()


def test_jitrl_full_writes_its_store(tmp_path, llama_dir):
    with new_session(tmp_path / "session", llama_dir, strategy="jitrl-full") as s:
        s.learn([Document("kessenbrock", DOCUMENT)])
        state = s.strategy().state_dict()
        report = s.export(tmp_path / "out", format="peft")
    assert report.format == "context" and "store.safetensors" in report.files
    store = safetensors_dict(tmp_path / "out" / "store.safetensors")
    assert store.keys() == state.keys() and all(torch.equal(store[k], state[k]) for k in state)
    assert "rows:" in (tmp_path / "out" / "context.md").read_text()


# ---- refusals and OUT ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "fmt", "reason"), [({"keys": "mlp", "top_k": "8"}, "merged", "-o top_k=0"), ({"keys": "mlp", "top_k": "8"}, "peft", "-o top_k=0"), ({}, "peft", "only --format merged")])
def test_ttt_linear_refuses_with_the_reason(tmp_path, llama_dir, capfd, options, fmt, reason):
    """Sparse keys fold nowhere; whole-MLP keys (keys=mlp top_k=0, and the default keys=tfidf) fold into down_proj, merged only."""
    with new_session(tmp_path / "session", llama_dir, strategy="ttt-linear", **options) as s:
        s.save()
    code, out, err = run(capfd, "export", tmp_path / "out", "-s", tmp_path / "session", "--format", fmt, "--device", "cpu")
    assert code == 3 and out == "" and len(err.strip().splitlines()) == 1
    assert "ttt-linear cannot be exported" in err and reason in err
    assert not (tmp_path / "out").exists()


def test_context_of_a_weight_strategy_is_refused(tmp_path, ttt_session, capfd):
    code, _, err = run(capfd, "export", tmp_path / "out", "-s", ttt_session.path, "--format", "context", "--device", "cpu")
    assert code == 3 and "--format merged or --format peft" in err and len(err.strip().splitlines()) == 1


def test_cli_export_json_and_force(tmp_path, ttt_session, capfd):
    out = tmp_path / "out"
    data = run_json(capfd, "export", out, "-s", ttt_session.path, "--device", "cpu")
    assert data["format"] == "merged" and data["exact"] is True and data["max_abs_logit_diff"] < TOL
    code, _, err = run(capfd, "export", out, "-s", ttt_session.path, "--device", "cpu")
    assert code == 3 and "not empty" in err and "--force" in err and len(err.strip().splitlines()) == 1
    data = run_json(capfd, "export", out, "-s", ttt_session.path, "--format", "peft", "--force", "--device", "cpu")
    assert data["format"] == "peft" and not (out / "model.safetensors").exists() and (out / "adapter_config.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")], "no staging dirs left behind"


def test_cli_export_never_deletes_a_foreign_dir(tmp_path, ttt_session, capfd):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, _, err = run(capfd, "export", out, "-s", ttt_session.path, "--force", "--device", "cpu")
    assert code == 3 and "not a clslm export" in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    code, _, err = run(capfd, "export", tmp_path / "file", "-s", ttt_session.path, "--device", "cpu")
    assert code == 3 and "not a directory" in err


def test_cli_export_text_output(tmp_path, ttt_session, capfd):
    code, out, err = run(capfd, "export", tmp_path / "out", "-s", ttt_session.path, "--device", "cpu")
    assert code == 0, err
    assert "(merged, exact)" in out and "max |Δ logit|" in out and "note:" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cli_device_cuda_without_gpu_is_one_line(tmp_path, ttt_session, capfd):
    for args in (["export", tmp_path / "out"], ["ask", QUESTION], ["interactive"]):
        code, out, err = run(capfd, *args, "-s", ttt_session.path, "--device", "cuda")
        assert code == 3 and out == "" and err.strip().splitlines() == ["error: --device cuda: no CUDA GPU is available here"]
    code, _, err = run(capfd, "export", tmp_path / "out", "-s", ttt_session.path, "--dtype", "float8")
    assert code == 3 and "unknown dtype 'float8'" in err and len(err.strip().splitlines()) == 1


def test_export_dtype_is_saved(tmp_path, ttt_session):
    from safetensors import safe_open

    ttt_session.dtype = "bfloat16"
    report = ttt_session.export(tmp_path / "out")
    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as f:
        assert f.get_tensor("model.layers.3.mlp.down_proj.weight").dtype == torch.bfloat16
    assert report.exact and report.max_abs_logit_diff < 0.5  # the fold itself is exact; bf16 rounds


def test_export_help_explains_each_format(capfd):
    code, out, _ = run(capfd, "export", "--help")
    assert code == 0
    text = " ".join(out.split())
    for words in ("--format merged", "AutoModelForCausalLM.from_pretrained", "--format peft", "PeftModel.from_pretrained", "truncated SVD", "--format context", "ttt-linear cannot be exported", "--force"):
        assert words in text, words


def test_doc2lora_exports_merged_and_peft(tmp_path, llama_dir):
    with new_session(tmp_path / "session", llama_dir, strategy="doc2lora") as s:
        s.learn([Document("kessenbrock", DOCUMENT)])
        asked = session_logits(s)
        with s.strategy().disabled():
            base = session_logits(s)
        peft_report = s.export(tmp_path / "adapter", format="peft")
        merged_report = s.export(tmp_path / "merged")
    assert peft_report.exact and merged_report.exact
    for report in (peft_report, merged_report):  # the export is always on; ask routes
        assert any("route_threshold=" in note and "always on" in note for note in report.notes), report.notes
    assert (asked - base).abs().max() > 100 * TOL, "the LoRA must change the model for this test to mean anything"
    assert (reload_logits(llama_dir, tmp_path / "adapter") - asked).abs().max() < TOL
    assert (reload_logits(tmp_path / "merged") - asked).abs().max() < TOL


def test_export_knows_no_strategy_by_name():
    """Whether and how a strategy exports are its own hooks (learns_in_weights, cannot_export, export_merged,
    export_adapter, context_markdown): export.py imports no strategy and names none of them."""
    import re

    from clslm import export, registry

    source = Path(export.__file__).read_text(encoding="utf-8")
    assert not re.search(r"isinstance\(\w+, *(?!str|list|dict)[A-Z]", source) and not re.search(r"from \.strategies\.(?!base\b)", source)
    for name in registry.BUILTIN:
        assert not re.search(rf"[\"']{re.escape(name)}[\"']", source), name
