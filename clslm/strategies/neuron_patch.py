"""ttt's Dual-MLP: the frozen MLP plus, per learned part, trainable deltas of a few of its neurons.

    y = mlp(x) + Σ_part alpha_part · (mlp'_part(x) − mlp(x))        restricted to the part's neurons
"""

from __future__ import annotations

import torch
from torch import nn

from .base import DeltaModule


class NeuronPatch(nn.Module):
    """Trainable deltas for `index` neurons of one gated MLP (one document's share)."""

    def __init__(self, index: torch.Tensor, hidden: int, alpha: float, dtype: torch.dtype):
        super().__init__()
        k = index.numel()
        self.register_buffer("index", index.clone())
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.route = 1.0  # set per question by the router; not saved
        self.gate = nn.Parameter(torch.zeros(k, hidden, dtype=dtype))
        self.up = nn.Parameter(torch.zeros(k, hidden, dtype=dtype))
        self.down = nn.Parameter(torch.zeros(hidden, k, dtype=dtype))

    def patched_forward(self, x: torch.Tensor, mlp: nn.Module) -> torch.Tensor:
        """mlp'(x): the MLP with this patch's deltas added to its neurons' rows and columns."""
        i = self.index
        gate = mlp.gate_proj.weight.index_add(0, i, self.gate)
        up = mlp.up_proj.weight.index_add(0, i, self.up)
        down = mlp.down_proj.weight.index_add(1, i, self.down)
        return (mlp.act_fn(x @ gate.T) * (x @ up.T)) @ down.T

    def forward(self, x: torch.Tensor, mlp: nn.Module, mlp_out: torch.Tensor) -> torch.Tensor:
        """alpha · (mlp'(x) − mlp(x)), the change this patch makes (`mlp_out` is mlp(x))."""
        i = self.index
        if i.numel() == mlp.down_proj.weight.shape[1]:  # every neuron: the frozen part is mlp(x) itself
            return self.alpha * (self.patched_forward(x, mlp) - mlp_out)
        w_gate, w_up, w_down = mlp.gate_proj.weight[i], mlp.up_proj.weight[i], mlp.down_proj.weight[:, i]
        old_out = (mlp.act_fn(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T
        new = mlp.act_fn(x @ (w_gate + self.gate).T) * (x @ (w_up + self.up).T)
        return self.alpha * (new @ (w_down + self.down).T - old_out)


class DualMLP(nn.Module, DeltaModule):
    """The frozen MLP plus the documents' neuron patches."""

    def __init__(self, mlp: nn.Module):
        super().__init__()
        self.mlp = mlp
        self.ttt_patches = nn.ModuleList()
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        active = [p for p in self.ttt_patches if p.route] if self.enabled else []
        if len(active) == 1 and float(active[0].alpha) == 1.0:
            # mlp(x) + 1·(mlp'(x) − mlp(x)) is mlp'(x): one MLP pass instead of two (the common case)
            return active[0].patched_forward(x, self.mlp)
        mlp_out = self.mlp(x)
        y = mlp_out
        for patch in active:
            y = y + patch(x, self.mlp, mlp_out)
        return y
