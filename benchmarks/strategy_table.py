"""Keep the README's "Which strategy?" table and clslm/data/measured.json up to date with the latest compare.

    python benchmarks/strategy_table.py results/NEW/compare.json [MORE ...] \\
        --command "clslm compare results/heldout-07-12.jsonl --strategies ttt,jitrl-mvp ..." --documents "held-out dev-07..12"
    python benchmarks/strategy_table.py            # rewrite the README table from measured.json as it is
    python benchmarks/strategy_table.py --check    # exit 1 when the README table is not what measured.json gives

A compare.json is what `clslm compare --out DIR` writes (DIR or DIR/compare.json). Each strategy's default
row (a setting without options, e.g. `ttt`) replaces that strategy's figures and source in measured.json; a
variant (`ttt[beams=1]`) is skipped unless `--take 'ttt[beams=1]'` names it, to stand for `ttt` (when it
measured what is now the default); failed or unimplemented rows are skipped. Compares apply oldest first, and
a row older than the figures measured.json holds is skipped (`--force` takes it). The status, what a
strategy answers from and what is in its prompt are written by hand in measured.json and never change here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from clslm import measured

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BEGIN, END = "<!-- strategy-table -->", "<!-- /strategy-table -->"


def read_compare(path: Path) -> dict[str, Any]:
    path = path / "compare.json" if path.is_dir() else path
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        sys.exit(f"{path}: cannot read a compare.json ({e})")
    if not isinstance(data, dict) or not isinstance(data.get("strategies"), list):
        sys.exit(f"{path}: not a compare.json (`clslm compare --out DIR` writes one): no 'strategies' list")
    return data | {"_path": str(path)}


def machine_text(machine: dict[str, Any]) -> str:
    threads = machine.get("torch_threads")
    cores = f"{machine.get('cpu_count')} cores" + (f", {threads} torch thread{'s' if threads != 1 else ''}" if threads else "")
    return f"{machine.get('cpu', '?')} ({cores}), {machine.get('device', '?')} {machine.get('dtype', '?')}"


def source_of(compare: dict[str, Any], command: str | None, documents: str | None, note: str | None) -> dict[str, Any]:
    machine = compare.get("machine") or {}
    reference = compare.get("reference") or {}
    general = (reference.get("general") or {}).get("questions")
    counts = f"{compare.get('docs')} documents, {compare.get('questions')} questions, {compare.get('mode')}"
    counts += f"; {general} general questions" if general else ""
    source = {
        "command": command or f"clslm compare --out {Path(compare['_path']).parent}",
        "date": str(machine.get("date", ""))[:10],
        "measured_at": machine.get("date"),
        "machine": machine_text(machine),
        "documents": f"{documents} ({counts})" if documents else counts,
        "model": compare.get("model"),
        "base_accuracy": (reference.get("accuracy") or {}).get("base"),
        "in_context_accuracy": (reference.get("accuracy") or {}).get("in_context"),
    }
    return source | ({"note": note} if note else {})


def figures(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "accuracy": row["accuracy"]["learned"],
        "gain_recovery": row.get("gain_recovery"),
        "forgetting": row.get("forgetting"),
        "learn_s_per_1k_tokens": row.get("learn_seconds_per_1k_tokens"),
        "ask_s": row.get("ask_seconds_mean"),
        "state_mb_per_doc": row.get("state_mb_per_doc"),
    }


def update(data: dict[str, Any], compares: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    """Apply the compares to measured.json's data; returns what was done, one line each."""
    notes = []
    taken = set(args.take or [])
    for compare in sorted(compares, key=lambda c: str((c.get("machine") or {}).get("date", ""))):
        source = source_of(compare, args.command, args.documents, args.note)
        for row in compare["strategies"]:
            setting = row.get("strategy", "?")
            name = setting.split("[", 1)[0]
            if row.get("status") or "accuracy" not in row:
                notes.append(f"skipped {setting}: {row.get('status', 'no figures')}")
                continue
            if row.get("options") and setting not in taken:
                notes.append(f"skipped {setting}: a variant (--take '{setting}' to use it as {name}'s figures)")
                continue
            entry = data["strategies"].get(name)
            date = str((row.get("machine") or {}).get("date") or source["measured_at"] or "")
            if entry and not args.force and str(entry.get("source", {}).get("measured_at") or "") > date:
                notes.append(f"skipped {setting}: measured.json holds newer figures for {name} (--force takes these)")
                continue
            if entry is None:
                entry = data["strategies"][name] = {word: None for word in measured.WORDS}
                notes.append(f"new strategy {name}: write its {', '.join(measured.WORDS)} in measured.json by hand")
            entry.update(figures(row))
            entry["source"] = source | ({"options": row["options"]} if row.get("options") else {})
            notes.append(f"{name}: accuracy {measured.fmt('accuracy', entry['accuracy'])} from {setting} in {compare['_path']}")
    return notes


def readme_with_table(text: str, table: str, path: Path) -> str:
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        sys.exit(f"{path}: no '{BEGIN}' … '{END}' markers to put the table between")
    return text[: start + len(BEGIN)] + "\n" + table + "\n" + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("compares", nargs="*", type=Path, help="compare.json files or the --out directories holding them")
    parser.add_argument("--take", action="append", metavar="SETTING", help="use this variant row (e.g. 'ttt[beams=1]') as its strategy's figures")
    parser.add_argument("--command", help="the exact command that made the compare (recorded with the figures)")
    parser.add_argument("--documents", help="which documents, e.g. 'held-out dev-07..12' (the counts are added)")
    parser.add_argument("--note", help="anything else a reader should know about these figures (recorded)")
    parser.add_argument("--force", action="store_true", help="take rows even when measured.json holds newer figures")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when the README table is not what measured.json gives")
    parser.add_argument("--measured", type=Path, default=measured.PATH, help=f"default {measured.PATH.relative_to(REPO)}")
    parser.add_argument("--readme", type=Path, default=README, help="default README.md")
    args = parser.parse_args(argv)
    if args.check and args.compares:
        parser.error("--check takes no compare.json: it checks the README against measured.json as it is")

    try:
        data, readme = measured.load(args.measured), args.readme.read_text(encoding="utf-8")
    except (OSError, ValueError) as e:
        sys.exit(f"cannot read {e.filename or args.measured}: {e}" if isinstance(e, OSError) else f"{args.measured}: not JSON ({e})")
    if args.check:
        if readme_with_table(readme, measured.markdown_table(data), args.readme) != readme:
            print(f"{args.readme}: the strategy table is not what {args.measured} gives; run python benchmarks/strategy_table.py", file=sys.stderr)
            return 1
        return 0
    if args.compares:
        for line in update(data, [read_compare(p) for p in args.compares], args):
            print(line, file=sys.stderr)
        args.measured.write_text(measured.dump(data), encoding="utf-8")
    args.readme.write_text(readme_with_table(readme, measured.markdown_table(data), args.readme), encoding="utf-8")
    print(f"wrote {args.readme}" + (f" and {args.measured}" if args.compares else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
