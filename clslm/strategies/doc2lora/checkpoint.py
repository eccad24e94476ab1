"""Trainer checkpoints as safetensors only: hypernetwork weights, AdamW state and the run's progress.

Tensors go in the file; what is not a tensor (optimizer hyperparameters, step, curve, settings) goes in
its metadata as JSON, so resuming never unpickles anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ...atomic import write_atomic
from ...errors import InputError
from .hypernet import Hypernet, HypernetConfig

CHECKPOINT_FORMAT = "clslm-doc2lora-checkpoint/1"


def save_checkpoint(path: Path, net: Hypernet, optimizer: torch.optim.Optimizer, progress: dict[str, Any]) -> None:
    from dataclasses import asdict

    from safetensors.torch import save

    tensors = {f"net.{k}": v.detach().float().cpu().contiguous() for k, v in net.state_dict().items()}
    state = optimizer.state_dict()
    for index, slots in state["state"].items():
        for key, value in slots.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).detach().float().cpu().contiguous()
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "config": json.dumps(asdict(net.config)),
        "param_groups": json.dumps(state["param_groups"]),
        "progress": json.dumps(progress),
    }
    data = save(tensors, metadata=metadata)
    write_atomic(path, lambda tmp: tmp.write_bytes(data))


def load_checkpoint(path: Path) -> tuple[HypernetConfig, dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(config, net weights, optimizer state_dict, progress) of a checkpoint written by save_checkpoint."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise InputError(f"{path}: unreadable checkpoint ({e})") from None
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: not a doc2lora training checkpoint")
    weights = {k.removeprefix("net."): v for k, v in tensors.items() if k.startswith("net.")}
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            slots.setdefault(int(index), {})[name] = value
    optimizer = {"state": slots, "param_groups": json.loads(metadata["param_groups"])}
    return HypernetConfig(**json.loads(metadata["config"])), weights, optimizer, json.loads(metadata["progress"])

