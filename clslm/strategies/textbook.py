"""Training text made from a document: chat turns whose replies carry the document, loss on replies only.

A model that only reads a document learns to continue it, not to answer questions about it. So every
sentence is also taught as the reply to questions about it: a question about the document's subject,
questions made by masking the sentence's answer spans (questions.py), and, where it has too few of
those, cue prompts made of a few of its own words (what a question shares with its answer).
"""

from __future__ import annotations

import itertools
import math
import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch

from ..documents import Document, split_sentences
from ..generation import chat_prompt
from .context_distillation import distillation_loss
from .packing import attention_mask_for
from .questions import NOT_NAMES, questions_for


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # -100 where no loss is taken
    user: str = ""  # the question of a chat example ('' for raw text)
    teacher: Any = None  # context_distillation.Teacher for the labelled positions, when distilling

    @property
    def reply(self) -> list[int]:
        """The labelled tokens (a chat example's reply)."""
        return [t for t in self.labels if t != -100]


_CAPITALISED = re.compile(r"\b[A-Z][\w'’-]+(?:[ \t]+(?:of|the|de|van|von|and|on|la|le)?[ \t]*[A-Z][\w'’-]+)*")  # a name never crosses a line
_HEADING = re.compile(r"^#{1,6}\s")


def subject(text: str) -> str:
    """The document's most frequent proper name (a stand-in for its title)."""
    names = [n for n in _CAPITALISED.findall(text) if n not in NOT_NAMES]
    multi = [n for n in names if " " in n]
    pool = Counter(multi).most_common(1) or Counter(names).most_common(1)
    name = pool[0][0] if pool else "the document"
    return "the " + name[4:] if name.startswith("The ") else name


def content_words(sentence: str) -> list[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    words = re.findall(r"[A-Za-z][\w'’-]*", sentence)
    return [w for w in words if w.lower() not in ENGLISH_STOP_WORDS and len(w) > 2]


def cues(sentence: str, count: int, rng: random.Random, frequency: Counter | None = None) -> list[list[str]]:
    """`count` small random subsets of the sentence's content words, kept in sentence order.

    A question shares a few words with the sentence that answers it, never all of them: teaching the
    sentence as the reply to partial cues makes any such overlap recall it. Words rare in the rest of
    the document tell sentences apart, so they are drawn more often.
    """
    words = content_words(sentence)
    if len(words) < 2:
        return []
    weights = [1.0 / max(1, frequency[w.lower()]) if frequency else 1.0 for w in words]
    out = []
    for _ in range(count):
        k = rng.randint(2, min(4, len(words)))
        picked: set[int] = set()
        while len(picked) < k:
            picked.add(rng.choices(range(len(words)), weights)[0])
        out.append([words[i] for i in sorted(picked)])
    return out


_PRONOUN_START = re.compile(r"^(It|Its|They|Their|He|His|She|Her)\b")


def resolve_pronoun(sentence: str, topic: str) -> str:
    """'It rises 41 metres' → 'The Kessenbrock Light rises 41 metres' (the subject, not a bare pronoun)."""
    match = _PRONOUN_START.match(sentence)
    if not match or topic == "the document":
        return sentence
    name = topic[0].upper() + topic[1:]
    possessive = match.group(1) in ("Its", "Their", "His", "Her")
    return (f"{name}'s" if possessive else name) + sentence[match.end() :]


PIECE_PROMPT = "Tell me about "  # the question a piece of the document (not one sentence) answers


def body(text: str) -> str:
    """The text without its markdown heading lines: a heading names a section (the router keys it), it is
    not a fact to recite — taught as a reply, "## Configuring bramblesync" became the answer to questions."""
    kept = [line for line in text.splitlines() if not _HEADING.match(line)]
    return "\n".join(kept).strip() or text.strip()


def turns(document: Document, tokenizer, *, max_tokens: int, questions_per_sentence: int, seed: int = 0) -> list[tuple[str, str]]:
    """(user, reply) pairs: the document in pieces, each sentence, and cue prompts answered by it."""
    text = body(document.text)
    sentences = split_sentences(text) or [text]
    topic = subject(text)
    rng = random.Random(seed)
    pairs = [(f"{PIECE_PROMPT}{topic}.", piece) for piece in _pieces(sentences, tokenizer, max_tokens)]
    sentences = [resolve_pronoun(s, topic) for s in sentences]
    frequency = Counter(w.lower() for s in sentences for w in set(content_words(s)))
    for sentence in sentences:
        pairs.append((f"What do you know about {topic}?", sentence))
        masked = questions_for(sentence, topic)
        masked = rng.sample(masked, min(len(masked), questions_per_sentence))
        pairs += [(question, sentence) for question in masked]
        extra = cues(sentence, questions_per_sentence - len(masked), rng, frequency)
        pairs += [(f"About {topic}: {' '.join(cue)}?", sentence) for cue in extra]
    return pairs


def _pieces(sentences: list[str], tokenizer, max_tokens: int) -> list[str]:
    """Consecutive sentences joined into pieces of at most ~max_tokens."""
    chunks, current = [], ""
    for sentence in sentences:
        candidate = f"{current} {sentence}".strip()
        if current and len(tokenizer(candidate, add_special_tokens=False)["input_ids"]) > max_tokens:
            chunks.append(current)
            candidate = sentence
        current = candidate
    return chunks + [current]


def build_examples(document: Document, tokenizer, *, fmt: str = "chat", max_tokens: int = 128, questions_per_sentence: int = 2) -> list[Example]:
    """Examples to learn `document` from: chat turns (format 'chat') or raw text pieces ('raw')."""
    if fmt == "raw":
        sentences = split_sentences(document.text) or [document.text]
        ids_list = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in _pieces(sentences, tokenizer, max_tokens)]
        return [Example(ids, list(ids)) for ids in ids_list if len(ids) > 1]
    examples = []
    for user, reply in turns(document, tokenizer, max_tokens=max_tokens, questions_per_sentence=questions_per_sentence):
        prompt_ids = tokenizer(chat_prompt(tokenizer, user), add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(chat_prompt(tokenizer, user, reply=reply), add_special_tokens=False)["input_ids"]
        n = len(prompt_ids) if full_ids[: len(prompt_ids)] == prompt_ids else 0
        examples.append(Example(full_ids, [-100] * n + full_ids[n:], user=user))
    return examples


def reply_example(tokenizer, user: str, reply: list[int], teacher: Any = None) -> Example:
    """A chat example from a question and the reply's token ids (e.g. the teacher's own answer)."""
    prompt = tokenizer(chat_prompt(tokenizer, user), add_special_tokens=False)["input_ids"]
    return Example(prompt + reply, [-100] * len(prompt) + reply, user=user, teacher=teacher)




def sections(text: str, tokenizer, max_tokens: int) -> list[str]:
    """The document cut into parts of at most about max_tokens, at paragraph (else sentence) bounds.

    Each markdown section is cut on its own into parts of near-equal size, and its headings are repeated
    above each part, so a part says what it is about (the teacher reads it alone, the router keys it).
    """
    def size(t: str) -> int:
        return len(tokenizer(t, add_special_tokens=False)["input_ids"])

    parts = []
    for headings, paragraphs in _markdown_sections(text):
        units = [u for p in paragraphs for u in ([p] if size(p) <= max_tokens else _pieces(split_sentences(p), tokenizer, max_tokens))]
        for group in _balanced(units, [size(u) for u in units], max_tokens):
            parts.append("\n\n".join(headings + group))
    return parts or [text]


def _balanced(units: list[str], sizes: list[int], max_tokens: int) -> list[list[str]]:
    """Consecutive units in the fewest groups of about max_tokens, cut where the groups come out nearest equal."""
    total = sum(sizes)
    n = max(1, math.ceil(total / max_tokens))
    ends = list(itertools.accumulate(sizes))
    cuts = sorted({min(range(len(units)), key=lambda i: abs(ends[i] - total * k / n)) + 1 for k in range(1, n)} | {len(units)})
    return [units[a:b] for a, b in zip([0] + cuts, cuts) if a < b]


def _markdown_sections(text: str) -> list[tuple[list[str], list[str]]]:
    """(headings in force, paragraphs) per markdown section; a text without headings is one section."""
    out: list[tuple[list[str], list[str]]] = [([], [])]
    for paragraph in (p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()):
        if not _HEADING.match(paragraph):
            out[-1][1].append(paragraph)
            continue
        line = paragraph.splitlines()[0]
        level = len(line) - len(line.lstrip("#"))
        headings = [h for h in out[-1][0] if len(h) - len(h.lstrip("#")) < level] + [line]
        out.append((headings, [paragraph.split("\n", 1)[1]] if "\n" in paragraph else []))
    return [(h, p) for h, p in out if p]


def batches(examples: list[Example], batch_size: int, pad_id: int) -> list[dict[str, torch.Tensor]]:
    """Right-padded batches of similar lengths (the composition stays fixed across epochs).

    With teachers, a batch also holds their top-k targets in the order the labelled positions take in
    the batch (row by row), as `reply_loss` gathers them.
    """
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    out = []
    for start in range(0, len(order), batch_size):
        group = [examples[i] for i in order[start : start + batch_size]]
        width = max(len(e.input_ids) for e in group)
        ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        labels = torch.full((len(group), width), -100, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, e in enumerate(group):
            n = len(e.input_ids)
            ids[row, :n], labels[row, :n], mask[row, :n] = torch.tensor(e.input_ids), torch.tensor(e.labels), 1
        batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
        if all(e.teacher is not None for e in group):
            batch["teacher_indices"] = torch.cat([e.teacher.indices for e in group])
            batch["teacher_logprobs"] = torch.cat([e.teacher.logprobs for e in group])
        out.append(batch)
    return out


def training_vocab(examples: list[Example], common: int, size: int) -> torch.Tensor:
    """Sorted token ids a training softmax may run over: every id of the examples plus the `common` lowest
    ids (byte-level BPE numbers its merges about in order of frequency), so frequent words stay competitors.
    The LM head costs as much per reply token as several decoder layers; over a few thousand ids it is cheap."""
    ids = {t for e in examples for t in e.input_ids} | set(range(min(common, size)))
    return torch.tensor(sorted(i for i in ids if i < size))


def reply_loss(model, batch: dict[str, torch.Tensor], hard: float = 1.0, head_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Loss over the labelled positions, running the LM head only there (the vocabulary projection costs
    as much as several decoder layers; prompt positions need none).

    Next-token cross-entropy; with teacher targets in the batch, KL(teacher ‖ student) plus `hard` times
    the cross-entropy. With `vocab` in the batch (training_vocab), the softmax runs over those ids only.
    With `head_weight` (training.bfloat16_head) the logits and the next-token softmax stay in its dtype and
    only the per-token losses are averaged in float32: the [positions × vocabulary] logits are the largest
    tensors of a step, and on a CPU their float32 copy and softmax took about half of it.
    """
    mask = attention_mask_for(model, batch["attention_mask"], model.dtype)
    hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=mask, position_ids=batch.get("position_ids"), use_cache=False).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    head, vocab = model.get_output_embeddings(), batch.get("vocab")
    weight, bias, target = head.weight if head_weight is None else head_weight, head.bias, targets[keep]
    if vocab is not None:  # the softmax over `vocab` only (sorted ids holding every target)
        weight, bias, target = weight[vocab], None if bias is None else bias[vocab], torch.searchsorted(vocab, target)
    rows = hidden[:, :-1][keep]
    logits = torch.nn.functional.linear(rows.to(weight.dtype), weight, bias)
    teacher = "teacher_indices" in batch
    if head_weight is None or teacher:
        logits = logits.float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    with torch.autocast(logits.device.type, enabled=False):  # autocast would take the softmax in float32 again
        cross_entropy = torch.nn.functional.cross_entropy(logits, target, reduction="none").float().mean()
    if not teacher:
        return cross_entropy
    kl = distillation_loss(logits, batch["teacher_indices"], batch["teacher_logprobs"])
    return kl + hard * cross_entropy if hard else kl
