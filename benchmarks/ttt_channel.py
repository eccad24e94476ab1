"""Noisy-channel reranking of ttt's beams (Lewis & Fan 2019) on a learned ttt session: the patched model's N
beams for a question are candidates c; each is scored by how well it predicts the question back, log P(q | c)
under the base model (the document's sentence should explain the question, whatever its own frequency),
optionally plus λ · log P(c | q) of the patched model. Prototype for issue 19.

    clslm learn dev-01..06 -s results/s-dev1-6
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/ttt_channel.py results/s-dev1-6 dev-01,...,dev-06 6

Prints hits of the plain 2-beam answer, of the reranked candidate for each λ, and of any candidate.
"""
import sys

import torch

from clslm.benchdata import load_facts
from clslm.generation import GREEDY, chat_prompt
from clslm.scoring import contains_answer
from clslm.session import Session

path, ids, width = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
recs = {d.id: d for d in load_facts(sys.argv[4] if len(sys.argv) > 4 else None)}
st = Session.open(path, device="cpu", dtype="float32").strategy()
model, tok = st.model, st.tokenizer
LAMBDAS = (0.0, 0.25, 0.5, 1.0)


def candidates(question: str) -> tuple[list[str], list[float]]:
    """The N beams and their length-normalised log P(c | q) under the patched model."""
    inputs = tok(chat_prompt(tok, question), return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=40, num_beams=width, num_return_sequences=width, output_scores=True,
                             return_dict_in_generate=True, **GREEDY, pad_token_id=tok.pad_token_id)
    texts = [tok.decode(o[inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip() for o in out.sequences]
    return texts, out.sequences_scores.tolist()


def channel(question: str, texts: list[str]) -> list[float]:
    """Mean log P(question tokens | candidate as a note before it) under the base model."""
    scores = []
    for c in texts:
        prefix = tok(chat_prompt(tok, f"{c}\n\nAsk a question that this answers."), add_special_tokens=False)["input_ids"]
        q_ids = tok(question, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prefix + q_ids])
        with torch.no_grad(), st.disabled():
            logp = torch.log_softmax(model(ids).logits[0, len(prefix) - 1 : -1].float(), -1)
        scores.append(logp.gather(1, torch.tensor(q_ids)[:, None]).mean().item())
    return scores


hits = {"beams2": 0, "any": 0} | {f"lambda{l}": 0 for l in LAMBDAS}
for doc_id in ids:
    for qa in recs[doc_id].qa:
        q, gold = qa.question, list(qa.answers)
        row = {"beams2": st.answer(q, max_new_tokens=40).text}
        with st.routed(q):
            if st.active_documents(q):
                texts, forward = candidates(q)
                back = channel(q, texts)
                for l in LAMBDAS:
                    row[f"lambda{l}"] = max(zip(texts, forward, back), key=lambda t: t[2] + l * t[1])[0]
                row["any"] = " | ".join(texts)
        for k, v in row.items():
            hits[k] += contains_answer(v, gold)
        print(doc_id, q[:55], {k: int(contains_answer(v, gold)) for k, v in row.items()}, flush=True)
    print(doc_id, hits, flush=True)
print("TOTAL", hits)
