"""jitrl-full — learning that acts only while answering (after JitRL, arXiv 2601.18510), through the logits.

No weight changes: the model's forward pass is the base model's (a hook only records one layer's output),
and what was learned reaches the answer through a LogitsProcessor, which `disabled()` switches off. The
strategy keeps a store of (hidden state at one decoder layer, the token that followed) read off each
document. At every generated token the current hidden state is compared with the store; the next tokens
of close matches are rewarded in the logits (a kNN-LM-like modulation). jitrl-mvp (jitrl_mvp.py) is its
prompt-side counterpart.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor

from ..documents import Document, chunk_spans
from ..errors import InputError
from ..generation import chat_prompt
from ..state_files import need
from .anatomy import decoder_layers
from .base import LearnReport, Step, StepCallback, Strategy, noop, timed_report
from .config import StrategyConfig, option
from .forgetting import cannot, drop_front, reported_rows, share
from .gating import general_corpus

# Softmax temperature over cosine similarities: sharp enough that the closest states dominate, soft
# enough that several matches agreeing on one next token add up.
TEMPERATURE = 0.1
WINDOW, WINDOW_OVERLAP = 1024, 128  # documents are read in windows of this many tokens
KEYS, NEXT, CENTER, META = "jitrl_keys", "jitrl_next", "jitrl_center", "jitrl_meta"


@dataclass
class JitrlFullConfig(StrategyConfig):
    """jitrl-full options (-o KEY=VALUE)."""

    layer: float = option(0.75, "decoder layer whose output states are stored, as a share of depth (0 first, 1 last)", min=0, max=1)
    k: int = option(16, "nearest stored states looked at per generated token", min=1)
    threshold: float = option(0.8, "least cosine similarity (of centered states) for a stored state to count", min=-1, max=1)
    strength: float = option(20.0, "most logit bonus one step can give (all matches agreeing, similarity 1)", min=0)
    max_store: int = option(50_000, "most (state, next token) rows kept; the oldest go first", min=1)
    dim: int = option(0, "random projection of the states to this width (0: the model's width)", min=0)


class StoreReward(LogitsProcessor):
    """Adds the store's reward for the hidden state the layer hook saw last."""

    def __init__(self, strategy: "JitrlFull"):
        self.strategy = strategy

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        hidden = self.strategy.last_hidden()
        delta = None if hidden is None else self.strategy.modulation(hidden, scores.shape[-1])
        return scores if delta is None else scores + delta.to(scores.dtype)


class JitrlFull(Strategy):
    """A store of (hidden state, next token) pairs from the documents, rewarding matched next tokens."""

    name = "jitrl-full"
    Config = JitrlFullConfig
    paper = "2601.18510"
    summary = "stores the documents' hidden states with their next tokens; at each step rewards the next tokens of similar states"

    def attach(self) -> None:
        layers = decoder_layers(self.model)
        self.layer_index = round(self.config.layer * (len(layers) - 1))
        width = self.model.get_input_embeddings().embedding_dim
        self.config.check(self.config.dim < width, f"dim must be < the model's width {width} (0: no projection)")
        self.projection = self._projection(width)
        self.keys = torch.empty(0, self.config.dim or width, dtype=torch.float16)
        self.next_ids = torch.empty(0, dtype=torch.long)
        self.center: torch.Tensor | None = None  # made at the first learn, saved with the store
        self._search = None  # (keys in float32 on the model's device, next ids there), made at the first ask
        self.rows: list[int] | None = []  # rows in the store per document, in learn order (None: not saved)
        self._hidden = None
        # Records only: the layer's output is passed on unchanged, so the forward is the base model's.
        layers[self.layer_index].register_forward_hook(self._capture)

    def _capture(self, module, args, output) -> None:
        self._hidden = (output[0] if isinstance(output, tuple) else output).detach()

    def _projection(self, width: int) -> torch.Tensor | None:
        if not self.config.dim:
            return None
        generator = torch.Generator().manual_seed(self.config.seed)
        return torch.randn(width, self.config.dim, generator=generator) / math.sqrt(self.config.dim)

    def key(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states [..., width] as store keys: direction minus the center, projected (with dim),
        L2-normalised, float32."""
        h = torch.nn.functional.normalize(hidden.float(), dim=-1)
        if self.center is not None:
            h = h - self.center.to(h.device)
        if self.projection is not None:
            h = h @ self.projection.to(h.device)
        return torch.nn.functional.normalize(h, dim=-1)

    def last_hidden(self) -> torch.Tensor | None:
        """The layer's output at the last position of the latest forward pass, [batch, width]."""
        return None if self._hidden is None else self._hidden[:, -1]

    # ---- learning ------------------------------------------------------------------------------
    def learn(self, document: Document, on_step: StepCallback = noop) -> LearnReport:
        start = time.perf_counter()
        if self.center is None:
            self.center = self._general_center()
        # The tokenizer's own framing of plain text (BOS for Llama/Gemma): the states the model expects.
        ids = self.tokenizer(document.text, return_tensors="pt")["input_ids"][0]
        spans = chunk_spans(len(ids), WINDOW, WINDOW_OVERLAP)
        keys, nexts = [], []
        for step, (s, e) in enumerate(spans, 1):
            hidden = self._read(ids[s:e])
            lo = s if s == 0 else s + WINDOW_OVERLAP  # positions before lo were stored from the previous window
            hi = min(e, len(ids) - 1)  # the last token has no next token
            keys.append(self.key(hidden[lo - s : hi - s]).half().cpu())
            nexts.append(ids[lo + 1 : hi + 1])
            on_step(Step(step, len(spans), phase="read"))
        self._hidden = None
        added = sum(len(n) for n in nexts)
        dropped = self._append(torch.cat(keys), torch.cat(nexts))
        if self.rows is not None:
            self.rows = drop_front([*self.rows, added], dropped)
        return timed_report(document, self.tokenizer, start, rows=added, store_rows=len(self.next_ids), dropped=dropped, layer=self.layer_index)

    def _general_center(self) -> torch.Tensor:
        """Mean direction of the layer's states on everyday chat prompts (clslm's general corpus).

        A layer's states share a large common direction: unrelated ones are ~0.7 cosine-similar on
        SmolLM2. Measured from that mean, states of document questions and of general questions
        separate far better, so the threshold can keep general answers untouched.
        """
        states = []
        for line in general_corpus():
            ids = self.tokenizer(chat_prompt(self.tokenizer, line), add_special_tokens=False, return_tensors="pt")["input_ids"][0]
            states.append(torch.nn.functional.normalize(self._read(ids).float(), dim=-1).cpu())
        return torch.cat(states).mean(0)

    def _read(self, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.model(input_ids=ids[None].to(self.model.device), use_cache=False, logits_to_keep=1)
        return self._hidden[0]

    def _append(self, keys: torch.Tensor, nexts: torch.Tensor) -> int:
        """Add rows to the store, keeping the newest max_store; returns how many were dropped."""
        keys, nexts = torch.cat([self.keys, keys]), torch.cat([self.next_ids, nexts])
        dropped = max(0, len(nexts) - self.config.max_store)
        self.keys, self.next_ids = keys[dropped:].contiguous(), nexts[dropped:].contiguous()
        self._search = None
        return dropped

    # ---- answering -----------------------------------------------------------------------------
    def logits_processors(self, question: str) -> list:
        return [StoreReward(self)] if len(self.next_ids) and self.config.strength > 0 else []

    def _store(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._search is None:
            device = self.model.device
            self._search = (self.keys.to(device, torch.float32), self.next_ids.to(device))
        return self._search

    def modulation(self, hidden: torch.Tensor, vocab: int) -> torch.Tensor | None:
        """strength · reward per next token for hidden states [batch, width]; None when nothing matches.

        reward[v] = Σ over the top-k stored states with similarity ≥ threshold that were followed by v of
        softmax(similarity / TEMPERATURE) · similarity, so a step's rewards sum to at most 1.
        """
        keys, nexts = self._store()
        if not len(keys):
            return None
        sims = self.key(hidden) @ keys.T  # [batch, rows]: one matrix product per step
        top, index = sims.topk(min(self.config.k, len(keys)), dim=-1)
        keep = top >= self.config.threshold
        if not keep.any():
            return None
        weights = torch.softmax(top.masked_fill(~keep, -math.inf) / TEMPERATURE, dim=-1)
        weights = torch.where(keep, weights, 0.0)  # rows with no match are all NaN before this
        reward = torch.zeros(len(hidden), vocab, device=keys.device).scatter_add_(1, nexts[index], weights * top)
        return self.config.strength * reward

    # ---- state ---------------------------------------------------------------------------------
    def _meta(self) -> torch.Tensor:
        # The projection is made from the seed: a store is only valid with the same layer, width and seed.
        return torch.tensor([self.layer_index, self.keys.shape[1], self.config.seed if self.config.dim else 0])

    def state_dict(self) -> dict:
        if not len(self.next_ids):
            return {}
        return {KEYS: self.keys, NEXT: self.next_ids, CENTER: self.center, META: self._meta()}

    def check_state_dict(self, tensors: dict) -> None:
        """The store: keys [rows, width] (floating), next token ids [rows] within the vocabulary, center [width]."""
        keys, nexts, center = tensors.get(KEYS), tensors.get(NEXT), tensors.get(CENTER)
        if keys is None or nexts is None or center is None:
            return  # load_state_dict names what is missing
        width, vocab = self.keys.shape[1], self.model.get_output_embeddings().weight.shape[0]
        need(keys.is_floating_point() and keys.ndim == 2 and keys.shape[1] == width, f"{KEYS} should be floating-point [rows, {width}], not {keys.dtype} {list(keys.shape)}")
        need(not nexts.is_floating_point() and nexts.dtype != torch.bool, f"{NEXT} should hold integer token ids, not {nexts.dtype}")
        need(nexts.ndim == 1 and int(nexts.min()) >= 0 and int(nexts.max()) < vocab, f"{NEXT} should hold token ids in 0..{vocab - 1}")
        need(center.is_floating_point(), f"{CENTER} should be floating-point, not {center.dtype}")

    def load_state_dict(self, tensors: dict) -> None:
        if set(tensors) != {KEYS, NEXT, CENTER, META}:
            raise InputError(f"jitrl-full: saved state holds {sorted(tensors)}, not the store {sorted([KEYS, NEXT, CENTER, META])}")
        keys, nexts, center, meta = tensors[KEYS], tensors[NEXT], tensors[CENTER], tensors[META]
        if not torch.equal(meta.long(), self._meta()):
            raise InputError(
                f"jitrl-full: the store was read at layer {int(meta[0])} with width {int(meta[1])}; the options now give "
                f"layer {self.layer_index}, width {self.keys.shape[1]} (reset the session to change layer, dim or seed)"
            )
        if keys.ndim != 2 or nexts.shape != (keys.shape[0],) or center.shape != (self.model.get_input_embeddings().embedding_dim,):
            raise InputError("jitrl-full: saved store has inconsistent shapes")
        self.keys, self.next_ids, self.center, self._search = keys.half(), nexts.long(), center.float(), None
        if self.rows is not None and sum(self.rows) != len(self.next_ids):  # saved without rows per document
            self.rows = None

    def forget(self, documents: list[dict], position: int) -> None:
        """Drop the document's rows from the store."""
        rows = self.rows if self.rows is not None else reported_rows(self.name, documents)
        if len(rows) != len(documents) or sum(rows) != len(self.next_ids):
            raise cannot(self.name, "the store's rows do not add up to its documents'")
        span, keep = share(rows, position), torch.ones(len(self.next_ids), dtype=torch.bool)
        keep[span.start : span.stop] = False
        self.keys, self.next_ids, self._search = self.keys[keep].contiguous(), self.next_ids[keep].contiguous(), None
        self.rows = rows[:position] + rows[position + 1 :]

    def extra_state(self) -> dict:
        return {"rows": self.rows} if len(self.next_ids) and self.rows is not None else {}

    def load_extra_state(self, state: dict) -> None:
        rows = state.get("rows")
        if rows is not None and not (isinstance(rows, list) and all(type(n) is int and n >= 0 for n in rows)):
            raise ValueError("rows must be a list of whole numbers from 0")
        self.rows = rows

    def describe(self) -> dict:
        return {"rows": len(self.next_ids), "layer": self.layer_index, "width": self.keys.shape[1], "mb": round(self.keys.nbytes / 1e6, 2)}
