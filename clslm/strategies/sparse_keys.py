"""The keys a fast-weight layer reads: features of a token that fire for few tokens.

A linear associative memory `W · k` only keeps separate facts apart when the keys of different contexts are
nearly orthogonal. A decoder's hidden states are not: they share a large common direction, so a change to W
read through them moves every token's output alike. The selective keys here are built without training:

- `hidden`: the MLP's input itself (the unselective baseline).
- `mlp`: the frozen MLP's own intermediate activations act(gate·x) ⊙ (up·x), kept to their `top_k` largest
  magnitudes per token; W then acts as extra `down_proj` columns. With `top_k` 0 and no normalisation W·k
  is exactly a change to `down_proj` (foldable into the model).
- `sdm`: the hidden state, centred on its mean over general text and normalised, lifted by a fixed sparse
  random ±1 projection (each of `dim` units reads `fan_in` coordinates) and kept to its `top_k` largest
  positive units: a sparse distributed memory.

Keys with `top_k` > 0 are unit vectors (`normalise`), so one delta-rule step at lr 1 stores a value exactly
for a key orthogonal to the others.
"""

from __future__ import annotations

import torch
from torch import nn


def top_k_sparse(features: torch.Tensor, k: int, *, positive: bool = False) -> torch.Tensor:
    """`features` with all but the k largest (by magnitude, or by value when `positive`) of each row zeroed."""
    if k <= 0 or k >= features.shape[-1]:
        return features.clamp(min=0) if positive else features
    score = features if positive else features.abs()
    index = score.topk(k, dim=-1).indices
    kept = torch.zeros_like(features).scatter(-1, index, features.gather(-1, index))
    return kept.clamp(min=0) if positive else kept


def unit(features: torch.Tensor) -> torch.Tensor:
    return features / features.norm(dim=-1, keepdim=True).clamp(min=1e-6)


class Keys(nn.Module):
    """Maps an MLP's input x (and its intermediate activations h) to the keys W reads. Holds no saved state."""

    reads_mlp = False  # True: keys come from h, computed anyway by the MLP

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


class HiddenKeys(Keys):
    def forward(self, x, h=None):
        return x.float()


class MlpKeys(Keys):
    reads_mlp = True

    def __init__(self, dim: int, top_k: int, normalise: bool):
        super().__init__(dim)
        self.top_k, self.normalise = top_k, normalise

    def forward(self, x, h=None):
        keys = top_k_sparse(h.float(), self.top_k)
        return unit(keys) if self.normalise else keys


class SdmKeys(Keys):
    """Centred, normalised x through a fixed sparse random projection, top-k positive units."""

    def __init__(self, width: int, dim: int, fan_in: int, top_k: int, seed: int):
        super().__init__(dim)
        self.top_k = top_k
        self.register_buffer("centre", torch.zeros(width), persistent=False)  # set by the strategy (mean_inputs)
        g = torch.Generator().manual_seed(seed)
        rows = torch.arange(dim).repeat_interleave(fan_in)
        cols = torch.stack([torch.randperm(width, generator=g)[:fan_in] for _ in range(dim)]).reshape(-1)
        signs = torch.randint(0, 2, (dim * fan_in,), generator=g).float() * 2 - 1
        projection = torch.zeros(dim, width).index_put_((rows, cols), signs, accumulate=True)
        self.register_buffer("projection", projection, persistent=False)

    def forward(self, x, h=None):
        z = unit(x.float() - self.centre)
        return unit(top_k_sparse(z @ self.projection.T, self.top_k, positive=True))


def mlp_parts(mlp: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mlp(x), h): a gated MLP's output and its intermediate activations, computed as its forward does."""
    h = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
    return mlp.down_proj(h), h


def mean_inputs(model, tokenizer, modules: list[nn.Module], texts: list[str]) -> list[torch.Tensor]:
    """The mean input of each of `modules` over the tokens of `texts` (each text weighs the same)."""
    seen: list[list[torch.Tensor]] = [[] for _ in modules]
    hooks = [m.register_forward_pre_hook(lambda mod, args, j=j: seen[j].append(args[0][0].float().mean(0))) for j, m in enumerate(modules)]
    try:
        with torch.no_grad():
            for text in texts:
                ids = tokenizer(text, return_tensors="pt")["input_ids"].to(model.device)
                model(input_ids=ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return [torch.stack(means).mean(0) for means in seen]
