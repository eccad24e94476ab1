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
from beam_answers import beams, open_strategy, tally

from clslm.benchdata import load_facts
from clslm.generation import chat_prompt

path, ids, width = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
recs = {d.id: d for d in load_facts(sys.argv[4] if len(sys.argv) > 4 else None)}
st = open_strategy(path)
model, tok = st.model, st.tokenizer
LAMBDAS = (0.0, 0.25, 0.5, 1.0)


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


def reranked(question: str) -> dict[str, str]:
    texts, forward = beams(st, question, width)
    back = channel(question, texts)
    row = {f"lambda{l}": max(zip(texts, forward, back), key=lambda t: t[2] + l * t[1])[0] for l in LAMBDAS}
    return row | {"any": " | ".join(texts)}


tally(st, recs, ids, reranked, keys=("beams2", "any", *(f"lambda{l}" for l in LAMBDAS)))
