"""One fresh session per document: learn it, ask its questions, print each answer and the hits.

A smoke check for a strategy's learning while changing it (8 questions per document: one question is 0.125).
    .venv/bin/python benchmarks/single_document.py dev-01,dev-05 --strategy ttt -o epochs=6
"""

from __future__ import annotations

import argparse
import tempfile
import time

from clslm.benchdata import load_facts
from clslm.documents import Document
from clslm.scoring import contains_answer
from clslm.session import Session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ids", help="comma-separated document ids of the facts set")
    parser.add_argument("--strategy", default="ttt")
    parser.add_argument("-o", dest="options", action="append", default=[], help="KEY=VALUE strategy option")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    options = dict(item.split("=", 1) for item in args.options)
    records = {doc.id: doc for doc in load_facts()}
    total = 0
    for doc_id in args.ids.split(","):
        record, start = records[doc_id], time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp, Session.create(f"{tmp}/s", strategy=args.strategy, options=options, device="cpu") as s:
            losses: list[float] = []
            report = s.learn([Document(doc_id, record.document)], on_step=lambda step: step.loss is not None and losses.append(step.loss))[0]
            tenth = max(1, len(losses) // 10)
            curve = [sum(losses[i : i + tenth]) / len(losses[i : i + tenth]) for i in range(0, len(losses), tenth)]
            print(f"  {len(losses)} steps, {report.seconds:.0f} s {report.extra.get('phase_seconds')} parts {report.extra.get('parts')}; mean loss per tenth: {' '.join(f'{x:.2f}' for x in curve)}", flush=True)
            hits = 0
            for qa in record.qa:
                answer = s.ask(qa.question, max_new_tokens=args.max_new_tokens).text
                hit = contains_answer(answer, list(qa.answers))
                hits += hit
                print(f"  {'+' if hit else '-'} {qa.question[:60]} -> {answer[:80]!r}", flush=True)
        total += hits
        print(f"{doc_id}: {hits}/{len(record.qa)}, loss {report.loss_before} -> {report.loss_after}, {time.perf_counter() - start:.0f} s", flush=True)
    print(f"total {total} ({args.strategy} {options})")


if __name__ == "__main__":
    main()
