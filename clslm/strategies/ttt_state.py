"""ttt's saved neuron patches, checked against the model before they are loaded (TTT.check_state_dict).

load_state_dict recreates each document's patches from the saved `index` tensors: every patch must sit on an
MLP ttt patched in this model, numbered 0..n-1, with an int64 index of neurons that exist and deltas of the
width of the model.
"""

from __future__ import annotations

import re
from typing import Any

from ..state_files import need

SAVED_KEY = re.compile(r"^(?P<module>.+)\.ttt_patches\.(?P<j>\d{1,6})\.(?P<part>index|alpha|gate|up|down)$")


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
            need(len(parts) == 5, f"{name} lacks {sorted({'index', 'alpha', 'gate', 'up', 'down'} - set(parts))}")
            index = parts["index"]
            need(index.dtype == torch.int64 and index.ndim == 1, f"{name}.index should be a 1-D int64 tensor, not {index.dtype} of shape {list(index.shape)}")
            need(int(index.min()) >= 0 and int(index.max()) < width, f"{name}.index names neurons outside 0..{width - 1}")
            k = index.numel()
            for part, shape in {"gate": (k, hidden), "up": (k, hidden), "down": (hidden, k), "alpha": ()}.items():
                ok = tuple(parts[part].shape) == shape and parts[part].is_floating_point()
                need(ok, f"{name}.{part} should be floating-point of shape {list(shape)}, not {parts[part].dtype} {list(parts[part].shape)}")
