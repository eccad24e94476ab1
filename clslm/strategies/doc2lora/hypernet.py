"""The Perceiver hypernetwork: a document chunk's per-layer activations → a rank-r LoRA per target layer.

For each target layer the frozen model's hidden states of the chunk (the input of that decoder layer)
are projected to a small width and tagged with a learned layer embedding. A set of `rank` learned latent
queries per (layer, target module) reads them through cross-attention blocks (cross-attention to the
chunk, self-attention among the latents, an MLP). Latent i then becomes row i of A and column i of B
through one linear head per target module. The layers share every weight except their embeddings,
which keeps the network a few MB for a 30-layer model.

Scale: the modules of a model differ by orders of magnitude (SmolLM2's down_proj inputs have norms
from 5 to 130 depending on the layer), so each A row is a unit direction divided by the module's typical
input norm, and each B column is the head's output times the module's typical output norm / √d_out
(both norms measured on the base model by `calibrate`). B's head starts at zero: an untrained
hypernetwork emits a LoRA that changes nothing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ...errors import InputError

FORMAT = "clslm-doc2lora-hypernet/1"


@dataclass
class HypernetConfig:
    """Shape of a hypernetwork and of the model it was made for; saved in the checkpoint's metadata."""

    d_model: int  # hidden size of the base model
    layers: list[int]  # decoder layers that get a LoRA (their input hidden states are read)
    targets: list[str]  # module names inside a layer, e.g. ["down_proj"]
    shapes: list[list[int]]  # [d_in, d_out] of each target
    rank: int = 8
    width: int = 128
    heads: int = 4
    blocks: int = 2
    chunk_tokens: int = 256  # longest chunk it reads
    model_fingerprint: str = ""
    extra: dict = field(default_factory=dict)  # free-form facts (training data, cost) kept with the weights


class Block(nn.Module):
    """Latents read the chunk (cross-attention), talk among themselves (self-attention), then an MLP."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm_q, self.norm_kv, self.norm_self, self.norm_mlp = (nn.LayerNorm(width) for _ in range(4))
        self.cross = nn.MultiheadAttention(width, heads, batch_first=True)
        self.self_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(x)
        z = z + self.cross(self.norm_q(z), kv, kv, need_weights=False)[0]
        q = self.norm_self(z)
        z = z + self.self_attn(q, q, q, need_weights=False)[0]
        return z + self.mlp(self.norm_mlp(z))


class Hypernet(nn.Module):
    def __init__(self, config: HypernetConfig):
        super().__init__()
        self.config = config
        width, n_layers, n_targets = config.width, len(config.layers), len(config.targets)
        self.read = nn.Sequential(nn.LayerNorm(config.d_model), nn.Linear(config.d_model, width))
        self.layer_emb = nn.Parameter(torch.randn(n_layers, width) * 0.02)
        self.target_emb = nn.Parameter(torch.randn(n_targets, width) * 0.02)
        self.latents = nn.Parameter(torch.randn(config.rank, width))
        self.blocks = nn.ModuleList(Block(width, config.heads) for _ in range(config.blocks))
        self.out_norm = nn.LayerNorm(width)
        self.head_a = nn.ModuleList(nn.Linear(width, d_in) for d_in, _ in config.shapes)
        self.head_b = nn.ModuleList(nn.Linear(width, d_out) for _, d_out in config.shapes)
        for head in self.head_b:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.register_buffer("in_scale", torch.ones(n_layers * n_targets))
        self.register_buffer("out_scale", torch.ones(n_layers * n_targets))

    def forward(self, features: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """features (layers, tokens, d_model) → [(A (rank, d_in), B (d_out, rank))] per (layer, target), layer-major."""
        n_layers, n_targets = len(self.config.layers), len(self.config.targets)
        x = self.read(features.to(self.layer_emb.dtype)) + self.layer_emb[:, None]
        x = x.repeat_interleave(n_targets, dim=0)
        tags = self.layer_emb.repeat_interleave(n_targets, dim=0) + self.target_emb.repeat(n_layers, 1)
        z = self.latents[None] + tags[:, None]
        for block in self.blocks:
            z = block(z, x)
        z = self.out_norm(z)
        out = []
        for i in range(n_layers * n_targets):
            t, d_out = i % n_targets, self.config.shapes[i % n_targets][1]
            a = self.head_a[t](z[i])
            a = a / (a.norm(dim=-1, keepdim=True) + 1e-6) / self.in_scale[i]
            out.append((a, self.head_b[t](z[i]).T * (self.out_scale[i] / d_out**0.5)))
        return out

    def penalty(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Mean |B| in units of each module's own output scale (A is a unit direction: nothing to shrink)."""
        d_outs = [self.config.shapes[i % len(self.config.targets)][1] for i in range(len(pairs))]
        return torch.stack([b.abs().mean() * d**0.5 / self.out_scale[i] for i, ((_, b), d) in enumerate(zip(pairs, d_outs))]).mean()

    def set_scales(self, in_norms: torch.Tensor, out_norms: torch.Tensor) -> None:
        self.in_scale.copy_(in_norms.clamp_min(1e-3))
        self.out_scale.copy_(out_norms.clamp_min(1e-3))


def save_hypernet(net: Hypernet, path: str | Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().float().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(path), metadata={"format": FORMAT, "config": json.dumps(asdict(net.config))})


def read_config(path: str | Path) -> HypernetConfig:
    """The config in a checkpoint's metadata; InputError if the file is not a doc2lora hypernetwork."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except FileNotFoundError:
        raise InputError(f"{path}: no such hypernetwork file") from None
    except Exception as e:
        raise InputError(f"{path}: not a safetensors file ({e})") from None
    if metadata.get("format") != FORMAT:
        raise InputError(f"{path}: not a doc2lora hypernetwork (format {metadata.get('format')!r}, expected {FORMAT!r})")
    return HypernetConfig(**json.loads(metadata["config"]))


def load_hypernet(path: str | Path) -> Hypernet:
    from safetensors.torch import load_file

    net = Hypernet(read_config(path))
    try:
        net.load_state_dict(load_file(str(path)))
    except RuntimeError as e:
        raise InputError(f"{path}: hypernetwork weights do not fit its config ({str(e).splitlines()[0]})") from None
    return net.eval().requires_grad_(False)
