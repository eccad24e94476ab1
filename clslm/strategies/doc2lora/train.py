"""Meta-training of the doc2lora hypernetwork on (document, question, answer) triples.

One step = one document: the frozen model reads it in the bench's in-context prompt (teacher); the
hypernetwork turns each chunk's activations into a LoRA; the model with that LoRA and only the question
(student) is scored on the answer tokens by KL(teacher ‖ student), plus an L1 penalty on the LoRA.
AdamW, gradient clipping, accelerate for devices and mixed precision (the same code runs under
`accelerate launch`: each process takes every n-th document, gradients are averaged). Validation
documents are a fixed set never trained on; their mean KL makes the curve.
"""

from __future__ import annotations

import csv
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ...benchdata import FactsDoc, load_facts
from ...errors import InputError
from .checkpoint import load_checkpoint, save_checkpoint
from .corpus import load_corpus
from .distill import Targets, kl_loss, question_probe, teach
from .hypernet import Hypernet, HypernetConfig, save_hypernet
from .lora import Factors, applied, concat, mean, module_names
from .reading import Reading, chunks, ids, read_chunks, reader_prefix
from .synthetic import synthetic_doc

VALIDATION_SEED_OFFSET = 1_000_003  # validation documents come from another stream than training ones


@dataclass
class TrainSettings:
    steps: int = 1000  # documents to train on (one optimizer step each)
    data: str | None = None  # JSONL in the bench facts format, plain text, or a folder of them (corpus.py); None: invented documents
    seed: int = 0
    val_docs: int = 24
    eval_every: int = 100
    qa_per_doc: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.01
    l1: float = 1e-3
    clip: float = 1.0
    schedule: str = "cosine"  # "cosine": warm up over `warmup` steps, then decay to lr/10 at `steps`; "constant"
    warmup: int = 20
    init: str | None = None  # start from this hypernetwork file's weights (a fresh optimizer, step 0)
    rank: int = 8
    width: int = 128
    blocks: int = 2
    heads: int = 4
    targets: str = "down_proj"
    layers: float = 1.0
    chunk_tokens: int = 128
    combine: str = "mean"  # a document's chunk LoRAs: "mean" (as the strategy's default) or "concat"
    max_minutes: float | None = None  # stop (and save) after this much wall time

    def check(self) -> None:
        positive = {k: getattr(self, k) for k in ("steps", "val_docs", "eval_every", "qa_per_doc", "lr", "rank", "width", "blocks", "heads", "chunk_tokens")}
        bad = [k for k, v in positive.items() if v <= 0]
        if bad or not 0 < self.layers <= 1 or self.l1 < 0 or self.clip <= 0 or self.weight_decay < 0:
            raise InputError(f"doc2lora train: bad settings {bad or '(layers, l1, clip or weight_decay)'}")
        if self.width % self.heads:
            raise InputError("doc2lora train: width must be a multiple of heads")
        if self.combine not in ("mean", "concat"):
            raise InputError(f"doc2lora train: combine {self.combine!r}: choose mean or concat")
        if self.schedule not in ("cosine", "constant") or self.warmup < 0:
            raise InputError(f"doc2lora train: schedule {self.schedule!r} / warmup {self.warmup}: choose cosine or constant, warmup >= 0")

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step `step` (0-based): a pure function of the step, so resuming needs no scheduler state."""
        if self.schedule == "constant":
            return self.lr
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.steps - self.warmup))
        return self.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


# ---- data ------------------------------------------------------------------------------------------------
def load_data(settings: TrainSettings) -> tuple[Callable[[int], FactsDoc], list[FactsDoc], str]:
    """(training document by index, validation documents, a one-line description of the data)."""
    if settings.data is None:
        val = [synthetic_doc(settings.seed + VALIDATION_SEED_OFFSET, i) for i in range(settings.val_docs)]
        return (lambda i: synthetic_doc(settings.seed, i)), val, f"invented documents (clslm.strategies.doc2lora.synthetic, seed {settings.seed}; validation seed {settings.seed + VALIDATION_SEED_OFFSET})"
    docs = load_corpus(settings.data)
    _refuse_bench_documents(docs, settings.data)
    if len(docs) <= settings.val_docs:
        raise InputError(f"{settings.data}: {len(docs)} documents; need more than --val-docs {settings.val_docs}")
    train, val = docs[: -settings.val_docs], docs[-settings.val_docs :]
    return (lambda i: train[i % len(train)]), val, f"{settings.data}: {len(train)} training and {len(val)} validation documents"


def _refuse_bench_documents(docs: list[FactsDoc], path: str) -> None:
    bench = {" ".join(d.document.split()) for d in load_facts()}
    for doc in docs:
        if " ".join(doc.document.split()) in bench:
            raise InputError(f"{path}: document {doc.id!r} is a bench document; training on it would inflate `clslm bench`")


# ---- one document -----------------------------------------------------------------------------------------
class Episode:
    """A document's teacher targets and the activations of its chunks (computed without gradients)."""

    def __init__(self, model, tokenizer, doc: FactsDoc, layers: list[int], names: list[str], chunk_tokens: int, questions: int, rng: random.Random):
        prefix = reader_prefix(tokenizer)
        pieces = chunks(tokenizer, doc.document, chunk_tokens)
        probes = [question_probe(qa.question, qa.answers[0]) for qa in rng.sample(list(doc.qa), k=min(questions, len(doc.qa)))]
        document = [t for piece in pieces for t in piece]
        self.targets: Targets = teach(model, tokenizer, prefix, document, probes, (layers, names) if len(pieces) == 1 else None)
        self.readings = [self.targets.reading] if len(pieces) == 1 else read_chunks(model, prefix, pieces, layers, names)


def generate(net, names: list[str], readings: list[Reading], combine: str) -> tuple[Factors, list]:
    """The document's LoRA (one hypernetwork pass per chunk, chunk LoRAs averaged or stacked) and the raw passes."""
    passes = [net(r) for r in readings]
    parts = [dict(zip(names, pairs)) for pairs in passes]
    return (mean(parts) if combine == "mean" else concat(parts)), passes


def episode_loss(model, net, plain_net: Hypernet, names: list[str], episode: Episode, pad_id: int, l1: float, combine: str) -> tuple[torch.Tensor, float]:
    """(KL + l1 · penalty, the KL alone); `plain_net` is `net` without a distributed wrapper."""
    factors, passes = generate(net, names, episode.readings, combine)
    with applied(model, factors):
        kl = kl_loss(model, episode.targets, pad_id)
    penalty = torch.stack([plain_net.penalty(pairs) for pairs in passes]).mean()
    return kl + l1 * penalty, float(kl.detach())


@torch.no_grad()
def module_norms(model, names: list[str], sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean per-token norm of each named module's input and output over `sequences` (the hypernetwork's scales)."""
    sums = torch.zeros(2, len(names))
    count = 0

    def recorder(i):
        def hook(module, args, output):
            sums[0, i] += args[0].float().norm(dim=-1).sum().cpu()
            sums[1, i] += output.float().norm(dim=-1).sum().cpu()

        return hook

    handles = [model.get_submodule(n).register_forward_hook(recorder(i)) for i, n in enumerate(names)]
    try:
        for seq in sequences:
            model(input_ids=torch.tensor([seq], device=model.device), use_cache=False, logits_to_keep=1)
            count += len(seq)
    finally:
        for handle in handles:
            handle.remove()
    return sums[0] / count, sums[1] / count


# ---- the run ---------------------------------------------------------------------------------------------
class Trainer:
    def __init__(self, model, tokenizer, settings: TrainSettings, out: Path, *, fingerprint: str, mixed_precision: str = "no", cpu: bool = False):
        from accelerate import Accelerator

        settings.check()
        self.settings, self.out, self.tokenizer = settings, Path(out), tokenizer
        self.accelerator = Accelerator(mixed_precision=mixed_precision, cpu=cpu)
        self.model = model.to(self.accelerator.device).eval().requires_grad_(False)
        from ..anatomy import last_layers

        self.layers = last_layers(model, settings.layers)
        self.names = module_names(model, self.layers, [t.strip() for t in settings.targets.split(",") if t.strip()])
        self.config = self._net_config(fingerprint)
        self.doc_at, self.val_docs, self.data_description = load_data(settings)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.step, self.seconds, self.curve, self.train_kl = 0, 0.0, [], []

    def _net_config(self, fingerprint: str) -> HypernetConfig:
        s = self.settings
        targets = [t.strip() for t in s.targets.split(",") if t.strip()]
        shapes = [list(self.model.get_submodule(n).weight.shape[::-1]) for n in self.names[: len(targets)]]
        return HypernetConfig(
            d_model=self.model.config.hidden_size, layers=self.layers, targets=targets, shapes=shapes, rank=s.rank,
            width=s.width, heads=s.heads, blocks=s.blocks, chunk_tokens=s.chunk_tokens, model_fingerprint=fingerprint,
        )  # fmt: skip

    def build(self, resume: bool) -> None:
        """Create (or restore from out/checkpoint.safetensors) the hypernetwork and its optimizer."""
        torch.manual_seed(self.settings.seed)
        net = Hypernet(self.config)
        prefix = reader_prefix(self.tokenizer)
        net.set_scales(*module_norms(self.model, self.names, [prefix + ids(self.tokenizer, d.document) for d in self.val_docs[:8]]))
        optimizer = torch.optim.AdamW(net.parameters(), lr=self.settings.lr, weight_decay=self.settings.weight_decay)
        if self.settings.init:
            self._start_from(net, Path(self.settings.init).expanduser())
        checkpoint = self.out / "checkpoint.safetensors"
        if resume and checkpoint.is_file():
            config, weights, optim_state, progress = load_checkpoint(checkpoint)
            if asdict(config) | {"extra": {}} != asdict(self.config) | {"extra": {}}:
                raise InputError(f"{checkpoint}: made with other settings or another model; use another --out or drop --resume")
            net.load_state_dict(weights)
            optimizer.load_state_dict(optim_state)
            self.step, self.seconds, self.curve = progress["step"], progress["seconds"], progress["curve"]
        self.net, self.optimizer = self.accelerator.prepare(net, optimizer)
        self.plain_net = self.accelerator.unwrap_model(self.net)
        self.val_episodes = [self._episode(doc, f"val:{doc.id}") for doc in self.val_docs]
        self.base_val_kl = self.base_kl()

    def _start_from(self, net: Hypernet, path: Path) -> None:
        """Copy a hypernetwork file's weights (and its scales) into `net`; refuse one of another shape or model."""
        from .hypernet import load_hypernet

        source = load_hypernet(path)
        mine, theirs = asdict(self.config), asdict(source.config)
        if {k: v for k, v in theirs.items() if k != "extra"} != {k: v for k, v in mine.items() if k != "extra"}:
            raise InputError(f"{path}: --init hypernetwork has other settings or another model than this run (rank, width, layers, chunk size, targets)")
        net.load_state_dict(source.state_dict())

    def _episode(self, doc: FactsDoc, key: str) -> Episode:
        rng = random.Random(f"{self.settings.seed}:{key}")
        with self.accelerator.autocast():
            return Episode(self.model, self.tokenizer, doc, self.layers, self.names, self.settings.chunk_tokens, self.settings.qa_per_doc, rng)

    def indices(self) -> Iterator[int]:
        """This process's training documents from the current step on (every n-th under accelerate launch)."""
        n, rank = self.accelerator.num_processes, self.accelerator.process_index
        for step in range(self.step, self.settings.steps):
            yield step * n + rank

    def train_step(self, index: int) -> float:
        self.net.train()
        episode = self._episode(self.doc_at(index), f"train:{index}")
        with self.accelerator.autocast():
            loss, kl = episode_loss(self.model, self.net, self.plain_net, self.names, episode, self.pad, self.settings.l1, self.settings.combine)
        self.accelerator.backward(loss)
        self.accelerator.clip_grad_norm_(self.net.parameters(), self.settings.clip)
        for group in self.optimizer.param_groups:
            group["lr"] = self.settings.lr_at(self.step)
        self.optimizer.step()
        self.optimizer.zero_grad()
        return kl

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Mean validation KL with each document's own LoRA, and with the next document's LoRA (what is
        not specific to the document). Never updates anything."""
        self.net.eval()
        episodes = self.val_episodes
        with self.accelerator.autocast():
            own = [self._kl(e, e) for e in episodes]
            other = [self._kl(e, episodes[(i + 1) % len(episodes)]) for i, e in enumerate(episodes)]
        return sum(own) / len(own), sum(other) / len(other)

    def _kl(self, questions: Episode, document: Episode) -> float:
        factors, _ = generate(self.net, self.names, document.readings, self.settings.combine)
        with applied(self.model, factors):
            return float(kl_loss(self.model, questions.targets, self.pad))

    @torch.no_grad()
    def base_kl(self) -> float:
        """Validation KL with no LoRA at all: where the curve starts from."""
        with self.accelerator.autocast():
            kls = [float(kl_loss(self.model, e.targets, self.pad)) for e in self.val_episodes]
        return sum(kls) / len(kls)

    def run(self, on_step: Callable[[int, float], None] = lambda step, kl: None) -> dict[str, Any]:
        """Train to settings.steps (or max_minutes), evaluating every eval_every steps; returns the curve."""
        if not self.curve:
            self._record(self.evaluate())
        started, budget = time.perf_counter() - self.seconds, self.settings.max_minutes
        for index in self.indices():
            self.train_kl.append(self.train_step(index))
            self.step += 1
            self.seconds = time.perf_counter() - started
            on_step(self.step, self.train_kl[-1])
            out_of_time = budget is not None and self.seconds > budget * 60
            if self.step % self.settings.eval_every == 0 or self.step == self.settings.steps or out_of_time:
                self._record(self.evaluate())
                self.save()
            if out_of_time:
                break
        return self.report()

    def _record(self, val_kl: tuple[float, float]) -> None:
        window = self.train_kl[-self.settings.eval_every :]
        train = round(sum(window) / len(window), 5) if window else None
        own, other = val_kl
        self.curve.append({"step": self.step, "seconds": round(self.seconds, 1), "train_kl": train, "val_kl": round(own, 5), "val_kl_other_doc": round(other, 5)})
        self.train_kl = []

    def report(self) -> dict[str, Any]:
        return {"steps": self.step, "seconds": round(self.seconds, 1), "base_val_kl": round(self.base_val_kl, 5), "curve": self.curve, "data": self.data_description}

    def save(self) -> None:
        """Checkpoint (for --resume), the final-format hypernetwork, its description, the curve (main process only)."""
        if not self.accelerator.is_main_process:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        net = self.plain_net
        progress = {"step": self.step, "seconds": self.seconds, "curve": self.curve}
        save_checkpoint(self.out / "checkpoint.safetensors", net, self.optimizer, progress)
        net.config.extra = {"trained": {"steps": self.step, "seconds": round(self.seconds, 1), "data": self.data_description}}
        save_hypernet(net, self.out / "hypernet.safetensors")
        write_curve(self.out, self.report(), asdict(self.settings))


def write_curve(out: Path, report: dict[str, Any], settings: dict[str, Any]) -> None:
    from ...atomic import write_json_atomic
    from ...models import file_sha256

    write_json_atomic(out / "curve.json", report | {"settings": settings, "hypernet_sha256": file_sha256(out / "hypernet.safetensors")})
    with open(out / "curve.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["step", "seconds", "train_kl", "val_kl", "val_kl_other_doc"])
        writer.writeheader()
        writer.writerows(report["curve"])


def plot_curve(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = report["curve"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([p["step"] for p in points], [p["val_kl"] for p in points], marker="o", label="validation KL (its own document's LoRA)")
    ax.plot([p["step"] for p in points], [p["val_kl_other_doc"] for p in points], marker="x", label="validation KL (another document's LoRA)")
    trained = [p for p in points if p["train_kl"] is not None]
    ax.plot([p["step"] for p in trained], [p["train_kl"] for p in trained], marker=".", alpha=0.6, label="training KL (window mean)")
    ax.axhline(report["base_val_kl"], color="grey", linestyle="--", label="no LoRA")
    ax.set_xlabel("training documents")
    ax.set_ylabel("KL(teacher ‖ student), nats/token")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

