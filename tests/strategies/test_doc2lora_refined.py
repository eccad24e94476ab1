"""doc2lora's refined mode (the hypernetwork's LoRA, then gradient steps), the amortized mode it replaced as the
default, `doc2lora train --data` on plain text, and one document's adapter exported for peft (tiny models)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from clslm.documents import Document
from clslm.session import Session
from clslm.strategies.base import StrategyContext
from clslm.strategies.doc2lora import Doc2LoRA, Doc2LoRAConfig, lora
from clslm.strategies.doc2lora.corpus import load_corpus, pieces
from clslm.strategies.doc2lora.hypernet import load_hypernet
from clslm.strategies.doc2lora.reading import chunks, read_chunks, reader_prefix
from clslm.strategies.doc2lora.refine import layer_of
from clslm.strategies.doc2lora.train import TrainSettings, load_data

from conftest import DOCUMENT
from helpers import doc2lora_trainer, load, meta_trained_hypernet

SECOND = "The Orvane Ferry crosses the Lisk estuary. It was founded by Mirela Tansk in 1871 and carries 60 cars."
CHUNK = {"chunk_tokens": 16}  # documents of several chunks


def trainer(model_dir, out: Path, **settings):
    return doc2lora_trainer(model_dir, out, **(CHUNK | settings))


@pytest.fixture(scope="module")
def hypernet_file(llama_dir, tmp_path_factory) -> Path:
    """A hypernetwork for the tiny Llama, meta-trained for a few steps (16-token chunks: documents have several)."""
    return meta_trained_hypernet(llama_dir, tmp_path_factory, **CHUNK)


def strategy(model_dir, **options) -> Doc2LoRA:
    model, tokenizer, source = load(model_dir)
    return Doc2LoRA(model, tokenizer, Doc2LoRAConfig(**options), StrategyContext(source.fingerprint))


def todays_amortized(s: Doc2LoRA, text: str) -> lora.Factors:
    """The document's LoRA as mode=hypernet computed it before refined mode existed: one hypernetwork pass
    per chunk of the base model's reading, the chunks' LoRAs averaged."""
    net = load_hypernet(s.hypernet_path)
    pieces_ = chunks(s.tokenizer, text, net.config.chunk_tokens)
    with s.model.disable_adapter(), torch.no_grad():
        readings = read_chunks(s.model, reader_prefix(s.tokenizer), pieces_, s.layers, s.names)
        return lora.mean([{n: (a.detach(), b.detach()) for n, (a, b) in zip(s.names, net(r))} for r in readings])


def same(x: lora.Factors, y: lora.Factors) -> bool:
    return x.keys() == y.keys() and all(torch.equal(x[k][0], y[k][0]) and torch.equal(x[k][1], y[k][1]) for k in x)


def test_refined_is_the_default_and_amortized_is_todays_one_pass_bit_for_bit(llama_dir, hypernet_file):
    assert Doc2LoRAConfig().mode == "refined"
    for mode in ("amortized", "hypernet"):  # hypernet: the name sessions saved before refined mode carry
        s = strategy(llama_dir, hypernet=str(hypernet_file), mode=mode, doc_rank=4)
        first, second = todays_amortized(s, DOCUMENT), todays_amortized(s, SECOND)
        report = s.learn(Document("one", DOCUMENT))
        s.learn(Document("two", SECOND))
        assert report.extra["mode"] == "hypernetwork" and report.loss_before is None and "steps" not in report.extra
        assert report.extra["chunks"] > 1 and same(s.doc_factors[0], lora.cap(first, 4)) and same(s.doc_factors[1], lora.cap(second, 4))
        session = lora.cap(first, 32)  # the session's LoRA: a running mean of the documents', capped at max_rank
        session = lora.cap(lora.concat([{k: (a, b * 1 / 2) for k, (a, b) in session.items()}, {k: (a, b / 2) for k, (a, b) in second.items()}]), 32)
        assert same(s.factors, session)


def test_refined_starts_from_exactly_the_hypernetworks_lora_and_its_loss_falls(llama_dir, hypernet_file):
    start = strategy(llama_dir, hypernet=str(hypernet_file), mode="refined", epochs=0)
    report = start.learn(Document("one", DOCUMENT))
    hypernet = lora.cap(todays_amortized(start, DOCUMENT), start.config.doc_rank)
    assert report.extra["steps"] == 0 and report.loss_after == report.loss_before
    for name, (a, b) in start.doc_factors[0].items():  # no step: the hypernetwork's LoRA itself (its last layers' rebalanced)
        if layer_of(name) in start.refinement.layers:
            assert not torch.equal(a, hypernet[name][0]) and torch.allclose(b @ a, lora.delta(hypernet, name), atol=1e-6)
        else:
            assert torch.equal(a, hypernet[name][0]) and torch.equal(b, hypernet[name][1])

    s = strategy(llama_dir, hypernet=str(hypernet_file), mode="refined", epochs=8, refine_lr=5e-2, refine_layers=0.5)
    report = s.learn(Document("one", DOCUMENT))
    trained = set(s.refinement.layers)
    assert trained == {2, 3} and report.extra["steps"] > 0 and report.extra["mode"].startswith("refined: the hypernetwork's LoRA")
    assert report.loss_after < 0.97 * report.loss_before  # a tiny random model's down_proj moves its logits little
    refined = s.doc_factors[0]
    for name, (a, b) in refined.items():  # the earlier layers keep the hypernetwork's factors; the last ones moved
        unchanged = torch.equal(a, hypernet[name][0]) and torch.equal(b, hypernet[name][1])
        assert unchanged == (layer_of(name) not in trained)


def test_refined_runs_the_frozen_layers_once_and_gives_the_loss_of_the_full_model(llama_dir, hypernet_file):
    """The cached prefix (earlier layers with the hypernetwork's LoRA) changes nothing but the cost."""
    from clslm.strategies.doc2lora import refine as refine_module
    from clslm.strategies.textbook import reply_loss

    s = strategy(llama_dir, hypernet=str(hypernet_file), mode="refined", epochs=0)
    start = lora.cap(todays_amortized(s, DOCUMENT), 16)
    seen = {}
    real = refine_module.mean_loss
    refine_module.mean_loss = lambda data, loss_fn, at_most=None: seen.setdefault("loss", (data, loss_fn)) and real(data, loss_fn, at_most)
    try:
        with s.model.disable_adapter():
            refine_module.refine(s.model, s.tokenizer, Document("one", DOCUMENT), start, s.refinement, lambda step: None)
            data, loss_fn = seen["loss"]
            base = lora.unwrap(s.model)
            with torch.no_grad(), lora.applied(base, start):
                full = float(reply_loss(base, data[0]))
            assert abs(float(loss_fn(data[0])) - full) < 1e-4
    finally:
        refine_module.mean_loss = real


def test_a_zero_start_has_no_effect_before_its_steps(llama_dir, hypernet_file):
    s = strategy(llama_dir, hypernet=str(hypernet_file), mode="refined", init="zero", epochs=0)
    report = s.learn(Document("one", DOCUMENT))
    assert "a zero LoRA" in report.extra["mode"]
    assert all(not b.any() for _, b in s.doc_factors[0].values())
    moved = strategy(llama_dir, hypernet=str(hypernet_file), mode="refined", init="zero", epochs=2, refine_lr=5e-2)
    report = moved.learn(Document("one", DOCUMENT))
    assert report.loss_after < report.loss_before and any(b.any() for _, b in moved.doc_factors[0].values())


# ---- --data: one's own corpus ----------------------------------------------------------------------------
def test_data_takes_a_folder_of_text_files_and_a_jsonl_file(llama_dir, tmp_path):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text(DOCUMENT + "\n\n" + SECOND)
    (folder / "sub" / "b.md").write_text("The Halden Mill grinds oats beside the Ure river. Its wheel was cast in 1822 by Tobias Venn.")
    (folder / "notes.bin").write_bytes(b"\x00\x01")  # not a document: skipped
    docs = load_corpus(folder)
    assert [d.id for d in docs] == ["a.txt#0", "sub/b.md#0"] and all(d.qa for d in docs)
    assert docs[0].qa[0].question.startswith("Complete this sentence from the document: ")
    assert docs[0].document == DOCUMENT + "\n\n" + SECOND
    assert len(pieces("\n\n".join(["word " * 150] * 3))) == 3  # paragraphs joined up to 220 words

    t = trainer(llama_dir, tmp_path / "from-text", steps=2, data=str(folder), val_docs=1)
    t.build(resume=False)
    report = t.run()
    assert report["steps"] == 2 and "a.txt#0" not in report["data"] and "1 training and 1 validation" in report["data"]

    facts = tmp_path / "facts.jsonl"
    records = [{"id": f"d{i}", "title": "t", "document": text, "qa": [{"question": "Who founded it?", "answers": ["Mirela Tansk"]}]} for i, text in enumerate([DOCUMENT, SECOND, DOCUMENT + " It is white."])]
    facts.write_text("".join(json.dumps(r) + "\n" for r in records))
    _, val, description = load_data(TrainSettings(data=str(facts), val_docs=1))
    assert [d.id for d in val] == ["d2"] and "2 training and 1 validation" in description


def test_data_that_holds_no_document_is_refused(tmp_path):
    from clslm.errors import InputError

    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .jsonl, .txt or .md files"):
        load_corpus(tmp_path / "empty")
    with pytest.raises(InputError, match="no such file or folder"):
        load_corpus(tmp_path / "missing")


# ---- export of one document's adapter ----------------------------------------------------------------------
def test_a_refined_documents_adapter_exports_for_peft_and_answers_as_ask_does(llama_dir, hypernet_file, tmp_path):
    from peft import PeftModel

    from clslm.generation import generate

    path, question = tmp_path / "session", "Who founded the Orvane Ferry across the Lisk estuary?"
    options = {"hypernet": str(hypernet_file), "epochs": "2", "refine_lr": "1e-2"}
    with Session.create(path, model=str(llama_dir), strategy="doc2lora", options=options, device="cpu") as session:
        session.learn([Document("one", DOCUMENT), Document("two", SECOND)])
        assert session.strategy().active_documents(question)[0] == 1  # the question routes to "two"
        asked = session.ask(question, max_new_tokens=12).text
    with Session.open(path, device="cpu") as session:
        report = session.export(tmp_path / "two", format="peft", document="two")
    assert report.holds.startswith("document two (2 of 2): its own LoRA") and report.max_abs_logit_diff < 1e-4
    with Session.open(path, device="cpu") as session:
        whole = session.export(tmp_path / "all", format="peft")
    assert whole.holds.startswith("session: the mean of all 2 document(s)' LoRAs")
    marker = json.loads((tmp_path / "two" / "clslm-export.json").read_text())
    assert marker["holds"] == report.holds
    base, tokenizer, _ = load(llama_dir)
    loaded = PeftModel.from_pretrained(base, tmp_path / "two")
    assert generate(loaded, tokenizer, question, max_new_tokens=12, beams=2).text == asked  # refined mode answers with 2 beams
    with Session.open(path, device="cpu") as session, pytest.raises(Exception, match="no document 'three'"):
        session.export(tmp_path / "three", format="peft", document="three")



def test_the_export_command_says_what_the_adapter_holds(capfd, llama_dir, hypernet_file, tmp_path):
    from clslm.cli import main

    def cli(*args) -> tuple[int, str, str]:
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        out, err = capfd.readouterr()
        return code, out, err

    session, doc, second = tmp_path / "session", tmp_path / "one.txt", tmp_path / "two.txt"
    doc.write_text(DOCUMENT)
    second.write_text(SECOND)
    code, _, err = cli("learn", doc, second, "-s", session, "--model", llama_dir, "--strategy", "doc2lora", "-o", f"hypernet={hypernet_file}", "-o", "epochs=1", "--device", "cpu")
    assert code == 0, err
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, out, err = cli("export", tmp_path / "x", "-s", session, "--format", "peft", "--document", second, "--device", "cpu")
    assert code == 0, err
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], [str(w.message) for w in caught]
    assert f"holds: document {second} (2 of 2): its own LoRA" in out and "only on questions routed to it" in err
    code, out, err = cli("export", tmp_path / "y", "-s", session, "--format", "merged", "--device", "cpu", "--json")
    assert code == 0, err
    assert json.loads(out)["holds"].startswith("session: the mean of all 2 document(s)' LoRAs")
