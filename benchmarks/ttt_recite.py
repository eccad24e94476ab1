"""Recite, then read (RECITE, Sun et al. 2023) on a learned ttt session: the patched model's N beams for a
question are its recollections; the model then reads them as notes and answers. Prototype for issue 19.

    clslm learn dev-01.txt ... dev-06.txt -s /tmp/s-dev1-6      # the documents of the bundled dev set
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ttt_recite.py /tmp/s-dev1-6 dev-01,dev-02 4,6

Prints per question which answers hold a right answer: the plain 2-beam answer, the N-beam recollections read
by the base model and by the patched model, and whether any recollection holds it. Measured 2026-12-04: it
lost to the plain answer (docs/benchmarks.md), so it is not a strategy option.
"""
import sys

from beam_answers import beams, open_strategy, tally

from clslm.benchdata import load_facts
from clslm.generation import READ_INSTRUCTION, generate

path, ids, widths = sys.argv[1], sys.argv[2].split(","), [int(w) for w in sys.argv[3].split(",")]
facts = sys.argv[4] if len(sys.argv) > 4 else None
recs = {d.id: d for d in load_facts(facts)}
st = open_strategy(path)


def recited(question: str) -> dict[str, str]:
    row = {}
    for n in widths:
        notes = list(dict.fromkeys(t for t in beams(st, question, n)[0] if t))
        context = f"{READ_INSTRUCTION}\n\n" + "\n".join(notes)
        with st.disabled():
            row[f"recite{n}-base"] = generate(st.model, st.tokenizer, question, context=context, max_new_tokens=40).text
        row[f"recite{n}-patched"] = generate(st.model, st.tokenizer, question, context=context, max_new_tokens=40).text
        row[f"any{n}"] = " | ".join(notes)
    return row


tally(st, recs, ids, recited, shown=lambda row: row.get(f"recite{widths[-1]}-base", "")[:60])
