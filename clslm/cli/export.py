"""`clslm export`: what a session learned, for use outside clslm."""

from __future__ import annotations

from dataclasses import asdict
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..paths import DEFAULT_SESSION
from .app import DeviceOpt, JsonOpt, SessionOpt, WaitOpt, app
from .output import emit_json, err, out


class Format(str, Enum):
    merged = "merged"
    peft = "peft"
    context = "context"


HELP = """Write what a session learned for use outside clslm (details: docs/export.md).

[bold]--format merged[/bold] (default): the base model with the learned deltas folded into its weights, a standard Hugging Face directory (safetensors, config, tokenizer) for AutoModelForCausalLM.from_pretrained, vLLM, or llama.cpp / Ollama after GGUF conversion. ttt: exact for one document; neurons shared by several documents or alpha < 1 fold to first order. Every document is always on: per-question routing does not survive export.

[bold]--format peft[/bold]: a LoRA adapter (adapter_config.json, adapter_model.safetensors) for PeftModel.from_pretrained on the base model. ttt's weight changes are factored by truncated SVD at --rank; the relative error per module is reported.

[bold]--format context[/bold]: what prompt-side strategies (jitrl-mvp, jitrl-full, ace) learned: chunks, playbook or store as context.json and context.md. merged or peft on a prompt-side session writes this instead, and says so.

Every weight export is checked before it is written: its logits on a probe prompt against the session's (max abs difference in the report). ttt-linear cannot be exported unless its fast weights read the whole MLP activations (-o keys=mlp -o top_k=0): then they fold into down_proj (merged). OUT must be new or empty; --force replaces only a previous clslm export."""


@app.command("export", help=HELP)
def export_command(
    out_dir: Annotated[Path, typer.Argument(metavar="OUT", help="Directory to write: new or empty (--force replaces a previous export).", show_default=False)],
    *,
    session: SessionOpt = DEFAULT_SESSION,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="merged, peft or context (see above).")] = Format.merged,
    rank: Annotated[int, typer.Option("--rank", min=1, help="LoRA rank of a ttt peft export (truncated SVD of each module's weight change).")] = 16,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT when it holds a previous clslm export.")] = False,
    document: Annotated[Optional[str], typer.Option("--document", "-d", help="doc2lora: export this document's own LoRA (its name or hash) instead of the session's; the export says which it holds.", show_default=False)] = None,
    device: DeviceOpt = "auto",
    dtype: Annotated[str, typer.Option("--dtype", envvar="CLSLM_DTYPE", help="dtype to load and save in: auto (fp32 on CPU, bf16 on CUDA), float32, bfloat16 or float16.")] = "auto",
    wait: WaitOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    from ..session import Session

    with Session.open(session, device=device, dtype=dtype, wait=wait) as s:
        report = s.export(out_dir, format=fmt.value, rank=rank, force=force, document=document)
    if as_json:
        emit_json(asdict(report))
        return
    exact = "" if report.exact is None else (", exact" if report.exact else ", approximate")
    out.print(f"exported {report.strategy} session ({report.documents} document(s)) → {report.out} ({report.format}{exact})", markup=False, highlight=False)
    out.print("files: " + ", ".join(report.files), markup=False, highlight=False)
    if report.max_abs_logit_diff is not None:
        out.print(f"check: max |Δ logit| {report.max_abs_logit_diff:.3g} vs the session on a {report.probe_tokens}-token probe", markup=False, highlight=False)
    if report.holds:
        out.print(f"holds: {report.holds}", markup=False, highlight=False)
    if report.base_model:
        out.print(f"base model: {report.base_model}", markup=False, highlight=False)
    for note in report.notes:
        err.line(f"note: {note}")
