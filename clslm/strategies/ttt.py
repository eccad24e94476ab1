"""ttt — TTT-E2E with sparse-memory finetuning.

The last decoder layers get a Dual-MLP: the frozen MLP plus, per learned part of a document (its
markdown sections, cut to at most `chunk_tokens`), a trainable copy of a few of its neurons (rows of
gate/up, columns of down), blended in by alpha:

    y = mlp(x) + Σ_part alpha_part · (mlp'_part(x) − mlp(x))        restricted to the part's neurons

The copies start equal to the frozen neurons, so the model starts exactly as the base model and
gradients flow through every copied weight. Which neurons a part may change is chosen by TF-IDF
gating (gating.py): neurons the part uses much and general text little, more for a longer part. The
router wakes the part a question is about. Only the copies' deltas are saved: state grows with what was
learned, never with the model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import ClassVar, Literal

import torch
from torch import nn

from ..documents import Document
from ..generation import sliding_window
from .anatomy import decoder_layers, gated_mlp, hidden_before, last_layers, replay_prefix
from .base import Adapter, LearnReport, Merged, Step, StepCallback, Strategy, noop
from .config import StrategyConfig, option
from .forgetting import reported_counts, share
from .neuron_patch import DualMLP, NeuronPatch
from .packing import attention_mask_for, pack
from .router import Routed, Router, threshold_option, top_option
from .gating import cached_idf, neuron_activations, select_neurons
from .context_distillation import answer, teach
from .textbook import PIECE_PROMPT, Example, batches, build_examples, reply_example, reply_loss, sections, training_vocab
from .training import PhaseClock, bfloat16_head, descend, mean_loss, precision_autocast
from .ttt_state import as_stored, check_patches, from_saved, neuron_axis, to_saved

PREFIX = "ttt_"
REPORT_BATCHES = 4  # batches the reported loss before/after is measured on (all of them cost a tenth of a learn)


@dataclass
class TTTConfig(StrategyConfig):
    """ttt hyperparameters (-o KEY=VALUE)."""

    lr: float = option(2e-3, "AdamW learning rate on the neuron copies", above=0, max=1)
    epochs: int = option(6, "passes over the training text", min=1)
    layers: float = option(0.125, "fraction of decoder layers (the last ones) that get a Dual-MLP", above=0, max=1)
    neurons: int = option(0, "neurons per layer a part may change (TF-IDF gating): at most this many (0 = no cap: all, or neurons_per_token's count)", min=0)
    neurons_per_token: float = option(0.7, "a part may change this many neurons per layer per token it holds (at least 64; 0 = `neurons` exactly)", min=0)
    fire_fraction: float = option(0.02, 'a neuron "fires" on a token when in this top share of its layer', above=0, max=1)
    alpha: float = option(1.0, "blend of the first document's trainable copy", above=0, max=1)
    alpha_decay: float = option(1.0, "each later document is blended with alpha · alpha_decay^n", above=0, max=1)
    format: Literal["chat", "raw"] = option("chat", "training text: chat turns (reply = document piece) or raw text")
    max_tokens: int = option(96, "longest document piece in one training example", min=8)
    questions: int = option(3, "cue prompts per sentence (0: sentences and pieces only)")
    batch_size: int = option(8, "training examples per step", min=1)
    weight_decay: float = option(0.0, "AdamW weight decay")
    max_grad_norm: float = option(1.0, "gradients are clipped to this norm")
    route_threshold: float = threshold_option("a document's copy acts only on questions whose router match (router.py) reaches this (0: always)")
    route_top: int = top_option(1, 1, "at most this many best-matching documents act at once")
    state_dtype: Literal["int8", "float16", "float32"] = option("float16", "how the copies' deltas are stored (float16 halves the state; int8, with a scale per neuron, quarters it)")
    objective: Literal["next-token", "distill"] = option("next-token", "predict the reply text, or also match the model reading the part (context distillation)")
    hard: float = option(0.5, "with distill: weight of the reply's next-token loss added to the KL", min=0)
    top_k: int = option(32, "with distill: teacher log-probabilities kept per reply token", min=1, max=1024)
    replies: Literal["document", "teacher", "both"] = option("both", "with distill: replies are the document's sentences, the teacher's own answers, or both")
    precision: Literal["auto", "float32", "bfloat16"] = option("auto", "arithmetic of the training passes: bfloat16 autocast (faster where the CPU or GPU multiplies bfloat16 natively; deltas and answers stay float32), float32, or auto (bfloat16 where native)")
    pack: bool = option(True, "run each training batch as one sequence: the chat header once, every example attending to it and to itself (the same loss as padded rows, about a quarter fewer tokens)")
    prefix_cache: bool = option(True, "run the frozen layers once per example, not at every step (same loss and gradients, fewer seconds)")
    beams: int = option(2, "beam width when answering a question a part's patch acts on (1: greedy; the patch's most likely recitation is often not greedy's)", min=1, max=16)
    vocab: int = option(0, "the training softmax runs over the part's own tokens plus this many common ones (0: the whole vocabulary; ignored when distilling)", min=0)
    chunk_tokens: int = option(768, "a document is learned in parts (its markdown sections, cut to at most about this many tokens), each routed on its own (0: whole; else >= 64)")

    # -o preset=NAME: recipes to compare with the defaults (docs/benchmarks.md has them side by side)
    PRESETS: ClassVar[dict[str, dict[str, str]]] = {
        # ttt v1 (2026-12-02): next-token loss on the whole document as one routed unit
        "v1": {"layers": "0.25", "neurons": "320", "neurons_per_token": "0", "chunk_tokens": "0", "beams": "1"},
        # the seed project: lr 1e-5, one pass over 33-token windows of raw text, no router
        "seed": {"lr": "1e-5", "epochs": "1", "format": "raw", "max_tokens": "33", "layers": "0.25", "neurons": "0", "neurons_per_token": "0", "chunk_tokens": "0", "route_threshold": "0", "beams": "1"},
        # the naive recipe of issue 5: every copied neuron, 20 epochs of the document and its sentences, no router
        "naive": {"lr": "1e-4", "epochs": "20", "questions": "0", "layers": "0.25", "neurons": "0", "neurons_per_token": "0", "chunk_tokens": "0", "route_threshold": "0", "beams": "1"},
    }

    def __post_init__(self):
        super().__post_init__()
        self.check(self.chunk_tokens == 0 or self.chunk_tokens >= 64, "chunk_tokens must be 0 (whole document) or >= 64")


class TTT(Routed, Strategy):
    """Dual-MLP on the last layers, trained on the document; TF-IDF-gated sparse neuron deltas."""

    name = "ttt"
    Config = TTTConfig
    prefix = PREFIX
    paper = "2512.23675"
    summary = "gradient descent on the document into sparse, TF-IDF-gated neuron copies of the last MLPs"
    test_options = {"epochs": "3", "neurons": "8", "max_tokens": "32"}
    learns_by_gradient = True

    def attach(self) -> None:
        self.layer_ids = last_layers(self.model, self.config.layers)
        blocks = decoder_layers(self.model)
        for i in self.layer_ids:
            blocks[i].mlp = DualMLP(gated_mlp(blocks[i]))
        self._idf: dict[int, torch.Tensor] | None = None
        self.router = Router(self.config)  # one unit per learned part

    # ---- parts ---------------------------------------------------------------------------------
    def dual_mlps(self) -> dict[int, DualMLP]:
        blocks = decoder_layers(self.model)
        return {i: blocks[i].mlp for i in self.layer_ids}

    @property
    def documents_learned(self) -> int:
        return len(next(iter(self.dual_mlps().values())).ttt_patches)

    def idf(self) -> dict[int, torch.Tensor]:
        if self._idf is None:
            with self.disabled():
                self._idf = cached_idf(self.model, self.tokenizer, self.layer_ids, self.config.fire_fraction, self.context)
        return self._idf

    def _add_patches(self, document: Document) -> list[NeuronPatch]:
        idf = self.idf()
        with self.disabled():
            acts = neuron_activations(self.model, self.tokenizer, [document.text], self.layer_ids, chat=False)
        alpha = self.config.alpha * self.config.alpha_decay ** self.documents_learned
        patches, count = [], self._neuron_count(document)
        for i, dual in self.dual_mlps().items():
            index = select_neurons(acts[i], idf[i], count, self.config.fire_fraction)
            weight = dual.mlp.down_proj.weight
            patch = NeuronPatch(index.to(weight.device), weight.shape[0], alpha, weight.dtype).to(weight.device)
            dual.ttt_patches.append(patch)
            patches.append(patch)
        return patches

    def _neuron_count(self, part: Document) -> int:
        """Neurons per layer a part may change: fixed, or growing with the part's length."""
        c = self.config
        if c.neurons_per_token <= 0:
            return c.neurons
        tokens = len(self.tokenizer(part.text, add_special_tokens=False)["input_ids"])
        count = max(64, round(c.neurons_per_token * tokens))
        return min(count, c.neurons) if c.neurons else count

    # ---- learning ------------------------------------------------------------------------------
    def learn(self, document: Document, on_step: StepCallback = noop) -> LearnReport:
        """Learn each part of the document (chunk_tokens) into its own routed neuron patches."""
        start_time = time.perf_counter()
        torch.manual_seed(self.config.seed)
        c = self.config
        parts = sections(document.text, self.tokenizer, c.chunk_tokens) if c.chunk_tokens else [document.text]
        clock = PhaseClock()
        with clock("examples"):
            texts = [build_examples(Document(document.name, part), self.tokenizer, fmt=c.format, max_tokens=c.max_tokens, questions_per_sentence=c.questions) for part in parts]
        total = sum(math.ceil(len(examples) / c.batch_size) for examples in texts) * c.epochs
        steps, skipped, before, after, neurons = 0, 0, [], [], 0
        head = bfloat16_head(self.model, c.precision)
        for part, examples in zip(parts, texts):  # one part at a time: memory stays that of one part
            data, patches = self._prepare(Document(document.name, part), examples, clock)
            neurons += sum(p.index.numel() for p in patches)
            progress = partial(_offset_step, on_step=on_step, done=steps, total=max(total, steps + len(data) * c.epochs))
            # With routing, a part's copy answers alone, so it is trained with the others switched off.
            alone = {self.documents_learned - 1} if c.route_threshold > 0 else set(range(self.documents_learned))
            with self._only(alone):
                loss_fn, report = (partial(self._loss, start=self.layer_ids[0], head=head, full=full) for full in (False, True))
                with clock("loss before/after"):
                    before.append(mean_loss(data, report, at_most=REPORT_BATCHES))
                n, bad = descend(
                    self.name, [p for patch in patches for p in patch.parameters()], data, loss_fn,
                    epochs=c.epochs, lr=c.lr, weight_decay=c.weight_decay, max_grad_norm=c.max_grad_norm, seed=c.seed, on_step=progress, clock=clock,
                )  # fmt: skip
                self._round_to_state_dtype(patches)
                with clock("loss before/after"):
                    after.append(mean_loss(data, report, at_most=REPORT_BATCHES))
            steps, skipped = steps + n, skipped + bad
        tokens = len(self.tokenizer(document.text, add_special_tokens=False)["input_ids"])
        return LearnReport(
            name=document.name,
            sha256=document.sha256,
            tokens=tokens,
            loss_before=_mean(before),
            loss_after=_mean(after),
            seconds=round(time.perf_counter() - start_time, 2),
            extra={
                "parts": len(parts),
                "neurons": neurons,
                "steps": steps,
                "skipped_steps": skipped,
                "phase_seconds": clock.seconds(),
            },
        )

    def _prepare(self, part: Document, examples: list[Example], clock: PhaseClock) -> tuple[list[dict], list[NeuronPatch]]:
        """A part's training batches (with teacher targets and cached frozen-layer states) and its new patches."""
        c = self.config
        if c.objective == "distill" and c.format == "chat":
            examples = self._distilled(part, [e for e in examples if e.user and e.reply], clock)
        data = batches(examples, c.batch_size, self.tokenizer.pad_token_id)
        if c.pack:
            window = getattr(self.model.config, "sliding_window", None) if sliding_window(self.model) else None
            data = [pack(b, window) for b in data]
        data = [{k: v.to(self.model.device) for k, v in b.items()} for b in data]
        if c.vocab and c.objective != "distill":
            vocab = training_vocab(examples, c.vocab, self.model.get_output_embeddings().weight.shape[0]).to(self.model.device)
            for b in data:
                b["vocab"] = vocab
        with clock("frozen layers"), self._precision():
            for b in data:
                mask = attention_mask_for(self.model, b["attention_mask"], self.model.dtype)
                b["hidden"] = hidden_before(self.model, self.layer_ids[0], b["input_ids"], mask, b.get("position_ids")) if c.prefix_cache else None
        with clock("gating"):
            patches = self._add_patches(part)
        self.router.add(part.text)
        return data, patches

    def _distilled(self, part: Document, examples: list[Example], clock: PhaseClock) -> list[Example]:
        """The examples with the teacher's targets on their document replies, and/or the teacher's own answers
        to their questions as new examples (`replies`)."""
        c, own = self.config, []
        with self.disabled(), clock("teacher"):
            if c.replies in ("teacher", "both"):
                questions = list(dict.fromkeys(e.user for e in examples if not e.user.startswith(PIECE_PROMPT)))
                answers = answer(self.model, self.tokenizer, part.text, questions, top_k=c.top_k)
                own = [reply_example(self.tokenizer, q, reply, teacher) for q, (reply, teacher) in zip(questions, answers) if reply]
            if c.replies == "teacher":
                return own
            for example, teacher in zip(examples, teach(self.model, self.tokenizer, part.text, [(e.user, e.reply) for e in examples], top_k=c.top_k)):
                example.teacher = teacher
        return examples + own

    def _round_to_state_dtype(self, patches: list[NeuronPatch]) -> None:
        """Round the deltas as they will be saved, so answers are the same before and after a reload."""
        with torch.no_grad():
            for patch in patches:
                for part, p in patch.named_parameters():
                    p.copy_(as_stored(p, self.config.state_dtype, neuron_axis(part)))

    def _loss(self, batch: dict, start: int, head: torch.Tensor | None = None, full: bool = False) -> torch.Tensor:
        """The training loss of a batch (`full`: over the whole vocabulary, as the reported loss is)."""
        batch = {k: v for k, v in batch.items() if k != "vocab"} if full else batch
        with self._precision():
            if batch["hidden"] is None:
                return reply_loss(self.model, batch, self.config.hard, head)
            with replay_prefix(self.model, start, batch["hidden"]):
                return reply_loss(self.model, batch, self.config.hard, head)

    def _precision(self):
        return precision_autocast(self.config.precision, self.model.device)

    def beams(self, question: str) -> int:
        """`beams` where a part's patch acts; greedy where none does (the model is the base model there)."""
        return self.config.beams if self.active_documents(question) else 1

    # ---- routing -------------------------------------------------------------------------------
    def active_documents(self, question: str) -> list[int]:
        """Parts whose deltas act on `question`: the best router matches above the threshold (0: every part)."""
        if self.config.route_threshold <= 0:
            return list(range(self.documents_learned))
        return self.router.ranked(question)[: self.config.route_top]

    def route_to(self, active: list[int]):
        return self._only(set(active))

    @contextmanager
    def _only(self, active: set[int]) -> Iterator[None]:
        """Only the copies of the documents in `active` act inside the block."""
        patches = [(j, patch) for dual in self.dual_mlps().values() for j, patch in enumerate(dual.ttt_patches)]
        saved = [patch.route for _, patch in patches]  # restored as they were: blocks may nest
        for j, patch in patches:
            patch.route = 1.0 if j in active else 0.0
        try:
            yield
        finally:
            for (_, patch), route in zip(patches, saved):
                patch.route = route

    # ---- state ---------------------------------------------------------------------------------
    def extra_state(self) -> dict:
        return {"keys": self.router.to_json()} if len(self.router) else {}

    def load_extra_state(self, state: dict) -> None:
        self.router.load(state.get("keys", []))

    check_state_dict = check_patches  # the saved patches against this model, before load_state_dict
    loadable = staticmethod(from_saved)  # int8 deltas back to float32

    def state_dict(self) -> dict[str, torch.Tensor]:
        return to_saved(super().state_dict(), self.config.state_dtype)

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Recreate each saved patch (its shape comes from the tensors), then load strictly."""
        blocks = decoder_layers(self.model)
        counts = {}
        for key in tensors:
            if ".ttt_patches." in key and key.endswith(".index"):
                layer = int(key.split(".layers.")[1].split(".")[0])
                counts[layer] = counts.get(layer, 0) + 1
        for layer, n in sorted(counts.items()):
            dual = blocks[layer].mlp
            weight = dual.mlp.down_proj.weight
            for j in range(n):
                base = key_prefix(self.model, dual) + f"ttt_patches.{j}."
                dual.ttt_patches.append(NeuronPatch(tensors[base + "index"], weight.shape[0], 1.0, weight.dtype).to(weight.device))
        super().load_state_dict(tensors)

    def forget(self, documents: list[dict], position: int) -> None:
        """Drop the document's parts: their neuron patches in every layer and their router keys."""
        parts = share(reported_counts(self.name, documents, "parts", self.documents_learned, default=1), position)
        for dual in self.dual_mlps().values():
            for j in reversed(parts):
                del dual.ttt_patches[j]
        if len(self.router):  # sessions from before routing have none
            self.router.remove(parts)

    # ---- export (ttt_export.py) ----------------------------------------------------------------------
    def export_merged(self) -> Merged:
        from .ttt_export import merged

        return merged(self)

    def export_adapter(self, rank: int) -> Adapter:
        from .ttt_export import adapter

        return adapter(self, rank)

    def describe(self) -> dict:
        return {"layers": self.layer_ids, "parts": self.documents_learned, "neurons": sum(p.index.numel() for d in self.dual_mlps().values() for p in d.ttt_patches)}


def _offset_step(step: Step, *, on_step: StepCallback, done: int, total: int) -> None:
    """A part's training step as a step of the whole document's learn."""
    on_step(Step(done + step.i, total, step.loss, step.phase))


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 4)


def key_prefix(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name + "."
    raise KeyError("module not in model")
