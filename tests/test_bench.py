"""`clslm bench` / `clslm compare` and the library under them, on tiny random models.

Random models answer nothing right, so these tests check the arithmetic, the shape of every output and
that both modes run to the end; the slow test at the bottom checks real learning on the default model.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from clslm.bench import run_bench, run_compare
from clslm.bench_results import BenchSettings, Unavailable, forgetting, gain_recovery
from clslm.benchdata import bundled, load_facts, load_general
from clslm.errors import InputError

from conftest import DOCUMENT, USER_CLSLM_HOME
from helpers import run

TTT_FAST = {"epochs": "2", "neurons": "8", "max_tokens": "32"}
TTT_FAST_CLI = [arg for key, value in TTT_FAST.items() for arg in ("-o", f"{key}={value}")]
BENCH_KEYS = {
    "strategy", "options", "model", "mode", "docs", "questions", "accuracy", "strict_accuracy", "f1", "gain_recovery", "general", "forgetting", "retention",
    "learn_seconds", "learn_seconds_per_1k_tokens", "ask_seconds_mean", "peak_rss_mb", "state_mb_per_doc", "machine",
}  # fmt: skip
SECOND_DOCUMENT = "Ulla Brenning founded the Tamsford Rowing Club in 1911. The club rows on the Orle estuary every spring."
FACTS = [
    {"id": "kess", "title": "Kessenbrock Light", "document": DOCUMENT, "qa": [
        {"question": "Who built the Kessenbrock Light?", "answers": ["Adelmar Fosk", "Fosk"]},
        {"question": "How many steps lead to the gallery?", "answers": ["214", "two hundred and fourteen"]},
    ]},
    {"id": "rowing", "title": "Tamsford Rowing Club", "document": SECOND_DOCUMENT, "qa": [
        {"question": "Who founded the Tamsford Rowing Club?", "answers": ["Ulla Brenning"]},
        {"question": "Where does the club row?", "answers": ["Orle estuary", "the Orle"]},
    ]},
]  # fmt: skip
GENERAL = [
    {"id": "g1", "question": "What is the capital of France?", "answers": ["Paris"]},
    {"id": "g2", "question": "How many legs does a spider have?", "answers": ["8", "eight"]},
    {"id": "g3", "question": "What colour is the sky on a clear day?", "answers": ["blue"]},
]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def facts_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "facts.jsonl", FACTS)


@pytest.fixture
def general_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "general.jsonl", GENERAL)


def tiny_args(model_dir: Path) -> list:
    return ["--model", model_dir, "--device", "cpu", "--max-new-tokens", "8", "--general-max-new-tokens", "4"]


def tiny_settings(model_dir: Path, mode: str = "sequential") -> BenchSettings:
    return BenchSettings(model=str(model_dir), mode=mode, max_new_tokens=8, general_max_new_tokens=4, device="cpu")


# ---- arithmetic ------------------------------------------------------------------------------------
def test_gain_recovery():
    assert gain_recovery(base=0.1, in_context=0.5, learned=0.3) == pytest.approx(0.5)
    assert gain_recovery(base=0.1, in_context=0.5, learned=0.6) == pytest.approx(1.25)  # learning can beat reading
    assert gain_recovery(base=0.2, in_context=0.5, learned=0.1) == pytest.approx(-1 / 3)
    assert gain_recovery(base=0.3, in_context=0.3, learned=0.4) is None  # reading gains nothing: undefined


def test_forgetting():
    assert forgetting(before=0.5, after=0.45) == pytest.approx(0.1)
    assert forgetting(before=0.5, after=0.55) == pytest.approx(-0.1)  # improved
    assert forgetting(before=0.5, after=0.5) == 0
    assert forgetting(before=0.0, after=0.0) is None
    assert forgetting(before=None, after=None) is None


def test_score_reports_strict_accuracy_next_to_accuracy(tmp_path):
    """Issue 25: replies right by answer-contains but wrong by strict count in accuracy, not in strict_accuracy."""
    from clslm.bench_results import Reference, Trial, _score
    from clslm.bench_report import markdown, reference_of, table_rows, write_outputs
    from clslm.benchdata import QA, FactsDoc

    qa = (
        QA("In what year was the article published?", ("1991",)),
        QA("How many domains of text does Exquisite Corpus compile?", ("8", "eight")),
        QA("Who published The Data Compression Book?", ("M&T Books", "M&T")),
        QA("Who wrote the deflate specification?", ("L. Peter Deutsch", "Deutsch")),
    )
    facts = [FactsDoc("readmes", "READMEs", "…", qa)]
    contradicting = [
        "It was published in 1991, but it was actually published in 1992.",
        "Exquisite Corpus compiles 14 different domains of text, and 8 differ.",
        "M&T, but it has a number of serious problems.",
        "It was written by L. Peter Deutsch.",
    ]
    reference = Reference(base=["I do not know."] * 4, in_context=contradicting, general=[], general_nll=[], doc_tokens=[100])
    trial = Trial(learned=contradicting[:2] + ["M&T Books published it.", "Deutsch."], first_right_after=contradicting, first_after_all=contradicting)
    result = _score("ttt", {}, facts, [], BenchSettings(device="cpu"), reference, trial)
    assert result.accuracy == {"base": 0.0, "in_context": 1.0, "learned": 1.0}
    assert result.strict_accuracy == {"base": 0.0, "in_context": 0.25, "learned": 0.5}
    assert [(r.in_context_hit, r.in_context_strict, r.learned_strict) for r in result.rows] == [
        (True, False, False), (True, False, False), (True, False, True), (True, True, True),
    ]  # fmt: skip
    assert reference_of(result)["strict_accuracy"] == {"base": 0.0, "in_context": 0.25}

    rows = table_rows(reference_of(result), [result])
    assert [row[:4] for row in rows] == [["base", "0.000", "0.000", "0.000"], ["in_context", "1.000", "0.250", rows[1][3]], ["ttt", "1.000", "0.500", rows[2][3]]]
    table = markdown(rows, model="m", mode="sequential", docs=1, questions=4, general_questions=0, machine={})
    assert table.splitlines()[0].startswith("| setting | accuracy | strict acc | F1 |")
    assert "| `ttt` | 1.000 | 0.500 |" in table
    old_reference = {k: v for k, v in reference_of(result).items() if k != "strict_accuracy"}  # a compare.json from before
    assert table_rows(old_reference, [])[1][:3] == ["in_context", "1.000", "–"]

    write_outputs(tmp_path, result)
    with open(tmp_path / "questions.csv", newline="", encoding="utf-8") as f:
        first = next(csv.DictReader(f))
    assert (first["in_context_hit"], first["in_context_strict"]) == ("True", "False")
    assert json.loads((tmp_path / "result.json").read_text())["strict_accuracy"]["learned"] == 0.5


# ---- data sets -------------------------------------------------------------------------------------
def test_bundled_dev_sets_load():
    facts, general = load_facts(), load_general()
    assert len(facts) == 12 and all(len(d.qa) == 8 for d in facts)
    assert len(general) == 200
    assert bundled("facts-dev.jsonl").is_file()


def test_sets_load_with_blank_lines_and_optional_title(tmp_path):
    no_title = {k: v for k, v in FACTS[1].items() if k != "title"}
    docs = load_facts(write_jsonl(tmp_path / "f.jsonl", [FACTS[0], "", "   ", no_title]))
    assert [d.id for d in docs] == ["kess", "rowing"] and docs[1].title == "rowing"
    assert docs[0].qa[1].answers == ("214", "two hundred and fourteen")
    assert [q.id for q in load_general(write_jsonl(tmp_path / "g.jsonl", GENERAL))] == ["g1", "g2", "g3"]


def broken(record: dict, **changes) -> dict:
    return {k: v for k, v in (record | changes).items() if v is not None}


@pytest.mark.parametrize(
    "lines, message",
    [
        ([FACTS[0], '{"id": "x", "document": ', FACTS[1]], "line 2: not valid JSON"),
        ([FACTS[0], "", "[1, 2]"], "line 3: expected a JSON object"),
        ([broken(FACTS[0], qa=None)], "line 1: missing field 'qa'"),
        ([FACTS[0], broken(FACTS[1], qa=[])], "line 2: missing field 'qa'"),
        ([broken(FACTS[0], document=None)], "line 1: missing field 'document'"),
        ([broken(FACTS[0], id=None)], "line 1: missing field 'id'"),
        ([broken(FACTS[0], qa=[{"question": "Who?"}])], "line 1, qa[1]: missing field 'answers'"),
        ([broken(FACTS[0], qa=[{"question": "Who?", "answers": []}])], "line 1, qa[1]: missing field 'answers'"),
        ([broken(FACTS[0], qa=[{"answers": ["x"]}])], "line 1, qa[1]: missing field 'question'"),
        ([FACTS[0], FACTS[0]], "duplicate id 'kess'"),
        ([], "empty"),
        (["", "  "], "empty"),
    ],
)
def test_bad_facts_files_name_the_line(tmp_path, lines, message):
    path = write_jsonl(tmp_path / "facts.jsonl", lines)
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_facts(path)


def test_bad_general_file(tmp_path):
    with pytest.raises(InputError, match="line 2: missing field 'answers'"):
        load_general(write_jsonl(tmp_path / "g.jsonl", [GENERAL[0], broken(GENERAL[1], answers="8")]))
    with pytest.raises(InputError, match="no such file"):
        load_general(tmp_path / "missing.jsonl")


def test_cli_bad_facts_file_exits_3_naming_the_line(tmp_path, capfd):
    path = write_jsonl(tmp_path / "facts.jsonl", [FACTS[0], "{oops"])
    code, out, err = run(capfd, "bench", path, "--json")
    assert code == 3 and out == ""
    assert f"{path}, line 2: not valid JSON" in err and "Traceback" not in err
    code, _, err = run(capfd, "compare", write_jsonl(tmp_path / "empty.jsonl", []), "--strategies", "ttt")
    assert code == 3 and "empty" in err


def test_cli_usage_errors(capfd, facts_file):
    code, _, err = run(capfd, "compare", facts_file, "--strategies", "ttt,nope")
    assert code == 2 and "nope" in err
    code, _, err = run(capfd, "bench", facts_file, "--strategy", "nope")
    assert code == 2 and "nope" in err
    code, _, err = run(capfd, "bench", facts_file, "--mode", "sideways")
    assert code == 2


def test_cli_unimplemented_strategy_and_bad_option_fail_before_any_work(capfd, facts_file, planned_strategy):
    code, _, err = run(capfd, "bench", facts_file, "--strategy", planned_strategy, "--model", "/no/such/model")
    assert code == 3 and "not implemented" in err
    code, _, err = run(capfd, "bench", facts_file, "-o", "nope=1", "--model", "/no/such/model")
    assert code == 3 and "unknown option 'nope'" in err
    code, _, err = run(capfd, "compare", facts_file, "--strategies", "ttt", "-o", "ace.x=1")
    assert code == 3 and "'ace' is not one of --strategies" in err


# ---- running -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["sequential", "independent"])
def test_run_bench_both_modes(model_dir, facts_file, general_file, mode):
    phases = []
    result = run_bench(
        "ttt", load_facts(facts_file), load_general(general_file), tiny_settings(model_dir, mode), TTT_FAST,
        progress=lambda phase, done, total: phases.append((phase, done, total)),
    )  # fmt: skip
    data = asdict(result)
    assert set(data) == BENCH_KEYS
    assert (data["strategy"], data["options"], data["mode"], data["docs"], data["questions"]) == ("ttt", TTT_FAST, mode, 2, 4)
    for key in ("accuracy", "strict_accuracy", "f1"):
        assert set(data[key]) == {"base", "in_context", "learned"} and all(0 <= v <= 1 for v in data[key].values())
    assert all(data["strict_accuracy"][k] <= data["accuracy"][k] for k in data["accuracy"])
    assert set(data["general"]) == {"questions", "before", "after", "nll_before", "nll_after"}
    assert data["general"]["questions"] == 3 and data["general"]["nll_before"] > 0 and data["general"]["nll_after"] > 0
    assert set(data["retention"]) == {"first_doc_right_after", "first_doc_after_all"}
    assert data["retention"]["first_doc_right_after"] is not None
    assert (data["retention"]["first_doc_after_all"] is None) == (mode == "independent")
    assert data["learn_seconds"] > 0 and data["learn_seconds_per_1k_tokens"] > 0 and data["ask_seconds_mean"] > 0
    assert data["state_mb_per_doc"] > 0 and data["peak_rss_mb"] > 0
    assert {"cpu", "cpu_count", "device", "dtype", "torch", "clslm", "date"} <= set(data["machine"])
    assert [(r.doc_id, r.question) for r in result.rows] == [(d["id"], qa["question"]) for d in FACTS for qa in d["qa"]]
    assert sum(r.learned_hit for r in result.rows) / 4 == data["accuracy"]["learned"]
    names = [p for p, _, _ in phases]
    assert {"base", "in context", "general before", "ttt: general after"} <= set(names)
    assert phases[-1][1] == phases[-1][2]  # the last bar ends full


def test_a_single_document_is_answered_once(model_dir, facts_file, general_file):
    # Sequential with one document: its answers right after learning are the final ones, not asked twice.
    phases = []
    result = run_bench(
        "ttt", load_facts(facts_file)[:1], load_general(general_file), tiny_settings(model_dir, "sequential"), TTT_FAST,
        progress=lambda phase, done, total: phases.append(phase),
    )  # fmt: skip
    assert "ttt: answering" not in phases and [p for p in phases if "right after" in p]
    retention = asdict(result)["retention"]
    assert retention["first_doc_right_after"] == retention["first_doc_after_all"] is not None


def test_cli_bench_json_and_out(llama_dir, facts_file, general_file, tmp_path, capfd):
    out_dir = tmp_path / "results"
    code, out, err = run(capfd, "bench", facts_file, "--general", general_file, *tiny_args(llama_dir), *TTT_FAST_CLI, "--out", out_dir, "--json")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1, f"--json prints exactly one JSON object: {out!r}"
    data = json.loads(lines[0])
    assert set(data) == BENCH_KEYS and data["docs"] == 2 and data["general"]["questions"] == 3
    assert json.loads((out_dir / "result.json").read_text()) == data
    with open(out_dir / "questions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and rows[0]["doc_id"] == "kess" and rows[0]["answers"] == "Adelmar Fosk | Fosk"
    assert {"base", "in_context", "learned", "base_hit", "in_context_hit", "learned_hit", "base_strict", "in_context_strict", "learned_strict"} <= set(rows[0])


def test_cli_bench_human_output(llama_dir, facts_file, capfd):
    code, out, err = run(capfd, "bench", facts_file, "--docs", "1", "--general-questions", "0", *tiny_args(llama_dir), *TTT_FAST_CLI)
    assert code == 0, err
    for word in ("base", "in_context", "learned", "strict", "gain recovery", "retention", "forgetting", "s/1k tokens", "MB/doc", "1 document,"):
        assert word in out
    assert "ttt (epochs=2, neurons=8, max_tokens=32) · sequential" in out  # the header names the options it ran with


def test_compare_shares_the_reference_and_reports_missing_strategies(llama_dir, facts_file, general_file, planned_strategy):
    phases = set()
    comparison = run_compare(
        ["ttt", planned_strategy], load_facts(facts_file)[:1], load_general(general_file), tiny_settings(llama_dir),
        {"ttt": TTT_FAST}, progress=lambda phase, done, total: phases.add((phase, done, total)),
    )  # fmt: skip
    assert [e.strategy for e in comparison.strategies] == ["ttt", planned_strategy]
    ttt, planned = comparison.strategies
    assert isinstance(planned, Unavailable) and planned.status == "not implemented"
    assert ttt.accuracy["base"] == comparison.reference["accuracy"]["base"]
    assert ttt.strict_accuracy["in_context"] == comparison.reference["strict_accuracy"]["in_context"]
    assert ttt.general["before"] == comparison.reference["general"]["before"]
    assert sum(1 for p, done, _ in phases if p == "base" and done == 0) == 1  # computed once


def test_compare_reports_a_failing_strategy_and_goes_on(llama_dir, facts_file):
    from clslm import registry
    from clslm.strategies.base import Strategy

    class Broken(Strategy):
        name = "broken-for-bench-test"

        def learn(self, document, on_step=None):
            raise RuntimeError("boom")

    registry.register(Broken)
    try:
        comparison = run_compare([Broken.name, "ttt"], load_facts(facts_file)[:1], [], tiny_settings(llama_dir), {"ttt": TTT_FAST})
    finally:
        registry.unregister(Broken.name)
    broken, ttt = comparison.strategies
    assert isinstance(broken, Unavailable) and (broken.status, broken.message) == ("failed", "RuntimeError: boom")
    assert ttt.strategy == "ttt" and ttt.general["questions"] == 0 and ttt.forgetting is None


def test_cli_compare_json_markdown_plot(llama_dir, facts_file, general_file, tmp_path, capfd, planned_strategy):
    args = ["compare", facts_file, "--strategies", f"ttt, {planned_strategy},ttt", "--docs", "1", "--general", general_file, *tiny_args(llama_dir)]
    args += ["-o", "ttt.epochs=2", "-o", "ttt.neurons=8", "-o", "ttt.max_tokens=32"]
    code, out, err = run(capfd, *args, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert set(data) == {"model", "mode", "docs", "questions", "reference", "strategies", "machine"}
    assert [s["strategy"] for s in data["strategies"]] == ["ttt", planned_strategy]
    assert set(data["strategies"][0]) == BENCH_KEYS
    assert data["strategies"][1] == {"strategy": planned_strategy, "status": "not implemented", "message": data["strategies"][1]["message"]}

    plot = tmp_path / "compare.png"
    code, out, err = run(capfd, *args, "--markdown", "--plot", plot)
    assert code == 0, err
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert table[0].startswith("| setting | accuracy | strict acc | F1 | gain recovery |") and len(table) == 2 + 4  # header, rule, 4 rows
    assert any(line.startswith(f"| `{planned_strategy}` | not implemented |") for line in table)
    assert "Model `" in out

    written = tmp_path / "written"
    code, out, err = run(capfd, *args, "--out", written)
    assert code == 0, err
    assert json.loads((written / "compare.json").read_text())["strategies"][0]["strategy"] == "ttt"
    assert (written / "compare.md").read_text().count("| `ttt` |") == 1
    assert (written / "ttt" / "questions.csv").read_text().count("\n") == 1 + data["questions"]

    code, out, err = run(capfd, *args[:-4], "--general-questions", "0")
    assert code == 0, err
    assert "not implemented" in out and "in_context" in out and "learn" in out


def test_answer_nll_stepwise_matches_one_pass(llama_dir):
    """With logits processors the answer is scored token by token; a no-op processor changes nothing."""
    import torch

    from clslm.likelihood import answer_nll
    from clslm.models import load_model, resolve_model

    model, tokenizer = load_model(resolve_model(str(llama_dir)), device="cpu")
    one_pass = answer_nll(model, tokenizer, "Who built it?", "Adelmar Fosk")
    stepwise = answer_nll(model, tokenizer, "Who built it?", "Adelmar Fosk", logits_processors=[lambda ids, scores: scores])
    assert stepwise == pytest.approx(one_pass, abs=1e-4) and one_pass > 0

    target = tokenizer("Adelmar Fosk", add_special_tokens=False)["input_ids"]

    def favour(ids, scores):
        scores = scores.clone()
        scores[:, target] += 20.0
        return scores

    assert answer_nll(model, tokenizer, "Who built it?", "Adelmar Fosk", logits_processors=[favour]) < one_pass
    assert answer_nll(model, tokenizer, "Who built it?", "") == 0.0
    assert torch.is_grad_enabled()  # scoring leaves no no_grad behind


# ---- the real default model (slow) -----------------------------------------------------------------------
@pytest.mark.slow
def test_bench_on_the_default_model(tmp_path):
    """`clslm bench --strategy ttt --docs 2 --general-questions 30 --json`: the JSON fields, and learned > base
    (about 7 min on 2 CPU cores: 912 document tokens to learn, 140 answers)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLSLM_") and k != "OMP_NUM_THREADS"}
    if USER_CLSLM_HOME is not None:  # reuse the user's GGUF conversion and calibration cache
        env["CLSLM_HOME"] = USER_CLSLM_HOME
    script = Path(sys.executable).parent / "clslm"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "clslm"]
    args = ["bench", "--strategy", "ttt", "--docs", "2", "--general-questions", "30", "--device", "cpu", "--json", "--out", str(tmp_path)]
    result = subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=3600)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == BENCH_KEYS
    assert (data["strategy"], data["mode"], data["docs"], data["questions"], data["general"]["questions"]) == ("ttt", "sequential", 2, 16, 30)
    assert data["accuracy"]["learned"] > data["accuracy"]["base"], data
    assert data["accuracy"]["in_context"] > data["accuracy"]["base"], data
    assert data["gain_recovery"] is not None and data["gain_recovery"] > 0
    assert data["forgetting"] is not None and data["general"]["nll_after"] is not None
    assert data["retention"]["first_doc_right_after"] is not None and data["retention"]["first_doc_after_all"] is not None
    assert (tmp_path / "questions.csv").is_file()


def test_variant_labels_parse_options_and_reject_malformed_ones():
    from clslm.bench import variant

    assert variant("ttt") == ("ttt", {})
    assert variant(" ttt[neurons=0, preset=seed] ") == ("ttt", {"neurons": "0", "preset": "seed"})
    for bad in ("ttt[neurons]", "ttt[neurons=0", "ttt[=1]"):
        with pytest.raises(InputError):
            variant(bad)


def test_a_variant_label_becomes_one_safe_folder_name():
    from clslm.bench_report import folder_name

    assert folder_name("ttt[neurons=4,epochs=1]") == "ttt[neurons=4,epochs=1]"
    assert folder_name("doc2lora[hypernet=build/hn/net.safetensors]") == "doc2lora[hypernet=build_hn_net.safetensors]"
    assert folder_name("doc2lora[hypernet=../x y]") == "doc2lora[hypernet=.._x_y]"
    assert folder_name("../b") == "_b" and folder_name("..") == "_"


def test_cli_compare_runs_variants_of_one_strategy_side_by_side(llama_dir, facts_file, capfd, tmp_path):
    args = ["compare", facts_file, "--strategies", "ttt[neurons=4],ttt[neurons=8,epochs=1]", "--docs", "1", "--general-questions", "0", *tiny_args(llama_dir)]
    code, out, err = run(capfd, *args, "-o", "ttt.max_tokens=32", "-o", "ttt.epochs=2", "--json")
    assert code == 0, err
    small, large = json.loads(out)["strategies"]
    assert (small["strategy"], large["strategy"]) == ("ttt[neurons=4]", "ttt[neurons=8,epochs=1]")
    assert large["options"] == {"max_tokens": "32", "epochs": "1", "neurons": "8"}  # its own options override -o ttt.*
    assert large["state_mb_per_doc"] > small["state_mb_per_doc"]  # twice the neurons: twice the deltas

    code, out, err = run(capfd, *args, "-o", "ttt.max_tokens=32", "-o", "ttt.epochs=1", "--out", tmp_path / "cmp")
    assert code == 0, err
    assert "ttt[neurons=4]" in out and "ttt[neurons=8,epochs=1]" in out  # labels are not eaten as rich markup
    assert f"wrote {tmp_path / 'cmp' / 'ttt[neurons=4]' / 'questions.csv'}" in err

    code, _, err = run(capfd, "compare", facts_file, "--strategies", "ttt[nope=1]", *tiny_args(llama_dir))
    assert code == 3 and "nope" in err


def test_a_document_read_once_for_many_questions_answers_as_read_each_time(llama_dir):
    """The in-context reference keeps the document's KV cache across its questions: same greedy answers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from clslm.generation import SharedPrefix, chat_prompt, generate, user_message

    model, tokenizer = AutoModelForCausalLM.from_pretrained(llama_dir).eval(), AutoTokenizer.from_pretrained(llama_dir)
    context = f"Read this.\n\n{DOCUMENT}"
    questions = ["Question: Who built it?", "Question: How tall is the tower of the Kessenbrock Light?", "Question: When?"]
    shared = SharedPrefix(model, tokenizer, [chat_prompt(tokenizer, user_message(q, context)) for q in questions])
    assert len(shared.ids) > 20
    fed = []
    hook = model.model.register_forward_pre_hook(lambda m, args, kwargs: fed.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    generate(model, tokenizer, questions[1], context=context, max_new_tokens=2, shared=shared)
    hook.remove()
    assert fed[0] == generate(model, tokenizer, questions[1], context=context, max_new_tokens=1).prompt_tokens - len(shared.ids)  # only the question's own tokens run
    for question in questions * 2:  # the second round reuses the cache the first round grew
        cached = generate(model, tokenizer, question, context=context, max_new_tokens=8, shared=shared)
        plain = generate(model, tokenizer, question, context=context, max_new_tokens=8)
        assert cached.text == plain.text and cached.prompt_tokens == plain.prompt_tokens
