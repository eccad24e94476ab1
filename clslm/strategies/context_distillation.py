"""Context distillation: the model reading a chunk of the document is the teacher, the model answering
from its weights alone the student.

For every training exchange (a question about the chunk and a reply drawn from it) the teacher is the
same frozen model with the chunk in its prompt, as `clslm bench` reads a document; the student sees only
the question, as `clslm ask` sends it. The student is trained to match the teacher's next-token
distribution at every reply position (Deep Context Distillation, arXiv 2503.08727): a soft target says
what the reader would answer, not only which sentence the document holds. The teacher's distributions are
computed once per chunk (its prompt prefix in a KV cache) and kept as top-k log-probabilities.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..generation import READ_INSTRUCTION, chat_prompt, common_prefix
from .anatomy import cache_kwarg, cache_of

TOP_K = 32  # teacher log-probabilities kept per reply position (the rest of the mass is dropped)


@dataclass
class Teacher:
    """The teacher's top-k next-token log-probabilities at each labelled position of one example."""

    indices: torch.Tensor  # (positions, k) token ids
    logprobs: torch.Tensor  # (positions, k), renormalised over the k


def teacher_message(chunk: str, question: str) -> str:
    """The user turn the teacher sees: the reading instruction, the chunk, then the question."""
    return f"{READ_INSTRUCTION}\n\n{chunk.strip()}\n\nQuestion: {question}"


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def teach(model, tokenizer, chunk: str, exchanges: list[tuple[str, list[int]]], *, top_k: int = TOP_K, batch_size: int = 8) -> list[Teacher]:
    """Teacher targets for (question, reply token ids) pairs about `chunk`.

    The prompt up to the end of the chunk is the same for every question: it runs once, and each batch of
    questions continues from a copy of its KV cache.
    """
    prompts, shared, prefix = _read(model, tokenizer, chunk, [q for q, _ in exchanges])
    out: list[Teacher] = []
    for start in range(0, len(exchanges), batch_size):
        rows = [prompts[i][shared:] + exchanges[i][1] for i in range(start, min(start + batch_size, len(exchanges)))]
        replies = [len(exchanges[i][1]) for i in range(start, start + len(rows))]
        out += _continue(model, prefix, shared, rows, replies, top_k)
    return out


def _read(model, tokenizer, chunk: str, questions: list[str]) -> tuple[list[list[int]], int, object]:
    """The teacher's prompt ids per question, how many leading tokens they share, and those tokens' KV cache."""
    prompts = [_ids(tokenizer, chat_prompt(tokenizer, teacher_message(chunk, q))) for q in questions]
    shared = len(common_prefix(prompts))
    prefix = cache_of(model(input_ids=torch.tensor([prompts[0][:shared]], device=model.device), use_cache=True, logits_to_keep=1))
    return prompts, shared, prefix


@torch.no_grad()
def answer(model, tokenizer, chunk: str, questions: list[str], *, max_new_tokens: int = 32, top_k: int = TOP_K, batch_size: int = 8) -> list[tuple[list[int], Teacher]]:
    """The teacher's own greedy answers to `questions` with `chunk` in its prompt, and its top-k
    distribution at every answer token (the distributions it answered from: no second pass).

    Answers end with the end-of-turn token, as a reply in a chat example does.
    """
    prompts, shared, prefix = _read(model, tokenizer, chunk, questions)
    out = []
    for start in range(0, len(questions), batch_size):
        rows = [p[shared:] for p in prompts[start : start + batch_size]]
        out += _greedy(model, prefix, shared, rows, tokenizer.eos_token_id, max_new_tokens, top_k)
    return out


def _greedy(model, prefix, shared: int, rows: list[list[int]], eos: int, max_new_tokens: int, top_k: int) -> list[tuple[list[int], Teacher]]:
    """Greedy decoding of right-padded rows after a cached prefix (pads masked out, positions per row)."""
    device, n = model.device, len(rows)
    logits, mask, cache = _after_prefix(model, prefix, shared, rows)
    lengths = torch.tensor([shared + len(row) for row in rows], device=device)
    step_logits = logits[torch.arange(n), lengths - shared - 1]
    tokens: list[list[int]] = [[] for _ in rows]
    tops: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in rows]
    done = torch.zeros(n, dtype=torch.bool, device=device)
    for t in range(max_new_tokens):
        logp = F.log_softmax(step_logits.float(), dim=-1)
        top = logp.topk(top_k, dim=-1)
        nxt = top.indices[:, 0]
        for r in range(n):
            if not done[r]:
                tokens[r].append(int(nxt[r]))
                tops[r].append((top.indices[r].cpu(), (top.values[r] - top.values[r].logsumexp(-1)).cpu()))
        done |= nxt == eos
        if done.all() or t == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones(n, 1, dtype=torch.long, device=device)], dim=1)
        step_logits = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=(lengths + t)[:, None], use_cache=True, **cache_kwarg(model, cache)).logits[:, -1]
    return [(toks, Teacher(torch.stack([i for i, _ in top]), torch.stack([v for _, v in top]))) for toks, top in zip(tokens, tops)]


def _continue(model, prefix, shared: int, rows: list[list[int]], replies: list[int], top_k: int) -> list[Teacher]:
    """Run `rows` (right-padded) after the cached prefix; top-k log-probs predicting each reply token."""
    logits, _, _ = _after_prefix(model, prefix, shared, rows)
    out = []
    for r, (row, n) in enumerate(zip(rows, replies)):
        # position p predicts token p+1: the reply's n tokens are predicted from positions len-n-1 .. len-2
        logp = F.log_softmax(logits[r, len(row) - n - 1 : len(row) - 1].float(), dim=-1)
        top = logp.topk(top_k, dim=-1)
        out.append(Teacher(top.indices.cpu(), (top.values - top.values.logsumexp(-1, keepdim=True)).cpu()))
    return out


def _after_prefix(model, prefix, shared: int, rows: list[list[int]]):
    """Run right-padded `rows` after a copy of the prefix's cache (pads masked out); (logits, mask, cache)."""
    device, width = model.device, max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    mask = torch.zeros(len(rows), shared + width, dtype=torch.long, device=device)
    mask[:, :shared] = 1
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row, device=device)
        mask[r, shared : shared + len(row)] = 1
    cache = copy.deepcopy(prefix)
    cache.batch_repeat_interleave(len(rows))
    positions = torch.arange(shared, shared + width, device=device).expand(len(rows), -1)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **cache_kwarg(model, cache)).logits
    return logits, mask, cache


def distillation_loss(logits: torch.Tensor, indices: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(teacher ‖ student) on the teacher's top-k tokens.

    `logits` are the student's at the labelled positions (positions, vocab); the student's log-probs are
    over the whole vocabulary, so mass it puts elsewhere is penalised too.
    """
    student = F.log_softmax(logits.float(), dim=-1).gather(-1, indices)
    teacher = logprobs.exp()
    return (teacher * (logprobs - student)).sum(-1).mean()
