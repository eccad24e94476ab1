"""LoRA factors as plain tensors, how they combine, and how they reach the model.

`Factors` maps a module's name in the causal LM (e.g. "model.layers.3.mlp.down_proj") to (A, B) with
A: (rank, d_in) and B: (d_out, rank), so that the module computes base(x) + x Aᵀ Bᵀ — peft's LoRA with
scaling 1. Two ways in: `applied()` adds them with forward hooks (differentiable: training and
distillation), `install()` copies them into a standard peft adapter (answering, saving, merging).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ...errors import InputError

ADAPTER = "doc2lora"
Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]


def module_names(model, layers: list[int], targets: list[str]) -> list[str]:
    """Names of the `targets` linear modules in decoder `layers` ("model.layers.3.mlp.down_proj", ...)."""
    base = unwrap(model)
    found = {}
    for name, module in base.named_modules():
        match = re.search(r"(?:^|\.)layers\.(\d+)\.(?:.+\.)?(\w+)$", name)
        if match and isinstance(module, torch.nn.Linear) and int(match[1]) in layers and match[2] in targets:
            found[(int(match[1]), targets.index(match[2]))] = name
    wanted = [(layer, t) for layer in layers for t in range(len(targets))]
    missing = [f"layer {layer} {targets[t]}" for layer, t in wanted if (layer, t) not in found]
    if missing:
        raise InputError(f"{type(base).__name__}: no linear module for {', '.join(missing[:3])}")
    return [found[key] for key in wanted]


def unwrap(model):
    """The transformers model under a peft wrapper (the model itself when not wrapped)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def rank(factors: Factors) -> int:
    ranks = {a.shape[0] for a, _ in factors.values()}
    if len(ranks) > 1:
        raise ValueError(f"factors of mixed rank {sorted(ranks)}")
    return ranks.pop() if ranks else 0


def zeros(base, names: list[str]) -> Factors:
    """Rank-1 factors with B = 0 on `names`: an adapter that changes nothing."""
    out = {}
    for name in names:
        weight = base.get_submodule(name).weight
        out[name] = (weight.new_zeros(1, weight.shape[1]), weight.new_zeros(weight.shape[0], 1))
    return out


def concat(parts: list[Factors]) -> Factors:
    """The sum of the parts' deltas, exactly: factors stacked along the rank."""
    names = sorted({name for part in parts for name in part})
    out = {}
    for name in names:
        present = [part[name] for part in parts if name in part]
        out[name] = (torch.cat([a for a, _ in present], dim=0), torch.cat([b for _, b in present], dim=1))
    return out


def mean(parts: list[Factors]) -> Factors:
    """The mean of the parts' deltas (B scaled by 1/n, then stacked)."""
    return concat([{k: (a, b / len(parts)) for k, (a, b) in part.items()} for part in parts])


def cap(factors: Factors, max_rank: int) -> Factors:
    """The best rank-`max_rank` approximation of each delta B·A (truncated SVD), when it has more."""
    return {name: _truncate(a, b, max_rank) if a.shape[0] > max_rank else (a, b) for name, (a, b) in factors.items()}


def _truncate(a: torch.Tensor, b: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    qb, rb = torch.linalg.qr(b.double())  # B = Qb Rb, Aᵀ = Qa Ra  →  B·A = Qb (Rb Raᵀ) Qaᵀ
    qa, ra = torch.linalg.qr(a.double().T)
    u, s, vh = torch.linalg.svd(rb @ ra.T)
    root = s[:k].sqrt()
    new_b = (qb @ u[:, :k]) * root
    new_a = root[:, None] * (vh[:k] @ qa.T)
    return new_a.to(a.dtype).contiguous(), new_b.to(b.dtype).contiguous()


def delta(factors: Factors, name: str) -> torch.Tensor:
    a, b = factors[name]
    return b @ a


@contextmanager
def applied(model, factors: Factors, scale: float = 1.0) -> Iterator[None]:
    """Within the block each named module adds scale · x Aᵀ Bᵀ to its output (gradients flow to A, B)."""
    base = unwrap(model)
    handles = [base.get_submodule(name).register_forward_hook(_adder(a, b, scale)) for name, (a, b) in factors.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _adder(a: torch.Tensor, b: torch.Tensor, scale: float):
    def hook(module, args, output):
        x = args[0].to(a.dtype)
        return output + ((x @ a.T) @ b.T * scale).to(output.dtype)

    return hook


def wrap(model, names: list[str]):
    """A peft model around `model` with an empty (zero) doc2lora adapter on `names`: the base model's outputs."""
    from peft import get_peft_model

    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():  # peft draws a random A: leave the caller's RNG as it was
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)  # peft asks transformers 5 by the old name
        peft_model = get_peft_model(model, _config(names, 1), adapter_name=ADAPTER)
    peft_model.requires_grad_(False)
    return peft_model


def install(peft_model, factors: Factors) -> None:
    """Replace the doc2lora adapter by one holding exactly `factors` (its rank is theirs)."""
    from peft import set_peft_model_state_dict

    names = sorted(factors)
    peft_model.delete_adapter(ADAPTER)
    with torch.random.fork_rng(devices=[]):
        peft_model.add_adapter(ADAPTER, _config(names, rank(factors)))
    peft_model.set_adapter(ADAPTER)
    set_peft_model_state_dict(peft_model, peft_state(factors), adapter_name=ADAPTER)
    peft_model.requires_grad_(False)


def read(peft_model) -> Factors:
    """The doc2lora adapter's factors, keyed by module name (scaling folded into B)."""
    base = unwrap(peft_model)
    out = {}
    for name, module in base.named_modules():
        if hasattr(module, "lora_A") and ADAPTER in module.lora_A:
            scaling = module.scaling[ADAPTER]
            out[name] = (module.lora_A[ADAPTER].weight.detach().clone(), module.lora_B[ADAPTER].weight.detach().clone() * scaling)
    return out


def peft_state(factors: Factors) -> dict[str, torch.Tensor]:
    """Factors under peft's own adapter keys (what `save_pretrained` writes to adapter_model.safetensors)."""
    state = {}
    for name, (a, b) in factors.items():
        state[f"base_model.model.{name}.lora_A.weight"] = a.detach().float().cpu().contiguous()
        state[f"base_model.model.{name}.lora_B.weight"] = b.detach().float().cpu().contiguous()
    return state


def from_peft_state(state: dict[str, torch.Tensor]) -> Factors:
    """The inverse of peft_state; a key that is not a doc2lora LoRA key is an InputError."""
    pattern = re.compile(r"^base_model\.model\.(.+)\.lora_([AB])\.weight$")
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = pattern.match(key)
        if not match:
            raise InputError(f"doc2lora: unexpected tensor {key!r} in the saved adapter")
        parts.setdefault(match[1], {})[match[2]] = value
    if any(set(p) != {"A", "B"} for p in parts.values()):
        raise InputError("doc2lora: saved adapter has a lora_A without its lora_B (or the reverse)")
    return {name: (p["A"], p["B"]) for name, p in parts.items()}


def _config(names: list[str], r: int):
    from peft import LoraConfig

    # lora_alpha = r: scaling 1, so the adapter's delta is exactly B·A whatever the rank.
    return LoraConfig(r=r, lora_alpha=r, target_modules=names, lora_dropout=0.0, bias="none", init_lora_weights=True)
