"""`clslm doc2lora train`: meta-train a doc2lora hypernetwork (a Typer sub-app of the main app)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InputError
from ..models import DEFAULT_MODEL
from .app import DtypeOpt, JsonOpt, app
from .output import emit_json, err, out
from .progress import Reporter

doc2lora_app = typer.Typer(no_args_is_help=True, help="Tools for the doc2lora strategy's hypernetwork.")
app.add_typer(doc2lora_app, name="doc2lora")


def _opt(help: str, **kw):
    return typer.Option(help=help, **kw)


@doc2lora_app.command("train")
def train(
    *,
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for hypernet.safetensors, checkpoint.safetensors, curve.json/csv.")] = Path("doc2lora-hypernet"),
    data: Annotated[Optional[Path], _opt("Training documents: JSONL in the bench facts format (id, title, document, qa), a plain text file (.txt, .md: cut at blank lines, questions made from its sentences) or a folder of them; default: invented documents.", show_default=False)] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", envvar="CLSLM_MODEL", help="Model the hypernetwork is for: smollm2-135m (default), a .gguf file, a local HF directory or a hub id.", show_default=False)] = None,
    steps: Annotated[int, _opt("Training documents (one optimizer step each).", min=1)] = 1000,
    resume: Annotated[bool, _opt("Continue from OUT/checkpoint.safetensors if it is there.")] = False,
    max_minutes: Annotated[Optional[float], _opt("Stop after this much wall time (the hypernetwork is saved).", min=0.1, show_default=False)] = None,
    val_docs: Annotated[int, _opt("Validation documents (never trained on).", min=1)] = 24,
    eval_every: Annotated[int, _opt("Steps between validations.", min=1)] = 100,
    qa_per_doc: Annotated[int, _opt("Questions per document per step.", min=1)] = 4,
    lr: Annotated[float, _opt("AdamW learning rate.", min=0.0)] = 1e-3,
    l1: Annotated[float, _opt("Weight of the L1 penalty on the generated LoRA.", min=0.0)] = 1e-3,
    clip: Annotated[float, _opt("Gradient-norm clip.", min=0.0)] = 1.0,
    schedule: Annotated[str, _opt("Learning rate: cosine (warm up, then decay to lr/10 at --steps) or constant.")] = "cosine",
    warmup: Annotated[int, _opt("Warm-up steps of the cosine schedule.", min=0)] = 20,
    init: Annotated[Optional[Path], _opt("Start from this hypernetwork file (e.g. the bundled one) with a fresh optimizer; same settings required.", show_default=False)] = None,
    rank: Annotated[int, _opt("LoRA rank per chunk.", min=1)] = 8,
    width: Annotated[int, _opt("Hypernetwork width (latent size).", min=8)] = 128,
    blocks: Annotated[int, _opt("Cross-attention blocks.", min=1)] = 2,
    targets: Annotated[str, _opt("Comma-separated modules inside a decoder layer that get a LoRA.")] = "down_proj",
    layers: Annotated[float, _opt("Fraction of the last decoder layers that get a LoRA.", min=0.0, max=1.0)] = 1.0,
    chunk_tokens: Annotated[int, _opt("Longest chunk the hypernetwork reads.", min=8)] = 128,
    combine: Annotated[str, _opt("A document's chunk LoRAs: mean (the strategy's default) or concat (summed).")] = "mean",
    seed: Annotated[int, _opt("Seed for the invented documents and the initial weights.")] = 0,
    device: Annotated[str, _opt("auto, cpu or cuda (under `accelerate launch`, accelerate places each process).")] = "auto",
    dtype: DtypeOpt = "auto",
    mixed_precision: Annotated[str, _opt("no, fp16 or bf16 (accelerate autocast).")] = "no",
    plot: Annotated[Optional[Path], _opt("Also draw the validation-KL curve to this PNG.", show_default=False)] = None,
    as_json: JsonOpt = False,
) -> None:
    """Meta-train the hypernetwork: KL to the document-in-context teacher over answer tokens, L1 on the LoRA."""
    from ..models import load_model, resolve_model
    from ..strategies.doc2lora.train import Trainer, TrainSettings, plot_curve

    if mixed_precision not in ("no", "fp16", "bf16"):
        raise InputError(f"--mixed-precision {mixed_precision!r}: choose no, fp16 or bf16")
    settings = TrainSettings(
        steps=steps, data=str(data) if data else None, seed=seed, val_docs=val_docs, eval_every=eval_every, qa_per_doc=qa_per_doc,
        lr=lr, l1=l1, clip=clip, schedule=schedule, warmup=warmup, init=str(init) if init else None, rank=rank, width=width, blocks=blocks, heads=4 if width % 4 == 0 else 1,
        targets=targets, layers=layers, chunk_tokens=chunk_tokens, combine=combine, max_minutes=max_minutes,
    )  # fmt: skip
    source = resolve_model(model or DEFAULT_MODEL)
    base, tokenizer = load_model(source, device="cpu" if device == "auto" else device, dtype=dtype)
    trainer = Trainer(base, tokenizer, settings, out_dir, fingerprint=source.fingerprint, mixed_precision=mixed_precision, cpu=device == "cpu")
    err.print(f"doc2lora: preparing {val_docs} validation documents", highlight=False)
    trainer.build(resume)
    with Reporter(err, enabled=trainer.accelerator.is_main_process) as reporter:
        report = trainer.run(on_step=lambda step, kl: reporter.update("doc2lora train", step, steps, _losses(trainer, kl)))
    if plot is not None and trainer.accelerator.is_main_process:
        plot_curve(report, plot)
    if as_json:
        emit_json(report | {"out": str(out_dir)})
        return
    first, last = report["curve"][0]["val_kl"], report["curve"][-1]["val_kl"]
    out.print(f"trained {report['steps']} steps in {report['seconds'] / 60:.1f} min; validation KL {first:.3f} → {last:.3f} (no LoRA {report['base_val_kl']:.3f})")
    out.print(f"wrote {out_dir / 'hypernet.safetensors'} (use with -o hypernet=PATH) and {out_dir / 'curve.csv'}", highlight=False)


def _losses(trainer, kl: float) -> str:
    """The latest training KL and the latest validation KL."""
    val = f"{trainer.curve[-1]['val_kl']:.3f}" if trainer.curve else "-"
    return f"kl {kl:.3f}, val {val}"
