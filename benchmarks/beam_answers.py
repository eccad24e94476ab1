"""What ttt_recite.py and ttt_channel.py share: a learned ttt session, the patched model's beams for a question,
and the tally of right answers per way of answering, beside the plain answer (2 beams).

Each script gives `tally` a function that, inside the question's routing (only where a part's patch acts),
returns its own answers by name.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from clslm.generation import GREEDY, chat_prompt
from clslm.scoring import contains_answer
from clslm.session import Session


def open_strategy(path: str):
    """The learned session's strategy (its model and tokenizer are .model, .tokenizer)."""
    return Session.open(path, device="cpu", dtype="float32").strategy()


def beams(strategy, question: str, width: int) -> tuple[list[str], list[float]]:
    """The patched model's `width` beams for the question and their length-normalised log P(beam | question)."""
    tok = strategy.tokenizer
    inputs = tok(chat_prompt(tok, question), return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = strategy.model.generate(**inputs, max_new_tokens=40, num_beams=width, num_return_sequences=width, output_scores=True,
                                      return_dict_in_generate=True, **GREEDY, pad_token_id=tok.pad_token_id)  # fmt: skip
    texts = [tok.decode(o[inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip() for o in out.sequences]
    return texts, out.sequences_scores.tolist()


def tally(strategy, records: dict, ids: list[str], routed_answers: Callable[[str], dict[str, str]], *, keys: tuple[str, ...] = (),
          shown: Callable[[dict[str, str]], str] | None = None) -> dict[str, int]:  # fmt: skip
    """Right answers per name over the documents' questions: "beams2" (the plain answer) and what
    `routed_answers(question)` returns where a part's patch acts. Prints each question's hits (and `shown(row)`),
    each document's running totals, and the total."""
    hits = dict.fromkeys(keys, 0)
    for doc_id in ids:
        for qa in records[doc_id].qa:
            q, gold = qa.question, list(qa.answers)
            row = {"beams2": strategy.answer(q, max_new_tokens=40).text}
            with strategy.routed(q):
                if strategy.active_documents(q):
                    row |= routed_answers(q)
            for k, v in row.items():
                hits[k] = hits.get(k, 0) + contains_answer(v, gold)
            extra = ["|", shown(row)] if shown else []
            print(doc_id, q[:60], {k: int(contains_answer(v, gold)) for k, v in row.items()}, *extra, flush=True)
        print(doc_id, hits, flush=True)
    print("TOTAL", hits)
    return hits
