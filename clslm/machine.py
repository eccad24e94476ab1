"""The machine a benchmark ran on: peak memory of this process, hardware and library versions."""

from __future__ import annotations

import os
import platform
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

from . import __version__


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process so far, MB (None where getrusage is unavailable)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6, 1)


def machine_info(device: str = "auto", dtype: str = "auto") -> dict[str, Any]:
    """What a benchmark figure depends on: CPU, threads, device and dtype, library versions, date."""
    import datetime as dt

    import torch
    import transformers

    from .models import pick_device, pick_dtype

    device = pick_device(device)
    info = {
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "dtype": str(pick_dtype(dtype, device)).removeprefix("torch."),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "clslm": __version__,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _cpu_name() -> str:
    return _cpuinfo("model name").strip() or platform.processor() or platform.machine()


@lru_cache(maxsize=None)
def _cpuinfo(field: str) -> str:
    """The first value of `field` in Linux's /proc/cpuinfo ('' elsewhere or when absent)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return next((line.split(":", 1)[1] for line in lines if line.startswith(field) and ":" in line), "")


def fast_bfloat16(device: "torch.device") -> bool:
    """Whether bfloat16 matrix products run natively here (faster than float32): a CUDA GPU that supports
    them, or a CPU with AVX512-BF16 or AMX (Linux's /proc/cpuinfo flags; elsewhere assumed not)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(_cpuinfo("flags").split()))
