"""`clslm export`: what a session learned, in the forms the ecosystem loads without clslm.

- merged: the base model with the learned deltas folded into its own weights, a standard Hugging Face
  directory (safetensors, config, tokenizer) for `AutoModelForCausalLM.from_pretrained`.
- peft: a LoRA adapter directory for `PeftModel.from_pretrained` on the base model.
- context: what prompt-side strategies learned (chunks, playbook, store) as JSON and Markdown.

Every weight export is checked before it is written: the exported model's logits on a probe prompt
against the session's own, with every learned document on; the largest difference is reported.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .errors import InputError
from .generation import chat_prompt
from .strategies.base import Strategy

FORMATS = ("merged", "peft", "context")
MARKER = "clslm-export.json"  # in every export: what wrote it, and what `--force` may replace
PROBE = "Tell me what you have read about: who, what, where and when?"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass
class ExportReport:
    """What an export wrote; its asdict() is the --json output and OUT/clslm-export.json."""

    out: str
    format: str
    strategy: str
    model: str
    documents: int
    exact: bool | None = None  # weights: reproduces the session (every document on) up to float rounding
    max_abs_logit_diff: float | None = None  # exported model vs the session, on the probe prompt
    probe_tokens: int = 0
    rank: int | None = None  # peft: the LoRA rank
    layers: list[dict[str, Any]] = field(default_factory=list)  # peft: relative error per module
    base_model: str | None = None  # peft: the base model the adapter is for
    holds: str | None = None  # weights of a strategy with per-document adapters: the session's, or one document's (--document)
    notes: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def export(session, out: str | Path, *, format: str = "merged", rank: int = 16, force: bool = False, document: str | None = None) -> ExportReport:
    """Write what `session` learned to the directory `out` (see the module docstring for the formats);
    `document` (a name or hash) exports that document's own adapter, where the strategy keeps one."""
    if format not in FORMATS:
        raise InputError(f"unknown export format {format!r}; choose from {', '.join(FORMATS)}")
    if rank < 1:
        raise InputError(f"--rank {rank}: must be >= 1")
    out = Path(out)
    check_out(out, force)
    strategy = session.strategy()
    report = ExportReport(str(out), format, session.strategy_name, session.model_ref, len(session.documents))
    report.format = _effective_format(strategy, format, report.notes)
    if report.format != "context":
        report.holds = _scope(session, strategy, document)
        report.notes += strategy.export_notes()
    with staging(out) as tmp:
        if report.format == "context":
            write_context(session, strategy, tmp, report)
        elif report.format == "merged":
            write_merged(strategy, tmp, report)
        else:
            write_peft(strategy, tmp, report, rank)
        report.files = sorted([*(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file()), MARKER])
        marker = asdict(report) | {"clslm_version": __version__, "session": str(session.path)}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return report


def _scope(session, strategy: Strategy, document: str | None) -> str | None:
    """What the exported weights hold, for strategies that keep each document's own adapter (export_scope);
    with `document`, that document's adapter is put in place first."""
    from .session_documents import find

    scope = getattr(strategy, "export_scope", None)
    if scope is None:
        if document is not None:
            raise InputError(f"--document: {strategy.name} keeps no adapter per document; it exports what the whole session learned")
        return None
    return scope(None if document is None else find(session.documents, document)[-1])


def _effective_format(strategy: Strategy, format: str, notes: list[str]) -> str:
    """The format really written: prompt-side strategies always give their context."""
    in_weights = strategy.learns_in_weights()
    if format == "context" and in_weights:
        raise InputError(f"{strategy.name} learns into the model's weights, not the prompt: export it with --format merged or --format peft")
    if format != "context" and not in_weights:
        notes.append(f"{strategy.name} keeps what it learned in the prompt, not in the weights: wrote its context instead of {format} weights (the base model is unchanged)")
        return "context"
    refusal = strategy.cannot_export(format)
    if refusal:
        raise InputError(refusal)
    return format


# ---- OUT -------------------------------------------------------------------------------------------


def check_out(out: Path, force: bool) -> None:
    """OUT must be new or empty, in a directory this process can write; --force replaces only a previous
    clslm export holding nothing but the files it wrote, never anything else (checked before the long work)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    _check_writable_parent(out)
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise InputError(f"{out}: exists and is not empty (pass --force to replace a previous export)")
        if not (out / MARKER).is_file():
            raise InputError(f"{out}: not empty and not a clslm export (no {MARKER}); --force replaces only a previous export, so nothing was deleted")
        added = sorted(set(_files(out)) - set(_exported_files(out)))
        if added:
            shown = ", ".join(added[:3]) + (f" and {len(added) - 3} more" if len(added) > 3 else "")
            raise InputError(f"{out}: holds files the previous export did not write ({shown}); --force would delete them, so nothing was deleted")


def _check_writable_parent(out: Path) -> None:
    """The nearest existing ancestor of OUT's parent must be a directory this process may write in."""
    parent = Path(os.path.abspath(out)).parent
    while not parent.exists() and parent != parent.parent:
        if parent.is_symlink():  # a dangling link: mkdir fails on it
            break
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{out}: cannot be made: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{out}: cannot be made: {parent} is not writable")


def _files(directory: Path) -> list[str]:
    return [str(p.relative_to(directory)) for p in directory.rglob("*") if not p.is_dir()]


def _exported_files(out: Path) -> list[str]:
    """The files a previous export listed in its marker (none when the marker does not read)."""
    try:
        files = json.loads((out / MARKER).read_text(encoding="utf-8")).get("files", [])
    except (OSError, ValueError, AttributeError, RecursionError):
        return []
    return [f for f in files if isinstance(f, str)] if isinstance(files, list) else []


@contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A fresh directory beside OUT that replaces OUT when the block succeeds (and is removed if not)."""
    out = Path(os.path.abspath(out))
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as e:  # what check_out could not foresee: a read-only file system, a race
        raise InputError(f"{out}: cannot write here ({e.strerror or e})") from None
    try:
        yield tmp
        _readable(tmp)
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _readable(directory: Path) -> None:
    """Files as the umask would make them: safetensors writes 0600, an export is meant to be shared."""
    mask = os.umask(0)
    os.umask(mask)
    for path in directory.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~mask)


# ---- merged ----------------------------------------------------------------------------------------


def write_merged(strategy: Strategy, tmp: Path, report: ExportReport) -> None:
    probe, reference = _reference(strategy)
    merged = strategy.export_merged()
    report.exact = merged.exact
    report.notes += merged.notes
    _check(report, merged.model, probe, reference)
    merged.model.save_pretrained(tmp)
    strategy.tokenizer.save_pretrained(tmp)


# ---- peft ------------------------------------------------------------------------------------------


def write_peft(strategy: Strategy, tmp: Path, report: ExportReport, rank: int) -> None:
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    probe, reference = _reference(strategy)
    exported = strategy.export_adapter(rank)
    adapter, report.exact, report.rank, report.layers = exported.model, exported.exact, exported.rank, exported.layers
    report.notes += exported.notes
    _check(report, adapter, probe, reference)
    name = adapter.active_adapter
    config = adapter.peft_config[name]
    config.base_model_name_or_path = report.base_model = adapter.get_base_model().name_or_path
    config.inference_mode = True
    config.save_pretrained(tmp)  # adapter_config.json: peft_type, r, lora_alpha, target_modules, base model
    state = get_peft_model_state_dict(adapter, adapter_name=name)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, tmp / ADAPTER_FILES[1], metadata={"format": "pt"})


# ---- context ---------------------------------------------------------------------------------------


def write_context(session, strategy: Strategy, tmp: Path, report: ExportReport) -> None:
    """context.json (everything the strategy keeps as JSON), context.md (readable), store.safetensors."""
    extra, tensors = strategy.extra_state(), strategy.state_dict()
    documents = [{k: d.get(k) for k in ("name", "sha256", "tokens")} for d in session.documents]
    data = {"strategy": strategy.name, "model": session.model_ref, "config": session.manifest["strategy"]["config"], "documents": documents, "state": extra}
    (tmp / "context.json").write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (tmp / "context.md").write_text(context_markdown(strategy, documents, extra), encoding="utf-8")
    if tensors:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp / "store.safetensors", metadata={"strategy": strategy.name})
        report.notes.append(f"{strategy.name}'s store (store.safetensors) acts only inside clslm's decoding loop; context.md describes it")


def context_markdown(strategy: Strategy, documents: list[dict], extra: dict[str, Any]) -> str:
    lines = [f"# What {strategy.name} learned", "", "Documents: " + (", ".join(d["name"] for d in documents) or "none yet"), ""]
    lines += strategy.context_markdown(extra)
    return "\n".join(lines)


# ---- the check -------------------------------------------------------------------------------------


def _reference(strategy: Strategy):
    """The probe's token ids and the session's logits on them (outside routing: every document on)."""
    tokenizer = strategy.tokenizer
    device = next(strategy.model.parameters()).device
    probe = tokenizer(chat_prompt(tokenizer, PROBE), return_tensors="pt", add_special_tokens=False)["input_ids"].to(device)
    return probe, _logits(strategy.model, probe)


def _logits(model, ids):
    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model(input_ids=ids).logits.float()


def _check(report: ExportReport, model, probe, reference) -> None:
    report.max_abs_logit_diff = float((_logits(model, probe) - reference).abs().max())
    report.probe_tokens = int(probe.shape[1])

