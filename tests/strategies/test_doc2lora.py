"""doc2lora on tiny models: the hypernetwork's LoRA in a standard peft adapter, accumulation, the trainer,
its checkpoints, simulated mode and the invented training data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from clslm.benchdata import load_facts
from clslm.documents import Document
from clslm.session import Session
from clslm.strategies.base import StrategyContext
from clslm.strategies.doc2lora import Doc2LoRA, Doc2LoRAConfig, lora
from clslm.strategies.doc2lora.strategy import BUNDLED
from clslm.strategies.doc2lora.distill import kl_loss, teach
from clslm.strategies.doc2lora.hypernet import load_hypernet, save_hypernet
from clslm.strategies.doc2lora.reading import ids, read, reader_prefix
from clslm.strategies.doc2lora.simulated import sentence_probes
from clslm.strategies.doc2lora.synthetic import bench_words, synthetic_doc
from clslm.strategies.doc2lora.train import TrainSettings

from conftest import DOCUMENT
from helpers import doc2lora_trainer as trainer
from helpers import load, meta_trained_hypernet

SECOND = "The Orvane Ferry crosses the Lisk estuary. It was founded by Mirela Tansk in 1871 and carries 60 cars."
@pytest.fixture(scope="module")
def hypernet_file(llama_dir, tmp_path_factory) -> Path:
    """A hypernetwork for the tiny Llama, meta-trained for a few steps (B's head is no longer zero)."""
    return meta_trained_hypernet(llama_dir, tmp_path_factory)


def strategy(model_dir, **options) -> Doc2LoRA:
    """doc2lora in the mode these tests are about unless told: the hypernetwork's one pass (amortized; refined
    mode, the default, is tested in test_doc2lora_refined.py)."""
    model, tokenizer, source = load(model_dir)
    return Doc2LoRA(model, tokenizer, Doc2LoRAConfig(**({"mode": "amortized"} | options)), StrategyContext(source.fingerprint))


def logits(model, tokenizer, text: str = DOCUMENT) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=tokenizer(text, return_tensors="pt")["input_ids"]).logits


# ---- the adapter -----------------------------------------------------------------------------------------
def test_generated_lora_changes_logits_only_when_enabled(llama_dir, hypernet_file):
    s = strategy(llama_dir, hypernet=str(hypernet_file))
    base, tokenizer, _ = load(llama_dir)
    assert torch.equal(logits(s.model, tokenizer), logits(base, tokenizer))
    report = s.learn(Document("kessenbrock", DOCUMENT))
    assert report.extra["mode"] == "hypernetwork" and report.extra["rank"] == 4 * report.extra["chunks"]
    assert not torch.equal(logits(s.model, tokenizer), logits(base, tokenizer))
    with s.disabled():
        assert torch.equal(logits(s.model, tokenizer), logits(base, tokenizer))
    assert s.enabled and not torch.equal(logits(s.model, tokenizer), logits(base, tokenizer))


def test_the_routing_keys_survive_a_reload(llama_dir, hypernet_file):
    # That the router keeps the LoRA off for unrelated questions is a contract row (tests/test_contract.py).
    s = strategy(llama_dir, hypernet=str(hypernet_file))
    s.learn(Document("kessenbrock", DOCUMENT))
    restored = strategy(llama_dir, hypernet=str(hypernet_file))
    restored.load_extra_state(s.extra_state())
    assert not restored.matches("What is the capital of France?") and restored.matches("Which engineer built the Kessenbrock Light?")


def test_a_question_answers_through_its_own_documents_lora(llama_dir, hypernet_file, tmp_path):
    """Two documents: a question about one gets that document's LoRA alone, not the mean of both."""
    s = strategy(llama_dir, hypernet=str(hypernet_file))
    alone = strategy(llama_dir, hypernet=str(hypernet_file))
    alone.learn(Document("two", SECOND))
    s.learn(Document("one", DOCUMENT))
    s.learn(Document("two", SECOND))
    question = "Who founded the Orvane Ferry across the Lisk estuary?"
    assert s.active_documents(question)[0] == 1
    _, tokenizer, _ = load(llama_dir)
    session_logits = logits(s.model, tokenizer, question)
    with s.routed(question), alone.routed(question):
        assert torch.allclose(logits(s.model, tokenizer, question), logits(alone.model, tokenizer, question), atol=1e-5)
    assert torch.equal(logits(s.model, tokenizer, question), session_logits)  # the session's LoRA is back after the block
    everything = strategy(llama_dir, hypernet=str(hypernet_file), route_top=0)
    everything.load_state_dict(s.state_dict())
    everything.load_extra_state(s.extra_state())
    with everything.routed(question):
        assert torch.equal(logits(everything.model, tokenizer, question), session_logits)
    # The per-document LoRAs survive a session round trip.
    path = tmp_path / "session"
    with Session.create(path, model=str(llama_dir), strategy="doc2lora", options={"hypernet": str(hypernet_file), "mode": "amortized"}, device="cpu") as session:
        session.learn([Document("one", DOCUMENT), Document("two", SECOND)])
    with Session.open(path, device="cpu") as session:
        reopened = session.strategy()
        with reopened.routed(question):
            assert torch.allclose(logits(reopened.model, tokenizer, question), logits(alone.model, tokenizer, question), atol=1e-5)


def test_peft_adapter_keys_are_standard_and_the_adapter_merges(llama_dir, hypernet_file, tmp_path):
    from peft import PeftModel, get_peft_model_state_dict

    s = strategy(llama_dir, hypernet=str(hypernet_file))
    s.learn(Document("kessenbrock", DOCUMENT))
    saved = s.state_dict()
    state = {k: v for k, v in saved.items() if not k.startswith("documents.")}
    peft_state = get_peft_model_state_dict(s.model, adapter_name=lora.ADAPTER)
    assert set(state) == set(peft_state) and all(torch.equal(state[k], peft_state[k]) for k in state)
    assert all(re.fullmatch(r"base_model\.model\.model\.layers\.\d+\.mlp\.down_proj\.lora_[AB]\.weight", k) for k in state)
    assert {k.removeprefix("documents.0.") for k in saved if k not in state} == set(state)  # the document's own adapter
    # What peft writes with save_pretrained loads back into a fresh base model, and merges into its weights.
    s.model.save_pretrained(tmp_path / "adapter", selected_adapters=[lora.ADAPTER])
    fresh, tokenizer, _ = load(llama_dir)
    adapter_dir = tmp_path / "adapter" / lora.ADAPTER
    reloaded = PeftModel.from_pretrained(fresh, adapter_dir if adapter_dir.is_dir() else tmp_path / "adapter")
    expected = logits(s.model, tokenizer)
    assert torch.allclose(logits(reloaded, tokenizer), expected, atol=1e-5)
    merged = s.model.merge_and_unload()
    assert torch.allclose(logits(merged, tokenizer), expected, atol=1e-4)


@pytest.mark.parametrize("accumulate, weight", [("mean", 0.5), ("sum", 1.0)])
def test_two_documents_accumulate(llama_dir, hypernet_file, accumulate, weight):
    s = strategy(llama_dir, hypernet=str(hypernet_file), accumulate=accumulate)
    s.learn(Document("one", DOCUMENT))
    first = lora.read(s.model)
    s.learn(Document("two", SECOND))
    both = lora.read(s.model)
    alone = strategy(llama_dir, hypernet=str(hypernet_file))
    alone.learn(Document("two", SECOND))
    second = lora.read(alone.model)
    assert lora.rank(both) == lora.rank(first) + lora.rank(second)
    for name in both:  # the adapter holds both documents' deltas (their mean or sum), not the last one
        expected = weight * (lora.delta(first, name) + lora.delta(second, name))
        assert torch.allclose(lora.delta(both, name), expected, atol=1e-6)
    assert [d["name"] for d in s.extra_state()["documents"]] == ["one", "two"]


def test_beyond_max_rank_the_sum_is_its_best_low_rank_approximation():
    torch.manual_seed(0)
    parts = [{"m": (torch.randn(4, 12), torch.randn(10, 4))} for _ in range(3)]
    summed = lora.concat(parts)
    capped = lora.cap(summed, 5)
    assert lora.rank(capped) == 5
    dense = lora.delta(summed, "m")
    u, s, vh = torch.linalg.svd(dense)
    best = (u[:, :5] * s[:5]) @ vh[:5]
    assert torch.allclose(lora.delta(capped, "m"), best, atol=1e-4)
    assert torch.allclose(lora.delta(lora.mean(parts), "m"), dense / 3, atol=1e-5)


def test_session_round_trip_and_info_name_the_hypernetwork(llama_dir, hypernet_file, tmp_path):
    path = tmp_path / "session"
    options = {"hypernet": str(hypernet_file), "mode": "amortized"}
    with Session.create(path, model=str(llama_dir), strategy="doc2lora", options=options, device="cpu") as session:
        session.learn([Document("kessenbrock", DOCUMENT)])
        saved = logits(session.strategy().model, session.strategy().tokenizer)
    with Session.open(path, device="cpu") as session:
        s = session.strategy()
        assert torch.equal(logits(s.model, s.tokenizer), saved)
        info = session.info()["strategy"]["state"]
        assert info["mode"] == "hypernetwork" and info["hypernet"]["path"] == str(hypernet_file)
        assert len(info["hypernet"]["sha256"]) == 64
        extra = json.loads((path / session.manifest["state"]["extra"]["file"]).read_text())
        assert extra["hypernet"] == {"path": str(hypernet_file), "sha256": info["hypernet"]["sha256"]}


def test_a_hypernetwork_changed_since_is_a_session_mismatch(llama_dir, hypernet_file, tmp_path):
    """doc2lora raises its own StateMismatch (it knows no session); the Session names itself (exit 4)."""
    from clslm.errors import SessionMismatch

    net_file, path = tmp_path / "net.safetensors", tmp_path / "session"
    net_file.write_bytes(hypernet_file.read_bytes())
    with Session.create(path, model=str(llama_dir), strategy="doc2lora", options={"hypernet": str(net_file)}, device="cpu") as session:
        session.learn([Document("kessenbrock", DOCUMENT)])
    net = load_hypernet(net_file)
    with torch.no_grad():
        next(net.parameters()).add_(1.0)
    save_hypernet(net, net_file)
    before = (path / "session.json").read_bytes()
    with Session.open(path, device="cpu") as session, pytest.raises(SessionMismatch, match=f"^{re.escape(str(path))}: .*hypernetwork changed since the documents were learned.*use a new session") as e:
        session.learn([Document("orvane", SECOND)])
    assert e.value.exit_code == 4 and (path / "session.json").read_bytes() == before


def test_a_model_without_a_trained_hypernetwork_is_told_what_to_do(llama_dir):
    with pytest.raises(Exception, match="no trained hypernetwork for this model.*mode=simulated") as e:
        strategy(llama_dir)
    assert e.value.exit_code == 3


def test_a_hypernetwork_for_another_model_is_refused(model_dir, llama_dir, hypernet_file):
    if model_dir == llama_dir:
        pytest.skip("same model")
    with pytest.raises(Exception, match="trained for model|does not fit") as e:
        strategy(model_dir, hypernet=str(hypernet_file))
    assert e.value.exit_code == 3


# ---- the trainer -----------------------------------------------------------------------------------------
def facts_file(path: Path, docs) -> Path:
    rows = [{"id": d.id, "title": d.title, "document": d.document, "qa": [{"question": q.question, "answers": list(q.answers)} for q in d.qa]} for d in docs]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_trainer_reduces_the_loss_on_a_tiny_synthetic_set(llama_dir, tmp_path):
    data = facts_file(tmp_path / "tiny.jsonl", [synthetic_doc(7, i) for i in range(4)])
    t = trainer(llama_dir, tmp_path / "out", data=str(data), steps=30, eval_every=10, l1=0.0)
    t.build(resume=False)
    episodes = [t._episode(t.doc_at(i), f"train:{i}") for i in range(2)]

    def training_kl() -> float:
        from clslm.strategies.doc2lora.train import episode_loss

        with torch.no_grad():
            return sum(episode_loss(t.model, t.net, t.plain_net, t.names, e, t.pad, 0.0, 'mean')[1] for e in episodes)

    before = training_kl()
    report = t.run()
    assert training_kl() < 0.7 * before
    assert [p["step"] for p in report["curve"]] == [0, 10, 20, 30]
    assert json.loads((tmp_path / "out" / "curve.json").read_text())["curve"] == report["curve"]
    assert (tmp_path / "out" / "curve.csv").read_text().splitlines()[0] == "step,seconds,train_kl,val_kl,val_kl_other_doc"


def test_evaluation_never_trains(llama_dir, tmp_path):
    t = trainer(llama_dir, tmp_path / "out")
    t.build(resume=False)
    before = {k: v.clone() for k, v in t.plain_net.state_dict().items()}
    assert t.evaluate() == t.evaluate()
    assert all(torch.equal(v, before[k]) for k, v in t.plain_net.state_dict().items())


def test_checkpoints_round_trip_and_resume_continues_the_same_run(llama_dir, tmp_path):
    straight = trainer(llama_dir, tmp_path / "straight", steps=4)
    straight.build(resume=False)
    straight.run()
    first = trainer(llama_dir, tmp_path / "resumed", steps=2)
    first.build(resume=False)
    first.run()
    second = trainer(llama_dir, tmp_path / "resumed", steps=4)
    second.build(resume=True)
    assert second.step == 2
    second.run()
    a, b = straight.plain_net.state_dict(), second.plain_net.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # The shipped format loads back to the same function.
    net = load_hypernet(tmp_path / "straight" / "hypernet.safetensors")
    save_hypernet(net, tmp_path / "again.safetensors")
    model, tokenizer, _ = load(llama_dir)
    reading = read(model, reader_prefix(tokenizer), ids(tokenizer, DOCUMENT), net.config.layers, straight.names)
    for (a1, b1), (a2, b2) in zip(net(reading), load_hypernet(tmp_path / "again.safetensors")(reading)):
        assert torch.equal(a1, a2) and torch.equal(b1, b2)


def test_the_cosine_schedule_warms_up_then_decays_to_a_tenth():
    s = TrainSettings(steps=120, lr=1e-3, warmup=20)
    lrs = [s.lr_at(i) for i in range(130)]
    assert lrs[0] == pytest.approx(5e-5) and lrs[19] == pytest.approx(1e-3) and lrs[20] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[20:], lrs[21:]))
    assert lrs[70] == pytest.approx(5.5e-4) and lrs[120] == pytest.approx(1e-4) and lrs[129] == pytest.approx(1e-4)
    assert {TrainSettings(steps=120, lr=1e-3, schedule="constant").lr_at(i) for i in (0, 60, 119)} == {1e-3}


def test_training_can_start_from_a_hypernetwork_file(llama_dir, hypernet_file, tmp_path):
    t = trainer(llama_dir, tmp_path / "out", steps=1, init=str(hypernet_file))
    t.build(resume=False)
    start = load_hypernet(hypernet_file).state_dict()
    assert all(torch.equal(v, start[k]) for k, v in t.plain_net.state_dict().items())
    assert t.step == 0 and t.evaluate()[0] < t.base_val_kl  # it already does what the file's network did
    with pytest.raises(Exception, match="other settings") as e:
        trainer(llama_dir, tmp_path / "other", rank=2, init=str(hypernet_file)).build(resume=False)
    assert e.value.exit_code == 3


def test_resume_refuses_a_checkpoint_made_with_other_settings(llama_dir, tmp_path):
    t = trainer(llama_dir, tmp_path / "out", steps=2)
    t.build(resume=False)
    t.run()
    with pytest.raises(Exception, match="other settings") as e:
        trainer(llama_dir, tmp_path / "out", steps=4, rank=2).build(resume=True)
    assert e.value.exit_code == 3


def test_training_on_a_bench_document_is_refused(llama_dir, tmp_path):
    bench = load_facts()[:1]
    data = facts_file(tmp_path / "leak.jsonl", [*bench, *[synthetic_doc(1, i) for i in range(3)]])
    with pytest.raises(Exception, match="is a bench document"):
        trainer(llama_dir, tmp_path / "out", data=str(data))


# ---- simulated mode --------------------------------------------------------------------------------------
def test_simulated_mode_reduces_kl_on_its_document(llama_dir):
    s = strategy(llama_dir, mode="simulated", steps=10, lr=1e-3)
    report = s.learn(Document("kessenbrock", DOCUMENT))
    assert report.extra["mode"].startswith("simulated") and s.describe()["mode"].startswith("simulated")
    assert report.loss_after < report.loss_before
    # Measured independently: the probes' KL with the installed adapter vs with it switched off.
    model, tokenizer = s.model, s.tokenizer
    with s.disabled():
        document = [t for t in ids(tokenizer, DOCUMENT)]
        targets = teach(model, tokenizer, reader_prefix(tokenizer), document, sentence_probes(DOCUMENT, 12))
        without = float(kl_loss(model, targets, tokenizer.pad_token_id))
    with torch.no_grad():
        assert float(kl_loss(model, targets, tokenizer.pad_token_id)) < without


# ---- invented training data ------------------------------------------------------------------------------
def test_synthetic_documents_are_deterministic_and_answerable():
    first, again = synthetic_doc(3, 11), synthetic_doc(3, 11)
    assert first == again and first != synthetic_doc(3, 12)
    for doc in (synthetic_doc(0, i) for i in range(50)):
        assert 3 <= len(doc.qa) <= 6
        assert all(qa.answers[0] in doc.document for qa in doc.qa if not qa.answers[0].startswith("the "))


def test_synthetic_documents_share_no_name_with_the_bench():
    bench = load_facts()
    names = {a for d in bench for qa in d.qa for a in qa.answers if a[:1].isupper() and len(a) > 3} | {d.title for d in bench}
    docs = [synthetic_doc(0, i) for i in range(300)]
    text = " ".join(d.document for d in docs)
    assert not {n for n in names if re.search(rf"\b{re.escape(n)}\b", text)}
    invented = {w for d in docs for w in re.findall(r"\b[A-Z][a-z]{3,}\b", d.document)}
    assert len(invented) > 500 and not {w for w in invented if w.lower() in bench_words() and w.lower() not in COMMON}


# Capitalised template words that the bench documents also use (sentence starts, cup, club, ...), not names.
COMMON = {"the", "its", "work", "later", "little", "local", "records", "several", "opinions", "passing", "opening", "cup", "club",
          "mill", "bridge", "tower", "lighthouse", "library", "hall", "market", "street", "square", "lane", "road", "rowing",
          "hockey", "cricket", "rugby", "cycling", "atlas", "survey", "letters", "method", "journal", "mohs", "that", "visitors",
          "january", "february", "march", "april", "may", "june", "july", "august", "september", "october", "november", "december",
          "dam", "observatory", "money", "using", "current", "program", "settings", "final", "winning", "opening", "mineral", "details",
          "surrounding", "short", "plan"}


# ---- the command line ------------------------------------------------------------------------------------
def cli(capfd, *args) -> tuple[int, str, str]:
    from clslm.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capfd.readouterr()
    return code, out, err


def test_cli_trains_then_learns_and_asks_with_the_hypernetwork(capfd, llama_dir, tmp_path):
    out = tmp_path / "hn"
    args = ["doc2lora", "train", "--model", llama_dir, "--out", out, "--steps", "3", "--val-docs", "2", "--eval-every", "3", "--width", "16", "--rank", "2", "--device", "cpu"]
    code, stdout, err = cli(capfd, *args, "--plot", tmp_path / "curve.png", "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert [p["step"] for p in report["curve"]] == [0, 3] and (tmp_path / "curve.png").stat().st_size > 0
    assert {p.name for p in out.iterdir()} == {"hypernet.safetensors", "checkpoint.safetensors", "curve.json", "curve.csv"}
    code, stdout, err = cli(capfd, *args, "--steps", "5", "--resume", "--json")
    assert code == 0, err
    assert [p["step"] for p in json.loads(stdout)["curve"]] == [0, 3, 5]
    session, doc = tmp_path / "session", tmp_path / "doc.txt"
    doc.write_text(DOCUMENT)
    hypernet = f"hypernet={out / 'hypernet.safetensors'}"
    code, stdout, err = cli(capfd, "learn", doc, "-s", session, "--model", llama_dir, "--strategy", "doc2lora", "-o", hypernet, "--device", "cpu", "--json")
    assert code == 0, err
    learned = json.loads(stdout)["documents"][0]
    assert learned["extra"]["mode"].startswith("refined: the hypernetwork's LoRA") and learned["extra"]["rank"] == 2 and learned["extra"]["steps"] > 0
    code, stdout, err = cli(capfd, "ask", "Who built it?", "-s", session, "--device", "cpu", "--json", "--max-new-tokens", "3")
    assert code == 0, err
    assert json.loads(stdout)["context_tokens"] == 0
    code, stdout, _ = cli(capfd, "info", "-s", session)
    assert "mode=refined" in stdout


def test_cli_refuses_the_default_hypernetwork_for_another_model(capfd, llama_dir, tmp_path):
    (tmp_path / "doc.txt").write_text(DOCUMENT)
    code, stdout, err = cli(capfd, "learn", tmp_path / "doc.txt", "-s", tmp_path / "s", "--model", llama_dir, "--strategy", "doc2lora", "--device", "cpu")
    assert code == 3 and stdout == "" and len(err.strip().splitlines()) == 1
    assert "no trained hypernetwork" in err and not (tmp_path / "s").exists()


def test_learn_reads_a_chunk_as_the_training_teacher_did(model_dir):
    """The hypernetwork sees at learn time (prefix cached once) what it saw in training (one teacher pass)."""
    model, tokenizer, _ = load(model_dir)
    names = lora.module_names(model, [1, 3], ["down_proj"])
    prefix, chunk = reader_prefix(tokenizer), ids(tokenizer, DOCUMENT)
    taught = teach(model, tokenizer, prefix, chunk, [], ([1, 3], names)).reading
    learned = read(model, prefix, chunk, [1, 3], names)
    assert torch.allclose(taught.hidden, learned.hidden, atol=1e-4)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(taught.inputs, learned.inputs))
    assert torch.equal(taught.following, learned.following) and learned.hidden.shape[:2] == (2, len(chunk))


# ---- the bundled hypernetwork for the default model ------------------------------------------------------
BUNDLED_JSON = BUNDLED.with_suffix(".json")


def test_the_bundled_hypernetwork_is_described_and_small():
    from clslm.models import file_sha256
    from clslm.strategies.doc2lora.hypernet import read_config

    described = json.loads(BUNDLED_JSON.read_text())
    assert described["hypernet_sha256"] == file_sha256(BUNDLED)
    assert BUNDLED.stat().st_size < 8_000_000
    config = read_config(BUNDLED)
    assert config.extra["trained"]["steps"] == described["steps"] and "invented documents" in described["data"]
    assert described["curve"][-1]["val_kl"] < described["base_val_kl"]
    assert config.targets == ["down_proj"] and config.rank == 8


@pytest.mark.slow
def test_the_bundled_hypernetwork_on_the_default_model(monkeypatch):
    """On a bench document it never saw, one hypernetwork pass per chunk brings the model without the
    document closer to the model with it (KL over the answers of the document's questions)."""
    from conftest import USER_CLSLM_HOME

    if USER_CLSLM_HOME is not None:
        monkeypatch.setenv("CLSLM_HOME", USER_CLSLM_HOME)
    from clslm.strategies.doc2lora.distill import question_probe
    from clslm.strategies.doc2lora.reading import chunks

    s = strategy("smollm2-135m")
    doc = load_facts()[4]
    report = s.learn(Document(doc.id, doc.document))
    assert report.extra["mode"] == "hypernetwork" and report.extra["chunks"] >= 2 and report.seconds < 30
    tokenizer = s.tokenizer
    document = [t for piece in chunks(tokenizer, doc.document, 128) for t in piece]
    with s.disabled():
        targets = teach(s.model, tokenizer, reader_prefix(tokenizer), document, [question_probe(q.question, q.answers[0]) for q in doc.qa])
        without = float(kl_loss(s.model, targets, tokenizer.pad_token_id))
    with torch.no_grad():
        assert float(kl_loss(s.model, targets, tokenizer.pad_token_id)) < 0.9 * without
