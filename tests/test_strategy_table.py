"""Which strategy (issue 23, items 1 and 7): the README's table is what clslm/data/measured.json gives,
benchmarks/strategy_table.py updates both from a compare.json, `clslm strategies` prints the same figures
without importing torch, and what each strategy puts in the prompt is said the same way everywhere."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from clslm import measured, registry

from helpers import run, run_json

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "strategy_table.py"
README_STUB = "# x\n\nintro\n\n<!-- strategy-table -->\nold table\n<!-- /strategy-table -->\n\nthe rest\n"


def env(home: Path | None = None) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CLSLM_")}
    return base | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"} | ({"CLSLM_HOME": str(home)} if home else {})


def script(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env(), cwd=REPO, timeout=120)


def test_the_readme_table_is_what_measured_json_gives():
    proc = script("--check")
    assert proc.returncode == 0, proc.stderr


def test_measured_json_has_every_strategy_with_its_figures_and_source():
    data = measured.load()
    assert set(data["strategies"]) == set(registry.BUILTIN)
    for name, entry in data["strategies"].items():
        assert {*measured.FIGURES, *measured.WORDS, "source"} <= set(entry), name
        assert all(entry[word] for word in measured.WORDS), name
        assert 0 <= entry["accuracy"] <= 1, name
        assert {"command", "date", "machine", "documents"} <= set(entry["source"]), name
        assert entry["source"]["command"].lstrip("OMP_NUM_THREADS=1 ").startswith("clslm compare"), name


def test_what_is_in_the_prompt_is_what_the_strategies_do():
    """A strategy with its own prompt_context adds text to the prompt: measured.json, the README and
    `clslm ask --help` name it as one; the others keep the document out of the prompt."""
    from clslm.cli.ask import ask
    from clslm.strategies.base import Strategy

    data = measured.load()["strategies"]
    adds = {name for name in registry.BUILTIN if registry.get(name).prompt_context is not Strategy.prompt_context}
    assert adds == {"jitrl-mvp", "ace"}
    assert {name for name, entry in data.items() if entry["in_prompt"] != "the question only"} == adds
    help_text = " ".join(ask.__doc__.split())
    keeps_out = sorted(set(registry.BUILTIN) - adds, key=help_text.find)
    assert f"{', '.join(keeps_out[:-1])} and {keeps_out[-1]} keep the document out of the prompt" in help_text
    assert all(f"{name} puts" in help_text or f"{name} its playbook" in help_text for name in adds)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "context_tokens" in readme and all(f"`{name}`" in readme for name in registry.BUILTIN)


def compare_json(path: Path, date: str, rows: list[dict]) -> Path:
    machine = {"cpu": "Test CPU", "cpu_count": 4, "torch_threads": 4, "device": "cpu", "dtype": "float32", "date": date}
    reference = {"accuracy": {"base": 0.1, "in_context": 0.8}, "general": {"questions": 20}}
    path.mkdir(parents=True)
    data = {"model": "tiny", "mode": "sequential", "docs": 2, "questions": 16, "reference": reference, "strategies": rows, "machine": machine}
    (path / "compare.json").write_text(json.dumps(data), encoding="utf-8")
    return path


def row(setting: str, accuracy: float, **options) -> dict:
    return {
        "strategy": setting, "options": options, "accuracy": {"base": 0.1, "in_context": 0.8, "learned": accuracy},
        "gain_recovery": 0.5, "forgetting": 0.01, "learn_seconds_per_1k_tokens": 12.0, "ask_seconds_mean": 1.5, "state_mb_per_doc": 3.0,
    }


def test_a_compare_updates_measured_json_and_the_readme_table(tmp_path):
    data, readme = tmp_path / "measured.json", tmp_path / "README.md"
    shutil.copy(measured.PATH, data)
    readme.write_text(README_STUB, encoding="utf-8")
    files = ["--measured", data, "--readme", readme]
    rows = [row("ttt", 0.5), row("ttt[beams=1]", 0.4, beams="1"), {"strategy": "doc2lora", "status": "failed", "message": "x"}, row("jitrl-mvp", 0.75)]
    new = compare_json(tmp_path / "new", "2099-01-02T00:00:00+00:00", rows)
    before = measured.load(data)["strategies"]

    proc = script(new, "--command", "clslm compare new.jsonl --strategies ttt,jitrl-mvp", "--documents", "two test documents", *files)
    assert proc.returncode == 0, proc.stderr
    assert "skipped ttt[beams=1]: a variant" in proc.stderr and "skipped doc2lora: failed" in proc.stderr
    after = measured.load(data)["strategies"]
    assert (after["ttt"]["accuracy"], after["jitrl-mvp"]["accuracy"], after["ttt"]["learn_s_per_1k_tokens"]) == (0.5, 0.75, 12.0)
    assert after["doc2lora"] == before["doc2lora"] and after["ace"] == before["ace"]
    assert all(after[name][word] == before[name][word] for name in after for word in measured.WORDS)
    source = after["ttt"]["source"]
    assert source["command"] == "clslm compare new.jsonl --strategies ttt,jitrl-mvp" and source["date"] == "2099-01-02"
    assert source["documents"].startswith("two test documents (2 documents, 16 questions") and "Test CPU (4 cores, 4 torch threads)" in source["machine"]
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("# x\n\nintro\n\n<!-- strategy-table -->\n| strategy |") and text.endswith("<!-- /strategy-table -->\n\nthe rest\n")
    assert "| `jitrl-mvp` ¹ | 0.750 | 0.500 | 0.010 | 12 | 1.50 | 3.0 MB | the question + retrieved document chunks |" in text
    assert "old table" not in text and "2099-01-02 · two test documents" in text
    assert script("--check", *files).returncode == 0

    # a variant taken on purpose stands for its strategy; an older compare does not replace newer figures
    taken = compare_json(tmp_path / "taken", "2099-01-03T00:00:00+00:00", [row("ttt[beams=1]", 0.25, beams="1")])
    assert script(taken, "--take", "ttt[beams=1]", *files).returncode == 0
    ttt = measured.load(data)["strategies"]["ttt"]
    assert ttt["accuracy"] == 0.25 and ttt["source"]["options"] == {"beams": "1"}
    old = compare_json(tmp_path / "old", "2000-01-01T00:00:00+00:00", [row("ttt", 0.9)])
    proc = script(old / "compare.json", *files)
    assert "measured.json holds newer figures for ttt" in proc.stderr and measured.load(data)["strategies"]["ttt"]["accuracy"] == 0.25
    assert script(old, "--force", *files).returncode == 0 and measured.load(data)["strategies"]["ttt"]["accuracy"] == 0.9

    readme.write_text(readme.read_text(encoding="utf-8").replace("0.750", "0.760"), encoding="utf-8")
    proc = script("--check", *files)
    assert proc.returncode == 1 and "not what" in proc.stderr


def test_strategy_table_refuses_what_it_cannot_use(tmp_path):
    (tmp_path / "README.md").write_text("no markers\n", encoding="utf-8")
    proc = script("--readme", tmp_path / "README.md", "--measured", measured.PATH, "--check")
    assert proc.returncode != 0 and "no '<!-- strategy-table -->'" in proc.stderr
    (tmp_path / "bad.json").write_text("{}", encoding="utf-8")
    proc = script("--readme", tmp_path / "README.md", "--measured", tmp_path / "missing.json")
    assert proc.returncode != 0 and "cannot read" in proc.stderr and "Traceback" not in proc.stderr
    shutil.copy(measured.PATH, tmp_path / "m.json")
    proc = script(tmp_path / "bad.json", "--readme", tmp_path / "README.md", "--measured", tmp_path / "m.json")
    assert proc.returncode != 0 and "not a compare.json" in proc.stderr


def test_clslm_strategies_shows_the_figures_on_one_screen_without_torch(tmp_path):
    """The first listing ever (an empty $CLSLM_HOME, no cached rows) imports neither torch nor transformers."""
    command = [sys.executable, "-X", "importtime", "-m", "clslm", "strategies"]
    proc = subprocess.run(command, capture_output=True, text=True, env=env(tmp_path / "home"), cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "clslm" in imported and not {"torch", "transformers"} & imported
    lines = proc.stdout.splitlines()
    assert len(lines) <= 24
    data = measured.load()["strategies"]
    for name in registry.BUILTIN:
        line = next(line for line in lines if line.startswith(name + " "))
        assert measured.fmt("accuracy", data[name]["accuracy"]) in line and data[name]["in_prompt"] in line and data[name]["status"] in line


def test_clslm_strategies_json_and_options(capfd):
    rows = {row["name"]: row for row in run_json(capfd, "strategies")["strategies"]}
    assert {name: rows[name]["measured"] for name in registry.BUILTIN} == measured.load()["strategies"]
    assert [row["name"] for row in run_json(capfd, "strategies", "ttt")["strategies"]] == ["ttt"]
    code, out, _ = run(capfd, "strategies")
    assert code == 0 and "epochs=" not in out and "jitrl-mvp" in out
    code, out, _ = run(capfd, "strategies", "ttt")
    assert code == 0 and "epochs=" in out and "llm_model=" not in out
    code, out, _ = run(capfd, "strategies", "--options")
    assert code == 0 and "epochs=" in out and "llm_model=" in out
    code, _, err = run(capfd, "strategies", "nope")
    assert code == 2 and "unknown strategy 'nope'" in err
