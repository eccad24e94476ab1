"""ttt-linear — Learn-Doc's test-time training, built as it describes itself: TTT-Linear fast weights.

Each of the last quarter of the decoder layers gets a fast-weight linear layer W (width × width, fp32
whatever the model's dtype) on a residual path beside its MLP (after TTT-Linear, arXiv 2407.04620: a
linear model as hidden state, trained by a self-supervised loss on the tokens it reads):

    y = mlp(x) + W · x            W starts at 0, so the model starts exactly as the base model

The inner loop trains only W, by masked-token prediction: in the training text made from the document
(textbook.py: chat turns whose replies carry the document), a share `mask_ratio` of the reply tokens is
replaced by a mask token and the model must predict them there, so the document's words have to come
from the fast weights instead of the context. A new mask is drawn for every batch in every epoch. An
anchor term λ·‖W − W₀‖² (W₀: the fast weights when this learn began) holds W near where it started,
which protects what earlier documents wrote and the base behaviour; gradients are clipped. A TF-IDF
router (router.py) switches W on only for questions that match a learned document.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..documents import Document
from ..errors import InputError
from ..state_files import is_int
from .anatomy import decoder_layers, gated_mlp, hidden_before, last_layers, replay_prefix
from .base import DeltaModule, LearnReport, StepCallback, Strategy, StrategyConfig, noop, option
from .forgetting import cannot
from .router import Routed, Router, threshold_option
from .textbook import batches, build_examples, reply_loss
from .training import descend, mean_loss

PREFIX = "fast_weight"
CHANGE = "fast_weight_change."  # + document.layer: one document's change to W at one layer (saved)


@dataclass
class TTTLinearConfig(StrategyConfig):
    """ttt-linear hyperparameters (-o KEY=VALUE)."""

    lr: float = option(1e-3, "AdamW learning rate on the fast weights", above=0, max=1)
    epochs: int = option(8, "passes over the training text (a fresh mask each time)", min=1)
    layers: float = option(0.25, "fraction of decoder layers (the last ones) with a fast-weight layer", above=0, max=1)
    mask_ratio: float = option(0.5, "share of reply tokens masked in the input and predicted", above=0, max=1)
    anchor: float = option(1.0, "λ of the anchor term λ·‖W − W₀‖² (summed over layers)", min=0)
    max_tokens: int = option(96, "longest document piece in one training example", min=8)
    questions: int = option(3, "cue prompts per sentence")
    batch_size: int = option(8, "training examples per step", min=1)
    max_grad_norm: float = option(1.0, "gradients are clipped to this norm", above=0)
    route_threshold: float = threshold_option("fast weights act only on questions whose router match (router.py) reaches this (0: always)")


class FastLinearMLP(nn.Module, DeltaModule):
    """The frozen MLP plus a fast-weight linear path: y = mlp(x) + W·x (W in fp32)."""

    def __init__(self, mlp: nn.Module, width: int):
        super().__init__()
        self.mlp = mlp
        self.fast_weight = nn.Parameter(torch.zeros(width, width, dtype=torch.float32, device=mlp.down_proj.weight.device))
        self.enabled = True
        self.route = True  # set per question by the router; not saved

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(x)
        if not (self.enabled and self.route):
            return y
        return y + (x.float() @ self.fast_weight.T).to(y.dtype)


def mask_replies(batch: dict, ratio: float, mask_id: int, generator: torch.Generator) -> dict:
    """The batch with `ratio` of its reply tokens replaced by `mask_id`; loss is kept only there."""
    reply = batch["labels"] != -100
    chosen = reply & (torch.rand(reply.shape, generator=generator) < ratio).to(reply.device)
    return {
        "input_ids": torch.where(chosen, mask_id, batch["input_ids"]),
        "labels": torch.where(chosen, batch["labels"], -100),
        "attention_mask": batch["attention_mask"],
    }


def mask_token_id(tokenizer, vocab: int) -> int:
    """The tokenizer's mask token, else another special token the model has an embedding for."""
    for token_id in (tokenizer.mask_token_id, tokenizer.unk_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None and 0 <= token_id < vocab:
            return int(token_id)
    return 0


class TTTLinear(Routed, Strategy):
    """TTT-Linear fast weights on the last layers, trained on the document by masked-token prediction."""

    name = "ttt-linear"
    Config = TTTLinearConfig
    prefix = PREFIX
    paper = "2407.04620"
    summary = "fp32 TTT-Linear fast weights beside the last MLPs, trained by masked-token prediction with an anchor term"
    test_options = {"epochs": "3", "max_tokens": "32"}
    learns_by_gradient = True

    def attach(self) -> None:
        self.layer_ids = last_layers(self.model, self.config.layers)
        width = self.model.get_input_embeddings().embedding_dim
        blocks = decoder_layers(self.model)
        for i in self.layer_ids:
            blocks[i].mlp = FastLinearMLP(gated_mlp(blocks[i]), width)
        self.router = Router(self.config)  # one unit per document
        self.anchors: list[torch.Tensor] = []
        # Each document's change to the fast weights, per layer; W is their sum (so one can be forgotten).
        # None: a session saved before they were kept (its W alone).
        self.changes: list[list[torch.Tensor]] | None = []

    def fast_layers(self) -> list[FastLinearMLP]:
        blocks = decoder_layers(self.model)
        return [blocks[i].mlp for i in self.layer_ids]

    def anchor_penalty(self) -> torch.Tensor:
        """λ · Σ_layers ‖W − W₀‖², W₀ the fast weights when the current learn began."""
        return self.config.anchor * sum(((m.fast_weight - w0) ** 2).sum() for m, w0 in zip(self.fast_layers(), self.anchors))

    # ---- learning ------------------------------------------------------------------------------
    def learn(self, document: Document, on_step: StepCallback = noop) -> LearnReport:
        started = time.perf_counter()
        c = self.config
        torch.manual_seed(c.seed)
        examples = build_examples(document, self.tokenizer, fmt="chat", max_tokens=c.max_tokens, questions_per_sentence=c.questions)
        data = [{k: v.to(self.model.device) for k, v in b.items()} for b in batches(examples, c.batch_size, self.tokenizer.pad_token_id)]
        self.router.add(document.text)
        self.anchors = [m.fast_weight.detach().clone() for m in self.fast_layers()]
        generator = torch.Generator().manual_seed(c.seed)
        mask_id = mask_token_id(self.tokenizer, self.model.get_input_embeddings().num_embeddings)

        def loss_fn(batch: dict, *, masked: bool = True) -> torch.Tensor:
            if masked:
                batch = mask_replies(batch, c.mask_ratio, mask_id, generator)
            return self._masked_loss(batch) + self.anchor_penalty()

        fixed = torch.Generator().manual_seed(c.seed + 1)  # the same masks before and after: comparable losses
        probe = [mask_replies(b, c.mask_ratio, mask_id, fixed) for b in data]
        loss_before = mean_loss(probe, lambda b: loss_fn(b, masked=False))
        params = [m.fast_weight for m in self.fast_layers()]
        steps, skipped = descend(
            self.name, params, data, loss_fn,
            epochs=c.epochs, lr=c.lr, weight_decay=0.0, max_grad_norm=c.max_grad_norm, seed=c.seed, on_step=on_step,
        )  # fmt: skip
        loss_after = mean_loss(probe, lambda b: loss_fn(b, masked=False))
        moved = sum(float((m.fast_weight - w0).norm()) for m, w0 in zip(self.fast_layers(), self.anchors))
        self._keep_change()
        return LearnReport(
            name=document.name,
            sha256=document.sha256,
            tokens=len(self.tokenizer(document.text, add_special_tokens=False)["input_ids"]),
            loss_before=loss_before,
            loss_after=loss_after,
            seconds=round(time.perf_counter() - started, 2),
            extra={"steps": steps, "skipped_steps": skipped, "layers": len(self.layer_ids), "weight_change": round(moved, 4)},
        )

    def _masked_loss(self, batch: dict) -> torch.Tensor:
        """Masked-token loss; the frozen layers below the fast weights run once, without gradients."""
        start = self.layer_ids[0]
        hidden = hidden_before(self.model, start, batch["input_ids"], batch["attention_mask"])
        if hidden is None:
            return reply_loss(self.model, batch)
        with replay_prefix(self.model, start, hidden):
            return reply_loss(self.model, batch)

    # ---- routing -------------------------------------------------------------------------------
    def matches(self, question: str) -> bool:
        return self.router.matches(question)

    def active_documents(self, question: str) -> list[int] | None:
        """Every document when the question matches one, else none (W is shared: all act, or none); None
        with routing off (route_threshold 0)."""
        if self.config.route_threshold <= 0:
            return None
        return list(range(len(self.router))) if self.matches(question) else []

    @contextmanager
    def route_to(self, active: list[int] | None) -> Iterator[None]:
        on = active is None or bool(active)
        for m in self.fast_layers():
            m.route = on
        try:
            yield
        finally:
            for m in self.fast_layers():
                m.route = True

    # ---- each document's change, forgetting one ---------------------------------------------------
    def _keep_change(self) -> None:
        """Record this learn's change to W, then set W to the sum of the changes (what a reload rebuilds)."""
        if self.changes is None:
            return
        self.changes.append([(m.fast_weight - w0).detach().clone() for m, w0 in zip(self.fast_layers(), self.anchors)])
        self._sum_changes()

    def _sum_changes(self) -> None:
        with torch.no_grad():
            for i, m in enumerate(self.fast_layers()):
                m.fast_weight.copy_(sum((c[i] for c in self.changes), torch.zeros_like(m.fast_weight)))

    def forget(self, documents: list[dict], position: int) -> None:
        """W loses the document's change and its router keys go. The other documents' changes were learned
        on top of it, so their answers may shift a little (W is shared, not routed per document)."""
        if self.changes is None and len(documents) > 1:
            raise cannot(self.name, "it was learned before clslm kept each document's change to the fast weights")
        self.changes = [c for i, c in enumerate(self.changes or []) if i != position]
        self.router.remove(position)
        self._sum_changes()

    # ---- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        if not len(self.router):
            return {}
        if self.changes is None:
            return super().state_dict()
        return {f"{CHANGE}{d}.{i}": w.cpu().contiguous() for d, change in enumerate(self.changes) for i, w in enumerate(change)}

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        if not tensors or self.changes is None:
            return super().load_state_dict(tensors) if tensors else None
        expected = set(self.state_dict())
        if set(tensors) != expected:
            raise InputError(f"{self.name}: saved changes {sorted(set(tensors) ^ expected)[:2]} do not fit the model")
        device = self.fast_layers()[0].fast_weight.device
        self.changes = [[tensors[f"{CHANGE}{d}.{i}"].float().to(device) for i in range(len(change))] for d, change in enumerate(self.changes)]
        self._sum_changes()

    def extra_state(self) -> dict:
        changes = {} if self.changes is None else {"changes": len(self.changes)}
        return {"keys": self.router.to_json()} | changes if len(self.router) else {}

    def load_extra_state(self, state: dict) -> None:
        self.router.load(state.get("keys", []))
        count = state.get("changes")
        if count is None:  # saved before each document's change was kept: W alone
            self.changes = None if len(self.router) else []
            return
        if not (is_int(count) and count == len(self.router)):
            raise ValueError(f"changes must be the number of documents ({len(self.router)}), not {count!r}")
        self.changes = [[torch.zeros_like(m.fast_weight) for m in self.fast_layers()] for _ in range(count)]  # filled by load_state_dict

    def cannot_export(self, format: str) -> str | None:
        return (
            f"ttt-linear cannot be exported as {format} weights: its fast weights add a linear path W·x beside "
            "each MLP, and a gated MLP (Llama, Qwen2, Gemma 3) has no neuron that is linear in its input, so no "
            "standard checkpoint or LoRA adapter reproduces it (see docs/export.md); use the session through "
            "clslm or its Python API"
        )

    def describe(self) -> dict:
        return {"layers": self.layer_ids, "documents": len(self.router), "fast_weight_mb": round(sum(m.fast_weight.numel() * 4 for m in self.fast_layers()) / 1e6, 2)}
