"""The Perceiver hypernetwork: a document chunk's per-layer activations → a rank-r LoRA per target layer.

For each target layer the frozen model's hidden states of the chunk (the input of that decoder layer)
are projected to a small width and tagged with a learned layer embedding. A set of `rank` learned latent
queries per (layer, target module) reads them through cross-attention blocks (cross-attention to the
chunk, self-attention among the latents, an MLP). Latent i then becomes row i of A and column i of B
through one linear head per target module. The layers share every weight except their embeddings,
which keeps the network a few MB for a 30-layer model.

The copy path (config.copy) gives each latent a direct line to the document: an attention readout picks
tokens of the chunk; A's row leans toward what the target module read at those tokens and B's column
gains the output embedding of the tokens that followed them. At answer time a context like the one before
a fact then writes the fact's next token: an induction head stored in the weights, which a small network
trained for minutes on a CPU can learn to aim, where learning to write facts from scratch would take days.

Scale: the modules of a model differ by orders of magnitude (SmolLM2's down_proj inputs have norms
from 5 to 130 depending on the layer), so each A row is a unit direction divided by the module's typical
input norm, and each B column is a head's output times the module's typical output norm (both norms
measured on the base model when training starts, kept as buffers). B's heads start at zero: an
untrained hypernetwork emits a LoRA that changes nothing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ...errors import InputError
from .reading import Reading

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
    copy: bool = True  # the copy path: A leans toward read inputs, B writes the tokens that followed
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
        self.head_b = nn.ModuleList(_zero(nn.Linear(width, d_out)) for _, d_out in config.shapes)
        if config.copy:
            self.pick_q, self.pick_k = nn.Linear(width, width), nn.Linear(width, width)
            self.head_gain = nn.ModuleList(_zero(nn.Linear(width, 1)) for _ in config.shapes)
            self.key_mix = nn.Parameter(torch.zeros(n_layers * n_targets))
        self.register_buffer("in_scale", torch.ones(n_layers * n_targets))
        self.register_buffer("out_scale", torch.ones(n_layers * n_targets))

    def forward(self, reading: Reading) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A chunk's Reading → [(A (rank, d_in), B (d_out, rank))] per (layer, target), layer-major."""
        n_layers, n_targets = len(self.config.layers), len(self.config.targets)
        x = self.read(reading.hidden.to(self.layer_emb.dtype)) + self.layer_emb[:, None]
        z = self.latents[None] + self.layer_emb[:, None] + self.target_emb[:, None, None]  # (targets, layers, rank, width)
        z = z.reshape(n_targets * n_layers, self.config.rank, -1)
        x = x.repeat(n_targets, 1, 1)  # target-major, like z
        for block in self.blocks:
            z = block(z, x)
        z, out = self.out_norm(z), [None] * (n_layers * n_targets)
        for t in range(n_targets):
            rows = slice(t * n_layers, (t + 1) * n_layers)
            modules = list(range(t, n_layers * n_targets, n_targets))  # their layer-major indices
            for layer, (a, b) in enumerate(zip(*self._factors(t, z[rows], x[rows], [reading.inputs[i] for i in modules], reading.following, modules))):
                out[modules[layer]] = (a, b)
        return out

    def _factors(self, t: int, z: torch.Tensor, x: torch.Tensor, inputs: list[torch.Tensor], following: torch.Tensor, modules: list[int]):
        """A (layers, rank, d_in) and B (layers, d_out, rank) for target t."""
        d_in, d_out = self.config.shapes[t]
        in_scale, out_scale = self.in_scale[modules][:, None, None], self.out_scale[modules][:, None, None]
        a, b = _unit(self.head_a[t](z)), self.head_b[t](z) * out_scale / d_out**0.5
        if self.config.copy:
            # Latent i picks doc tokens; its A row leans toward what this module read there, its B column
            # writes the output embedding of the token that followed (an in-weights induction head).
            pick = torch.softmax(self.pick_q(z) @ self.pick_k(x).transpose(1, 2) / z.shape[-1] ** 0.5, dim=-1)
            key = pick @ torch.stack(inputs).to(z.dtype)
            a = _unit(a + self.key_mix[modules].exp()[:, None, None] * _unit(key))
            if d_out == self.config.d_model:
                b = b + self.head_gain[t](z) * _unit(pick @ following.to(z.dtype)) * out_scale
        return a / in_scale, b.transpose(1, 2)

    def penalty(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Mean |B| in units of each module's own output scale (A is a unit direction: nothing to shrink)."""
        d_outs = [self.config.shapes[i % len(self.config.targets)][1] for i in range(len(pairs))]
        return torch.stack([b.abs().mean() * d**0.5 / self.out_scale[i] for i, ((_, b), d) in enumerate(zip(pairs, d_outs))]).mean()

    def set_scales(self, in_norms: torch.Tensor, out_norms: torch.Tensor) -> None:
        self.in_scale.copy_(in_norms.clamp_min(1e-3))
        self.out_scale.copy_(out_norms.clamp_min(1e-3))


def _zero(layer: nn.Linear) -> nn.Linear:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / (v.norm(dim=-1, keepdim=True) + 1e-6)


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
