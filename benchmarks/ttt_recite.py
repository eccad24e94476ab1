"""Recite, then read (RECITE, Sun et al. 2023) on a learned ttt session: the patched model's N beams for a
question are its recollections; the model then reads them as notes and answers. Prototype for issue 19.

    clslm learn dev-01.txt ... dev-06.txt -s /tmp/s-dev1-6      # the documents of the bundled dev set
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ttt_recite.py /tmp/s-dev1-6 dev-01,dev-02 4,6

Prints per question which answers hold a right answer: the plain 2-beam answer, the N-beam recollections read
by the base model and by the patched model, and whether any recollection holds it. Measured 2026-12-04: it
lost to the plain answer (docs/benchmarks.md), so it is not a strategy option.
"""
import sys
import time

import torch

from clslm.benchdata import load_facts
from clslm.generation import GREEDY, READ_INSTRUCTION, chat_prompt, generate
from clslm.scoring import contains_answer
from clslm.session import Session

path, ids, widths = sys.argv[1], sys.argv[2].split(","), [int(w) for w in sys.argv[3].split(",")]
facts = sys.argv[4] if len(sys.argv) > 4 else None
recs = {d.id: d for d in load_facts(facts)}
st = Session.open(path, device="cpu", dtype="float32").strategy()
model, tok = st.model, st.tokenizer


def recollections(question: str, n: int) -> list[str]:
    inputs = tok(chat_prompt(tok, question), return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=40, num_beams=n, num_return_sequences=n, **GREEDY, pad_token_id=tok.pad_token_id)
    texts = [tok.decode(o[inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip() for o in out]
    return list(dict.fromkeys(t for t in texts if t))


hits = {}
for i in ids:
    for qa in recs[i].qa:
        q, gold = qa.question, list(qa.answers)
        row = {"beams2": st.answer(q, max_new_tokens=40).text}
        with st.routed(q):
            if st.active_documents(q):
                for n in widths:
                    t = time.time()
                    notes = recollections(q, n)
                    context = f"{READ_INSTRUCTION}\n\n" + "\n".join(notes)
                    with st.disabled():
                        row[f"recite{n}-base"] = generate(model, tok, q, context=context, max_new_tokens=40).text
                    row[f"recite{n}-patched"] = generate(model, tok, q, context=context, max_new_tokens=40).text
                    row[f"any{n}"] = " | ".join(notes)
        for k, v in row.items():
            hits[k] = hits.get(k, 0) + contains_answer(v, gold)
        print(i, q[:60], {k: int(contains_answer(v, gold)) for k, v in row.items()}, "|", row.get(f"recite{widths[-1]}-base", "")[:60], flush=True)
    print(i, hits, flush=True)
print("TOTAL", hits)
