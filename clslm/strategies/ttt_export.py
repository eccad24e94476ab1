"""ttt's export: its learned neuron patches as plain weight changes, folded into the MLPs or factored as LoRA.

A ttt patch holds deltas (δ_gate, δ_up rows; δ_down columns) for some neurons of a gated MLP and acts as

    y = mlp(x) + α · (mlp'(x) − mlp(x))        mlp' = the MLP with its patched neurons' weights + δ

When every neuron is patched by at most one document and α = 1, that is exactly the MLP with its
weights replaced: W + δ. Otherwise (a neuron shared by several documents, or α < 1) the fold
W + Σ α·δ agrees with the patches to first order in δ only. Either way every document is on: clslm's
per-question routing has no counterpart in a standard checkpoint.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch

from .anatomy import decoder_layers
from .base import Adapter, Merged

PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


@dataclass
class Fold:
    """A plain transformers model (base weights, wrappers removed) and the changes that hold what was learned."""

    model: torch.nn.Module
    deltas: dict[str, torch.Tensor]  # parameter name in `model` → ΔW (float32, same shape)
    exact: bool
    notes: list[str] = field(default_factory=list)


def ttt_deltas(strategy) -> Fold:
    """The strategy's patches as ΔW per MLP projection; its DualMLP wrappers are taken out of the model."""
    model = strategy.model
    names = {id(m): name for name, m in model.named_modules()}
    blocks = decoder_layers(model)
    documents = strategy.documents_learned  # counted on the wrappers, before they go
    deltas, shared, blended = {}, 0, False
    for i, dual in strategy.dual_mlps().items():
        changes, cover = _patch_deltas(dual)
        shared += int((cover > 1).sum())
        blended |= any(float(p.alpha) != 1.0 for p in dual.ttt_patches)
        deltas |= {f"{names[id(dual)]}.{proj}.weight": delta for proj, delta in changes.items()}
        blocks[i].mlp = dual.mlp  # the wrapper's name is now the plain MLP's: standard parameter names
    notes = _notes(strategy.config, documents, shared, blended)
    return Fold(model, deltas, exact=not shared and not blended, notes=notes)


def _patch_deltas(dual) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Σ α·δ per projection over the DualMLP's patches, and how many patches cover each neuron."""
    mlp = dual.mlp
    changes = {proj: torch.zeros_like(getattr(mlp, proj).weight, dtype=torch.float32) for proj in PROJECTIONS}
    cover = torch.zeros(mlp.gate_proj.weight.shape[0], device=mlp.gate_proj.weight.device)
    for patch in dual.ttt_patches:
        alpha, index = float(patch.alpha), patch.index.long()
        changes["gate_proj"].index_add_(0, index, alpha * patch.gate.detach().float())
        changes["up_proj"].index_add_(0, index, alpha * patch.up.detach().float())
        changes["down_proj"].index_add_(1, index, alpha * patch.down.detach().float())
        cover.index_add_(0, index, torch.ones_like(index, dtype=cover.dtype))
    return changes, cover


def _notes(c, n: int, shared: int, blended: bool) -> list[str]:
    notes = []
    if shared:
        notes.append(f"{shared} neuron(s) are changed by more than one document: their deltas were added (a first-order fold, not exact)")
    if blended:
        notes.append("documents blended with alpha < 1 were folded as alpha·delta (a first-order fold, not exact)")
    if n == 1 and c.route_threshold > 0:
        notes.append(
            f"clslm turns the document's deltas on only for questions that match it (route_threshold={c.route_threshold}); the export "
            "has them always on: it matches `clslm ask` on matching questions, not on others (where clslm answers as the base model)"
        )
    elif n > 1 and c.route_threshold > 0:
        notes.append(
            f"clslm turns a document's deltas on only for questions that match it (route_threshold={c.route_threshold}, at most "
            f"{c.route_top} at once); the export has all {n} documents always on: it matches `clslm ask` only where all are routed on"
        )
    return notes


def apply(fold: Fold) -> None:
    """W += ΔW in place (summed in float32, stored in the model's dtype)."""
    params = dict(fold.model.named_parameters())
    with torch.no_grad():
        for name, delta in fold.deltas.items():
            p = params[name]
            p.copy_((p.float() + delta).to(p.dtype))


def low_rank(delta: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    """(B, A, relative error, rank of delta): B·A is delta's best rank-r approximation (truncated SVD)
    and the error is ‖delta − B·A‖_F / ‖delta‖_F (0 for a zero delta)."""
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    root = s[:r].sqrt()
    b, a = u[:, :r] * root, root[:, None] * vh[:r]
    total = float(s.square().sum())
    error = math.sqrt(float(s[r:].square().sum()) / total) if total > 0 else 0.0
    change_rank = int((s > s.max() * max(delta.shape) * torch.finfo(torch.float32).eps).sum()) if total > 0 else 0
    return b.float(), a.float(), error, change_rank


def lora_adapter(fold: Fold, rank: int):
    """A peft model on fold.model whose LoRA adapter holds the rank-`rank` approximation of every ΔW.

    Returns (peft model, per-module facts, rank used). lora_alpha = r makes peft's scaling 1, so each
    module computes W x + B A x.
    """
    from peft import LoraConfig, get_peft_model

    r = min([rank, *(min(d.shape) for d in fold.deltas.values())])
    modules = sorted(name.removesuffix(".weight") for name in fold.deltas)
    config = LoraConfig(r=r, lora_alpha=r, target_modules=modules, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):  # peft's random init: leave the caller's RNG alone
        warnings.simplefilter("ignore")
        adapter = get_peft_model(fold.model, config)
    layers = []
    with torch.no_grad():
        for name in modules:
            b, a, error, change_rank = low_rank(fold.deltas[name + ".weight"], r)
            lora = adapter.get_base_model().get_submodule(name)
            lora.lora_A["default"].weight.copy_(a)
            lora.lora_B["default"].weight.copy_(b)
            layers.append({"module": name, "relative_error": round(error, 8), "change_rank": change_rank})
    adapter.requires_grad_(False)
    return adapter, layers, r


def merged(strategy) -> Merged:
    """TTT.export_merged: every patch folded into its MLP's weights (the wrappers taken out)."""
    fold = ttt_deltas(strategy)
    apply(fold)
    return Merged(fold.model, fold.exact, fold.notes)


def adapter(strategy, rank: int) -> Adapter:
    """TTT.export_adapter: every MLP's weight change as a rank-`rank` LoRA (truncated SVD), with its error."""
    fold = ttt_deltas(strategy)
    model, layers, r = lora_adapter(fold, rank)
    worst = max((layer["relative_error"] for layer in layers), default=0.0)
    notes = [*fold.notes, f"LoRA rank {r}: truncated SVD of each module's weight change; largest relative Frobenius error {worst:.3g} (per module in `layers`)"]
    if worst > 0.01:
        biggest = max(layer["change_rank"] for layer in layers)
        notes.append(f"the weight changes have rank up to {biggest}: a larger --rank gives a closer adapter")
    return Adapter(model, fold.exact and worst < 1e-6, r, layers, notes)
