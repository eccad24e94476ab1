"""ttt's saved neuron patches: how their deltas are stored (float32, float16 or int8 with a scale per
neuron) and the check against the model before they are loaded (TTT.check_state_dict).

load_state_dict recreates each document's patches from the saved `index` tensors: every patch must sit on an
MLP ttt patched in this model, numbered 0..n-1, with an int64 index of neurons that exist and deltas of the
width of the model.
"""

from __future__ import annotations

import re
from typing import Any

from ..state_files import need

SAVED_KEY = re.compile(r"^(?P<module>.+)\.ttt_patches\.(?P<j>\d{1,6})\.(?P<part>index|alpha|gate|up|down|gate_scale|up_scale|down_scale)$")
DELTAS = ("gate", "up", "down")
SCALE = "_scale"


def neuron_axis(part: str) -> int:
    """The axis of a delta tensor that runs over the patch's neurons (gate/up rows, down columns)."""
    return 1 if part == "down" else 0


def quantize(delta, axis: int):
    """int8 values and one float32 scale per neuron (absmax / 127): a quarter of float32, half of float16."""
    import torch

    values = delta.detach().float()
    scale = values.abs().amax(dim=1 - axis, keepdim=True) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round(values / scale).clamp(-127, 127).to(torch.int8), scale.squeeze(1 - axis)


def dequantize(values, scale, axis: int):
    return values.float() * scale.float().unsqueeze(1 - axis)


def as_stored(delta, state_dtype: str, axis: int):
    """The delta as it reads back after saving in `state_dtype` (float32, so training and answers can use it)."""
    import torch

    if state_dtype == "int8":
        return dequantize(*quantize(delta, axis), axis).to(delta.dtype)
    return delta.detach().to(getattr(torch, state_dtype)).to(delta.dtype)


def to_saved(tensors: dict, state_dtype: str) -> dict:
    """The state dict with each delta in `state_dtype` (int8: values plus a `<part>_scale` tensor)."""
    import torch

    saved = {}
    for key, value in tensors.items():
        part = key.rsplit(".", 1)[1]
        if part not in DELTAS:
            saved[key] = value
        elif state_dtype == "int8":
            saved[key], saved[key + SCALE] = quantize(value, neuron_axis(part))
        else:
            saved[key] = value.to(getattr(torch, state_dtype))
    return saved


def from_saved(tensors: dict) -> dict:
    """The state dict with int8 deltas turned back into float32 (the inverse of to_saved)."""
    loaded = {}
    for key, value in tensors.items():
        part = key.rsplit(".", 1)[1]
        if part.endswith(SCALE):
            continue
        if part in DELTAS and key + SCALE in tensors:
            value = dequantize(value, tensors[key + SCALE], neuron_axis(part))
        loaded[key] = value
    return loaded


def check_patches(strategy, tensors: dict[str, Any]) -> None:
    """Raise ValueError naming the first saved tensor that does not fit the patches ttt would make here."""
    import torch

    modules, patches = dict(strategy.model.named_modules()), {}
    for key, value in tensors.items():
        match = SAVED_KEY.match(key)
        need(match is not None and hasattr(modules.get(match["module"]), "ttt_patches"), f"tensor {key!r} is not a neuron patch of an MLP ttt patches in this model")
        patches.setdefault(match["module"], {}).setdefault(int(match["j"]), {})[match["part"]] = value
    for module, numbered in patches.items():
        need(sorted(numbered) == list(range(len(numbered))), f"the patches of {module} are not numbered 0..{len(numbered) - 1}")
        hidden, width = modules[module].mlp.down_proj.weight.shape
        for j, parts in numbered.items():
            name = f"{module}.ttt_patches.{j}"
            need({"index", "alpha", *DELTAS} <= set(parts), f"{name} lacks {sorted({'index', 'alpha', *DELTAS} - set(parts))}")
            index = parts["index"]
            need(index.dtype == torch.int64 and index.ndim == 1, f"{name}.index should be a 1-D int64 tensor, not {index.dtype} of shape {list(index.shape)}")
            need(int(index.min()) >= 0 and int(index.max()) < width, f"{name}.index names neurons outside 0..{width - 1}")
            k = index.numel()
            for part, shape in {"gate": (k, hidden), "up": (k, hidden), "down": (hidden, k), "alpha": ()}.items():
                _check_delta(name, part, parts, shape, k)


def _check_delta(name: str, part: str, parts: dict, shape: tuple, k: int) -> None:
    """A floating-point tensor of `shape`, or int8 values with a floating-point scale per neuron."""
    import torch

    value, scale = parts[part], parts.get(part + SCALE)
    quantized = value.dtype == torch.int8 and part in DELTAS
    need(tuple(value.shape) == shape and (value.is_floating_point() or quantized), f"{name}.{part} should be floating-point or int8 of shape {list(shape)}, not {value.dtype} {list(value.shape)}")
    if quantized:
        need(scale is not None, f"{name}.{part} is int8 but {name}.{part}{SCALE} is missing")
        need(scale.is_floating_point() and tuple(scale.shape) == (k,), f"{name}.{part}{SCALE} should be floating-point of shape [{k}], not {scale.dtype} {list(scale.shape)}")
    else:
        need(scale is None, f"{name}.{part}{SCALE} is saved but {name}.{part} is not int8")
