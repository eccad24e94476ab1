"""Where things are inside a decoder-only transformers model (Llama, Qwen2, Gemma 3, Mistral, ...)."""

from __future__ import annotations

import inspect
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import InputError


def decoder_layers(model) -> nn.ModuleList:
    base = getattr(model, "base_model", model)
    for path in ("model.layers", "layers", "model.model.layers"):
        obj = base
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, nn.ModuleList):
            return obj
    raise InputError(f"{type(model).__name__}: cannot find its decoder layers (supported: Llama, Qwen2, Gemma 3 and alike)")


def last_layers(model, fraction: float) -> list[int]:
    """Indices of the last `fraction` of decoder layers (at least one)."""
    n = len(decoder_layers(model))
    count = max(1, round(n * fraction))
    return list(range(n - count, n))


def gated_mlp(layer: nn.Module) -> nn.Module:
    mlp = getattr(layer, "mlp", None)
    while mlp is not None and not hasattr(mlp, "gate_proj") and hasattr(mlp, "mlp"):
        mlp = mlp.mlp  # a strategy's wrapper (e.g. ttt's DualMLP) around the original MLP
    if mlp is None or not all(hasattr(mlp, p) for p in ("gate_proj", "up_proj", "down_proj", "act_fn")):
        raise InputError(f"{type(layer).__name__}: needs a gated MLP (gate_proj, up_proj, down_proj)")
    return mlp


def cache_of(output):
    """The KV cache a forward pass with use_cache=True returned."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def cache_kwarg(model, cache) -> dict:
    """transformers 5.x renamed `past_key_values` to `cache`; pass whichever this version takes."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # under a peft wrapper
    return {"cache": cache} if "cache" in inspect.signature(inner.forward).parameters else {"past_key_values": cache}


class _Replay(nn.Module):
    """Stands in for a frozen decoder layer: passes hidden states through, or emits cached ones."""

    def __init__(self, value: torch.Tensor | None = None):
        super().__init__()
        self.value = value

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states if self.value is None else self.value


@contextmanager
def replay_prefix(model, start: int, hidden: torch.Tensor):
    """Run only layers >= start, feeding `hidden` (the input of layer `start`, computed once).

    Training touches only the last layers, so the frozen prefix gives the same hidden states every
    epoch: computing them once makes each later epoch several times cheaper.
    """
    layers = decoder_layers(model)
    saved = [layers[i] for i in range(start)]
    for i in range(start):
        layers[i] = _Replay(hidden if i == start - 1 else None)
    try:
        yield
    finally:
        for i, layer in enumerate(saved):
            layers[i] = layer


def hidden_before(model, start: int, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor | None:
    """Hidden states entering decoder layer `start` (None when start is 0: nothing to skip)."""
    if start == 0:
        return None
    captured = {}
    layers = decoder_layers(model)

    def grab(module, args, kwargs):
        captured["h"] = (args[0] if args else kwargs["hidden_states"]).detach()
        raise _Stop

    handle = layers[start].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured["h"]


class _Stop(Exception):
    pass
