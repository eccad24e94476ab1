"""ttt-linear — TTT-Linear fast weights read through sparse, token-selective keys.

Each of the last decoder layers (`layers`) gets a fast-weight matrix W (fp32 whatever the model's dtype) on a
residual path beside its MLP (after TTT-Linear, arXiv 2407.04620: a linear model as hidden state, trained by
a self-supervised loss on the tokens it reads):

    y = mlp(x) + W · k(x)          W starts at 0, so the model starts exactly as the base model

k(x) are the keys (sparse_keys.py): the hidden state itself (`keys=hidden`, which stores no facts: every
token's key shares one large direction), the MLP's own intermediate activations kept to their top-k per
token (`keys=mlp`: W acts as extra `down_proj` columns), the same with each document's change restricted to
the columns of the neurons TF-IDF gating picks for it (`keys=tfidf`, the default; tfidf_keys.py), or a sparse random lift
of the centred hidden state with top-k (`keys=sdm`). The inner loop is AdamW on the masked-token loss
(`inner=adamw`: a share `mask_ratio` of the reply tokens of the training text (textbook.py) is masked in the
input and predicted), or the delta rule (`inner=delta`, delta_rule.py): one closed-form gradient step of a
reconstruction loss per mini-batch, forward passes only. An anchor term λ·‖W − W₀‖² holds W near where the
learn began. A TF-IDF router (router.py) switches W on only for questions that match a learned document;
with `route_top` ≥ 1 only the best-matching documents' changes to W act (each document's change is kept, so
W can be rebuilt).
"""

from __future__ import annotations

import time
from functools import partial
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..documents import Document
from ..errors import InputError
from ..generation import sliding_window
from ..state_files import is_int
from .anatomy import decoder_layers, gated_mlp, hidden_before, last_layers, replay_prefix
from .base import DeltaModule, LearnReport, Merged, Step, StepCallback, Strategy, noop
from .config import StrategyConfig, option
from .delta_rule import delta_step, keys_and_values, safe_lr
from .forgetting import cannot
from .masking import mask_replies, mask_token_id
from .gating import general_corpus
from .packing import attention_mask_for, pack
from .router import Routed, Router, threshold_option, top_option
from .sparse_keys import HiddenKeys, Keys, MlpKeys, SdmKeys, mean_inputs, mlp_parts
from .tfidf_keys import column_state, from_column_state, key_neurons, only_columns, placeholder_columns, restricted
from .textbook import batches, build_examples, reply_loss, training_vocab
from .training import bfloat16_head, descend, mean_loss, precision_autocast

PREFIX = "fast_weight"
CHANGE = "fast_weight_change."  # + document.layer: one document's change to W at one layer (saved)
REPORT_BATCHES = 4  # batches the reported loss before/after is measured on


@dataclass
class TTTLinearConfig(StrategyConfig):
    """ttt-linear hyperparameters (-o KEY=VALUE)."""

    keys: Literal["hidden", "mlp", "tfidf", "sdm"] = option("tfidf", "what W reads: the MLP's input (hidden), its intermediate activations (mlp: W is a change to down_proj; tfidf: each document's change writes only the down_proj columns of the neurons TF-IDF gating picks for it), or a sparse random lift of the centred input (sdm)")
    top_k: int = option(0, "key features kept per token (keys=mlp or sdm; 0 = all: with keys=mlp W is then a change to down_proj; not used by keys=tfidf)", min=0)
    neurons_per_token: float = option(2.5, "with keys=tfidf: neurons per layer (picked by TF-IDF gating, as ttt's) whose down_proj columns a document's change may write, per document token (at least 64; 0 = `neurons` exactly)", min=0)
    neurons: int = option(0, "with keys=tfidf: at most this many neurons per layer (0 = no cap)", min=0)
    fire_fraction: float = option(0.02, 'with keys=tfidf: a neuron "fires" on a token when in this top share of its layer (TF-IDF gating)', above=0, max=1)
    normalise: bool = option(True, "keys with top_k > 0 are scaled to unit length")
    sdm_dim: int = option(4096, "with keys=sdm: units of the random projection", min=1)
    sdm_fan_in: int = option(16, "with keys=sdm: input coordinates each unit reads", min=1)
    inner: Literal["adamw", "delta"] = option("adamw", "inner loop: AdamW on the masked-token loss, or the delta rule (closed-form steps of a reconstruction loss)")
    lr: float = option(5e-3, "AdamW learning rate on the fast weights", above=0, max=1)
    delta_lr: float = option(0.5, "with inner=delta: step size of the delta rule", above=0, max=10)
    delta_chunk: int = option(16, "with inner=delta: tokens per delta-rule step (TTT's inner mini-batch; 1: the classic per-token delta rule)", min=1)
    value_scale: float = option(0.3, "with inner=delta: a value's length relative to the residual stream's norm there", above=0)
    epochs: int = option(3, "passes over the training text (a fresh mask each time)", min=1)
    layers: float = option(0.125, "fraction of decoder layers (the last ones) with a fast-weight layer", above=0, max=1)
    mask_ratio: float = option(0.0, "share of reply tokens masked in the input and predicted (0: plain next-token loss)", min=0, max=1)
    anchor: float = option(0.0, "λ of the anchor term λ·‖W − W₀‖² (summed over layers)", min=0)
    vocab: int = option(2048, "the training softmax runs over the document's own tokens plus this many common ones (0: the whole vocabulary); the reported loss stays over the whole vocabulary", min=0)
    max_tokens: int = option(96, "longest document piece in one training example", min=8)
    questions: int = option(3, "cue prompts per sentence")
    batch_size: int = option(8, "training examples per step", min=1)
    max_grad_norm: float = option(1.0, "gradients are clipped to this norm", above=0)
    route_threshold: float = threshold_option("fast weights act only on questions whose router match (router.py) reaches this (0: always)")
    route_top: int = top_option(1, 0, "only the changes of this many best-matching documents act (0: every document's, when one matches)")
    beams: int = option(2, "beam width when answering a question the fast weights act on (1: greedy)", min=1, max=16)
    state_dtype: Literal["float16", "float32"] = option("float16", "how each document's change to W is stored")
    precision: Literal["auto", "float32", "bfloat16"] = option("auto", "arithmetic of the training passes: bfloat16 autocast where native (auto), or as named; W stays float32")
    pack: bool = option(True, "run each training batch as one sequence (packing.py: the same loss, fewer tokens)")


class FastLinearMLP(nn.Module, DeltaModule):
    """The frozen MLP plus a fast-weight linear path read through keys: y = mlp(x) + W·k(x) (W in fp32)."""

    def __init__(self, mlp: nn.Module, key_map: Keys, width: int):
        super().__init__()
        self.mlp = mlp
        self.key_map = key_map
        self.fast_weight = nn.Parameter(torch.zeros(width, key_map.dim, dtype=torch.float32, device=mlp.down_proj.weight.device))
        self.enabled = True
        self.route = True  # set per question by the router; not saved
        self.recorded: list[torch.Tensor] | None = None  # keys seen, while the delta rule records them
        self.column_mask: torch.Tensor | None = None  # keys=tfidf, while learning: the columns W may change

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.enabled and self.route):
            return self.mlp(x)
        y, h = mlp_parts(self.mlp, x) if self.key_map.reads_mlp else (self.mlp(x), None)
        keys = self.key_map(x, h)
        if self.recorded is not None:
            self.recorded.append(keys.detach())
        return y + (keys @ only_columns(self.fast_weight, self.column_mask).T).to(y.dtype)


class TTTLinear(Routed, Strategy):
    """TTT-Linear fast weights on the last layers, read through selective keys, trained on the document."""

    name = "ttt-linear"
    Config = TTTLinearConfig
    prefix = PREFIX
    paper = "2407.04620"
    summary = "fp32 TTT-Linear fast weights read through the last MLPs' own activations, each document writing only its TF-IDF-gated neurons' down_proj columns, routed per document"
    test_options = {"epochs": "3", "max_tokens": "32"}
    learns_by_gradient = True

    def attach(self) -> None:
        self.layer_ids = last_layers(self.model, self.config.layers)
        width = self.model.get_input_embeddings().embedding_dim
        blocks = decoder_layers(self.model)
        for i in self.layer_ids:
            mlp = gated_mlp(blocks[i])
            blocks[i].mlp = FastLinearMLP(mlp, self._key_map(i, width, mlp.down_proj.weight.shape[1]), width)
        if self.config.keys == "sdm":  # the keys' centre: the mean MLP input over general text
            with self.disabled():
                for m, mean in zip(self.fast_layers(), mean_inputs(self.model, self.tokenizer, self.fast_layers(), general_corpus())):
                    m.key_map.centre.copy_(mean)
        self.router = Router(self.config)  # one unit per document
        self.anchors: list[torch.Tensor] = []
        # Each document's change to the fast weights, per layer; W is their sum (so one can be forgotten).
        # None: a session saved before they were kept (its W alone).
        self.changes: list[list[torch.Tensor]] | None = []
        self.columns: list[list[torch.Tensor]] = []  # keys=tfidf: per document, per layer, the neurons its change wrote

    def _key_map(self, layer: int, width: int, intermediate: int) -> Keys:
        c = self.config
        if c.keys in ("mlp", "tfidf"):  # tfidf: every activation is read, only the document's neurons' columns learn
            top_k = c.top_k if c.keys == "mlp" else 0
            return MlpKeys(intermediate, top_k, c.normalise and top_k > 0)
        if c.keys == "sdm":
            return SdmKeys(width, c.sdm_dim, min(c.sdm_fan_in, width), c.top_k, c.seed + layer)
        return HiddenKeys(width)

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
        data = self._batches(document)
        self.router.add(document.text)
        if c.route_top and self.changes is not None:  # its change answers alone, so it is learned alone
            self._set_weights([])
        self.anchors = [m.fast_weight.detach().clone() for m in self.fast_layers()]
        generator = torch.Generator().manual_seed(c.seed)
        mask_id = mask_token_id(self.tokenizer, self.model.get_input_embeddings().num_embeddings)
        fixed = torch.Generator().manual_seed(c.seed + 1)  # the same masks before and after: comparable losses
        probe = [{k: v for k, v in mask_replies(b, c.mask_ratio, mask_id, fixed).items() if k != "vocab"} for b in data[:: max(1, len(data) // REPORT_BATCHES)]]
        objective = partial(self._objective, head=bfloat16_head(self.model, c.precision))
        loss_before = mean_loss(probe, objective)
        columns = key_neurons(self, document.text) if c.keys == "tfidf" else None
        with restricted(self.fast_layers(), columns):
            if c.inner == "delta":
                steps, skipped = self._delta_learn(data, mask_id, generator, on_step), 0
            else:
                steps, skipped = descend(
                    self.name, [m.fast_weight for m in self.fast_layers()], data,
                    lambda b: objective(mask_replies(b, c.mask_ratio, mask_id, generator)),
                    epochs=c.epochs, lr=c.lr, weight_decay=0.0, max_grad_norm=c.max_grad_norm, seed=c.seed, on_step=on_step,
                )  # fmt: skip
        self._keep_change(columns)
        loss_after = mean_loss(probe, objective)
        moved = sum(float(change.norm()) for change in self.changes[-1]) if self.changes else 0.0
        return LearnReport(
            name=document.name,
            sha256=document.sha256,
            tokens=len(self.tokenizer(document.text, add_special_tokens=False)["input_ids"]),
            loss_before=loss_before,
            loss_after=loss_after,
            seconds=round(time.perf_counter() - started, 2),
            extra={"steps": steps, "skipped_steps": skipped, "layers": len(self.layer_ids), "weight_change": round(moved, 4)}
            | ({"neurons": sum(int(i.numel()) for i in columns)} if columns else {}),
        )

    def _batches(self, document: Document) -> list[dict]:
        """The training batches (packed where that keeps the loss), with the frozen prefix's states when no
        mask changes the inputs (mask_ratio 0)."""
        c = self.config
        examples = build_examples(document, self.tokenizer, fmt="chat", max_tokens=c.max_tokens, questions_per_sentence=c.questions)
        data = batches(examples, c.batch_size, self.tokenizer.pad_token_id)
        if c.pack:
            window = getattr(self.model.config, "sliding_window", None) if sliding_window(self.model) else None
            data = [pack(b, window) for b in data]
        data = [{k: v.to(self.model.device) for k, v in b.items()} for b in data]
        vocab = training_vocab(examples, c.vocab, self.model.get_output_embeddings().weight.shape[0]).to(self.model.device) if c.vocab else None
        for b in data:
            b |= {"vocab": vocab} if vocab is not None else {}
            if c.mask_ratio <= 0:
                with self._precision():
                    b["hidden"] = hidden_before(self.model, self.layer_ids[0], b["input_ids"], self._mask(b), b.get("position_ids"))
        return data

    def _mask(self, batch: dict) -> torch.Tensor:
        return attention_mask_for(self.model, batch["attention_mask"], self.model.dtype)

    def _objective(self, batch: dict, head: torch.Tensor | None = None) -> torch.Tensor:
        """Masked-token (or next-token) loss plus the anchor term; a cached frozen prefix is replayed.
        `head`: training.bfloat16_head, the head and softmax in bfloat16."""
        with self._precision():
            hidden = batch.get("hidden")
            if hidden is None:
                loss = reply_loss(self.model, batch, head_weight=head)
            else:
                with replay_prefix(self.model, self.layer_ids[0], hidden):
                    loss = reply_loss(self.model, batch, head_weight=head)
        return loss.float() + self.anchor_penalty()

    def _precision(self):
        return precision_autocast(self.config.precision, self.model.device)

    # ---- the delta rule ------------------------------------------------------------------------------
    def _delta_learn(self, data: list[dict], mask_id: int, generator: torch.Generator, on_step: StepCallback) -> int:
        """`epochs` passes of delta-rule steps, one per batch (shuffled per epoch from the seed)."""
        c, step = self.config, 0
        order = torch.Generator().manual_seed(c.seed)
        for _ in range(c.epochs):
            for j in torch.randperm(len(data), generator=order).tolist():
                batch = mask_replies(data[j], c.mask_ratio, mask_id, generator)
                for m, w0, (keys, values) in zip(self.fast_layers(), self.anchors, keys_and_values(self, batch)):
                    for k, v in zip(keys.split(c.delta_chunk), values.split(c.delta_chunk)):  # TTT's mini-batches, in order
                        m.fast_weight.data = delta_step(m.fast_weight.data, k, v, safe_lr(k, c.delta_lr), c.anchor, w0, m.column_mask)
                step += 1
                on_step(Step(step, c.epochs * len(data)))
        return step

    # ---- routing -------------------------------------------------------------------------------
    def matches(self, question: str) -> bool:
        return self.router.matches(question)

    def active_documents(self, question: str) -> list[int] | None:
        """With route_top 0, every document when the question matches one, else none (W acts whole); with
        route_top ≥ 1 the best matches; None with routing off (route_threshold 0)."""
        if self.config.route_threshold <= 0:
            return None
        if self.config.route_top:
            return self.router.ranked(question)[: self.config.route_top]
        return list(range(len(self.router))) if self.matches(question) else []

    def beams(self, question: str) -> int:
        active = self.active_documents(question)
        return self.config.beams if (active is None and len(self.router)) or active else 1

    @contextmanager
    def route_to(self, active: list[int] | None) -> Iterator[None]:
        """Only the changes of the documents in `active` act inside the block (None: all of W). The block
        leaves W and the routes as it found them: blocks may nest (an answer() inside another routed block)."""
        on = active is None or bool(active)
        alone = on and active is not None and self.config.route_top > 0 and self.changes is not None
        layers = self.fast_layers()
        routes = [m.route for m in layers]
        weights = [m.fast_weight.detach().clone() for m in layers] if alone else None
        if alone:
            self._set_weights(active)
        for m in layers:
            m.route = on
        try:
            yield
        finally:
            for m, route in zip(layers, routes):
                m.route = route
            if weights is not None:
                with torch.no_grad():
                    for m, w in zip(layers, weights):
                        m.fast_weight.copy_(w)

    # ---- each document's change, forgetting one ---------------------------------------------------
    def _keep_change(self, columns: list[torch.Tensor] | None = None) -> None:
        """Record this learn's change to W (rounded as it is stored) and the columns it may write (keys=tfidf),
        then set W to the sum of the changes."""
        if self.changes is None:
            return
        self.columns += [columns] if columns is not None else []
        dtype = getattr(torch, self.config.state_dtype)
        self.changes.append([(m.fast_weight - w0).detach().to(dtype).float() for m, w0 in zip(self.fast_layers(), self.anchors)])
        self._sum_changes()

    def _sum_changes(self) -> None:
        self._set_weights(range(len(self.changes or [])))

    def _set_weights(self, documents) -> None:
        """W = the sum of the listed documents' changes."""
        with torch.no_grad():
            for i, m in enumerate(self.fast_layers()):
                m.fast_weight.copy_(sum((self.changes[d][i] for d in documents), torch.zeros_like(m.fast_weight)))

    def forget(self, documents: list[dict], position: int) -> None:
        """W loses the document's change and its router keys go. With route_top 0 the other documents'
        changes were learned on top of it, so their answers may shift a little."""
        if self.changes is None and len(documents) > 1:
            raise cannot(self.name, "it was learned before clslm kept each document's change to the fast weights")
        self.changes = [c for i, c in enumerate(self.changes or []) if i != position]
        del self.columns[position : position + 1]
        self.router.remove(position)
        self._sum_changes()

    # ---- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        if not len(self.router):
            return {}
        if self.changes is None:
            return super().state_dict()
        dtype = getattr(torch, self.config.state_dtype)
        if self.config.keys == "tfidf":  # each change as the columns it wrote
            return column_state(self.changes, self.columns, CHANGE, dtype)
        return {f"{CHANGE}{d}.{i}": w.to(dtype).cpu().contiguous() for d, change in enumerate(self.changes) for i, w in enumerate(change)}

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        if not tensors or self.changes is None:
            return super().load_state_dict(tensors) if tensors else None
        expected = set(self.state_dict())
        if set(tensors) != expected:
            raise InputError(f"{self.name}: saved changes {sorted(set(tensors) ^ expected)[:2]} do not fit the model")
        device = self.fast_layers()[0].fast_weight.device
        if self.config.keys == "tfidf":
            self.changes, self.columns = from_column_state(tensors, CHANGE, self.changes)
            return self._sum_changes()
        self.changes = [[tensors[f"{CHANGE}{d}.{i}"].float().to(device) for i in range(len(change))] for d, change in enumerate(self.changes)]
        self._sum_changes()

    def extra_state(self) -> dict:
        changes = {} if self.changes is None else {"changes": len(self.changes)}
        changes |= {"columns": [[int(i.numel()) for i in doc] for doc in self.columns]} if self.config.keys == "tfidf" else {}
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
        if self.config.keys == "tfidf":
            self.columns = placeholder_columns(state.get("columns"), count, self.fast_layers())

    # ---- export --------------------------------------------------------------------------------
    def foldable(self) -> bool:
        """W·k is a change to down_proj exactly when k is the MLP's own intermediate activations, whole (keys=tfidf
        reads them whole too; only which columns learn differs)."""
        return self.config.keys == "tfidf" or (self.config.keys == "mlp" and self.config.top_k == 0)

    def cannot_export(self, format: str) -> str | None:
        if self.foldable() and format == "merged":
            return None
        why = "its keys are the MLP's intermediate activations, so only --format merged folds it" if self.foldable() else (
            f"its fast weights read keys (keys={self.config.keys}, top_k={self.config.top_k}) that are not linear in a standard "
            "MLP's weights, so no standard checkpoint or LoRA adapter reproduces them (with -o keys=mlp -o top_k=0 W folds into "
            "down_proj: --format merged)"
        )
        return f"ttt-linear cannot be exported as {format} weights: {why} (see docs/export.md); use the session through clslm or its Python API"

    def export_merged(self) -> Merged:
        """W (every document's change) added to each fast layer's down_proj; the wrappers taken out."""
        blocks = decoder_layers(self.model)
        for i, m in zip(self.layer_ids, self.fast_layers()):
            with torch.no_grad():
                m.mlp.down_proj.weight += m.fast_weight.to(m.mlp.down_proj.weight.dtype)
            blocks[i].mlp = m.mlp
        notes = ["every document's change to the fast weights is on: clslm's per-question routing has no counterpart in a standard checkpoint"] if self.config.route_threshold > 0 else []
        return Merged(self.model, True, notes)

    def describe(self) -> dict:
        mb = sum(m.fast_weight.numel() * 4 for m in self.fast_layers()) / 1e6
        return {"layers": self.layer_ids, "keys": self.config.keys, "documents": len(self.router), "fast_weight_mb": round(mb, 2)}
