"""The `doc2lora` strategy: a document becomes a peft LoRA on the MLP down-projections.

mode=hypernet (default): one forward pass of a trained Perceiver hypernetwork per chunk of the document
(`hypernet.py`; the bundled one is for the default model, `clslm doc2lora train` makes others).
mode=simulated: no hypernetwork; the LoRA is fitted by a few steps of gradient context distillation on
the document (`simulated.py`), the slow counterpart the hypernetwork amortises.

A document's chunk LoRAs are averaged (`combine=mean`) or summed, and each document is added to the
session's LoRA without replacing it: by default the session holds the mean of its documents' LoRAs
(`accumulate=mean`), or their sum (`accumulate=sum`). Both are exact, factors stacked along the rank
with B scaled; beyond `max_rank` the result is cut to its best rank-`max_rank` approximation (truncated
SVD). Summing is the natural rule, but the bundled hypernetwork's LoRAs carry a large
document-independent part that a sum multiplies (docs/doc2lora.md has the measurements). The session's
LoRA lives in one standard peft adapter, so `disabled()` is peft's `disable_adapter()` and the model
can be merged with `merge_and_unload()`.

Each document's own LoRA is kept too (capped at `doc_rank`): a question answers through the LoRAs of
its `route_top` best-matching documents only (the router, as ttt does), so one document's effect is
not diluted by the mean over all the others; `route_top=0` answers through the session's LoRA.
"""

from __future__ import annotations

import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ...documents import Document
from ...errors import InputError, StateMismatch
from ...models import file_sha256
from ...state_files import need
from ..anatomy import last_layers
from ..base import LearnReport, Step, StepCallback, Strategy, noop
from ..config import StrategyConfig, option
from ..forgetting import cannot
from ..router import Routed, Router, threshold_option, top_option
from . import lora
from .hypernet import read_config
from .reading import chunks, ids, read_chunks, reader_prefix
from .refine import Refinement, refine
from .simulated import simulate

BUNDLED = Path(__file__).resolve().parent.parent.parent / "data" / "doc2lora-smollm2-135m.safetensors"
SIMULATED_LABEL = "simulated: gradient context distillation, no hypernetwork"
DOCUMENT_KEY = "documents."  # prefix of each document's own adapter in the saved state
SAVED_KEY = re.compile(r"^(?:documents\.(\d{1,6})\.)?base_model\.model\.(.+)\.lora_([AB])\.weight$")  # (document, module, A|B)


@dataclass
class Doc2LoRAConfig(StrategyConfig):
    """doc2lora options (-o KEY=VALUE)."""

    mode: Literal["refined", "amortized", "hypernet", "simulated"] = option("refined", "refined: the hypernetwork's LoRA, then a few gradient steps on the document (refine.py); amortized (or hypernet): one forward of the hypernetwork per chunk, nothing else; simulated: gradient context distillation from zero")
    hypernet: str | None = option(None, "checkpoint path; default: the bundled one (default model only)")
    chunk_tokens: int = option(0, "longest chunk read at once (0: the hypernetwork's own; 256 when simulated)", min=0)
    combine: Literal["mean", "concat"] = option("mean", "a document's chunk LoRAs: averaged, or summed (stacked)")
    accumulate: Literal["mean", "sum"] = option("mean", "the session's documents: averaged, or summed")
    max_rank: int = option(32, "the session's LoRA rank at most (beyond: truncated SVD of the combined deltas)", min=1)
    scale: float = option(1.0, "multiplies every generated delta", above=0)
    route_threshold: float = threshold_option("the LoRA acts only on questions whose router match (router.py) with a document reaches this (0: always)")
    route_top: int = top_option(1, 0, "a question answers through its best-matching documents' own LoRAs, at most this many (0: the session's LoRA)")
    doc_rank: int = option(16, "each document's own LoRA is kept at this rank at most (truncated SVD)", min=1)
    # refined mode only (refine.py)
    objective: Literal["next-token", "distill"] = option("next-token", "refined: predict the textbook's replies, or match the model reading the document on them (+ hard x next-token)")
    epochs: int = option(4, "refined: passes over the document's textbook (ttt's chat turns)", min=0)
    refine_lr: float = option(1e-2, "refined: AdamW learning rate on the LoRA factors", above=0, max=1)
    refine_layers: float = option(0.125, "refined: share of the last decoder layers whose LoRA is trained (the others keep the hypernetwork's)", above=0, max=1)
    batch_size: int = option(8, "refined: examples per step", min=1)
    max_tokens: int = option(96, "refined: longest document piece in one example", min=8)
    questions: int = option(2, "refined: question/cue prompts per sentence", min=0)
    hard: float = option(0.5, "refined, distill: weight of the next-token loss added to the KL", min=0)
    top_k: int = option(32, "refined, distill: teacher log-probabilities kept per reply token", min=1, max=1024)
    precision: Literal["auto", "float32", "bfloat16"] = option("auto", "refined: bfloat16 autocast for the steps (auto: where native)")
    beams: int = option(0, "beam width of answers a document's LoRA acts on (0: 2 in refined mode, else 1 = greedy)", min=0, max=16)
    init: Literal["hypernet", "zero"] = option("hypernet", "refined: start from the hypernetwork's LoRA, or from peft's zero LoRA of the same rank (the reference it is measured against)")
    # simulated mode only (a hypernetwork brings its own rank, targets and layers)
    rank: int = option(8, "simulated: LoRA rank", min=1)
    targets: str = option("down_proj", "simulated: comma-separated module names inside a decoder layer")
    layers: float = option(1.0, "simulated: fraction of the last decoder layers that get a LoRA", above=0, max=1)
    steps: int = option(20, "simulated: distillation steps", min=1)
    lr: float = option(3e-3, "simulated: learning rate of the distillation", above=0, max=1)
    probes: int = option(12, "simulated: sentences of the document used as distillation probes", min=1)

    def __post_init__(self):
        super().__post_init__()
        self.check(bool(self.target_list), "targets must name at least one module")

    @property
    def target_list(self) -> list[str]:
        return [t.strip() for t in self.targets.split(",") if t.strip()]


class Doc2LoRA(Routed, Strategy):
    name = "doc2lora"
    Config = Doc2LoRAConfig
    prefix = "lora_"
    paper = "arXiv:2602.15902"
    summary = "Perceiver hypernetwork: document activations → peft LoRA on down_proj, one forward per chunk"
    test_options = {"mode": "simulated", "steps": "3"}  # no trained hypernetwork fits a tiny random model

    def attach(self) -> None:
        config = self.config
        if config.mode != "simulated":
            self.hypernet_path = self._hypernet_path()
            self.net_config = read_config(self.hypernet_path)
            layers, targets = self.net_config.layers, self.net_config.targets
        else:
            self.hypernet_path, self.net_config = None, None
            layers, targets = last_layers(self.model, config.layers), config.target_list
        self.names = lora.module_names(self.model, layers, targets)
        if self.net_config is not None:
            self._check_fits()
        self.layers = layers
        self.model = lora.wrap(self.model, self.names)
        self.factors: lora.Factors = {}  # the session's LoRA: all documents
        self.doc_factors: list[lora.Factors] = []  # each document's own (empty for sessions saved before them)
        self.documents: list[dict] = []
        self.router = Router(self.config)  # one unit per document
        self.hypernet_sha256: str | None = None
        self._net = None

    # ---- the hypernetwork ---------------------------------------------------------------------------
    def _hypernet_path(self) -> Path:
        if self.config.hypernet:
            return Path(self.config.hypernet).expanduser()
        if not BUNDLED.is_file() or read_config(BUNDLED).model_fingerprint != self.context.model_fingerprint:
            raise InputError(
                "doc2lora: no trained hypernetwork for this model (the bundled one is for smollm2-135m); "
                "train one with `clslm doc2lora train` and pass -o hypernet=PATH, or use -o mode=simulated"
            )
        return BUNDLED

    def _check_fits(self) -> None:
        cfg, fingerprint = self.net_config, self.context.model_fingerprint
        if cfg.model_fingerprint and fingerprint and cfg.model_fingerprint != fingerprint:
            raise InputError(f"{self.hypernet_path}: hypernetwork was trained for model {cfg.model_fingerprint[:12]}, not this one ({fingerprint[:12]})")
        base = lora.unwrap(self.model)
        shapes = [list(base.get_submodule(n).weight.shape[::-1]) for n in self.names]
        expected = [cfg.shapes[i % len(cfg.targets)] for i in range(len(self.names))]
        if shapes != expected or base.config.hidden_size != cfg.d_model:
            raise InputError(f"{self.hypernet_path}: hypernetwork does not fit this model's layer shapes")

    def net(self):
        if self._net is None:
            from .hypernet import load_hypernet

            sha = file_sha256(self.hypernet_path)
            if self.hypernet_sha256 and sha != self.hypernet_sha256:
                raise StateMismatch(f"{self.hypernet_path}: hypernetwork changed since the documents were learned (sha256 {sha[:12]}, was {self.hypernet_sha256[:12]})")
            self._net = load_hypernet(self.hypernet_path).to(lora.unwrap(self.model).device)
            self.hypernet_sha256 = sha
        return self._net

    # ---- learning -----------------------------------------------------------------------------------
    def learn(self, document: Document, on_step: StepCallback = noop) -> LearnReport:
        start = time.perf_counter()
        tokenizer, prefix = self.tokenizer, reader_prefix(self.tokenizer)
        with self.model.disable_adapter():  # read and distil with the base model, not the documents so far
            if self.config.mode != "simulated":
                (factors, n_chunks), losses = self._from_hypernet(prefix, document, on_step), (None, None)
            else:
                (factors, losses), n_chunks = self._simulate(prefix, document, on_step), 1
        factors = {k: (a, b * self.config.scale) for k, (a, b) in factors.items()}
        refined = None
        if self.config.mode == "refined":
            with self.model.disable_adapter():  # the steps see the base model and this document's LoRA only
                refined = refine(self.model, tokenizer, document, lora.cap(factors, self.config.doc_rank), self.refinement, on_step)
            factors, losses = refined.factors, (refined.before, refined.after)
        if len(self.doc_factors) == len(self.documents):
            self.doc_factors.append(lora.cap(factors, self.config.doc_rank))
        self.factors = lora.cap(self._accumulate(factors), self.config.max_rank)
        lora.install(self.model, self.factors)
        self.documents.append({"name": document.name, "sha256": document.sha256, "rank": lora.rank(factors), "chunks": n_chunks})
        self.router.add(document.text)
        extra = {"mode": self.mode_label, "chunks": n_chunks, "rank": lora.rank(factors), "session_rank": lora.rank(self.factors)}
        if refined is not None:
            extra |= {"steps": refined.steps, "phase_seconds": refined.phase_seconds}
        tokens = len(ids(tokenizer, document.text))
        return LearnReport(document.name, document.sha256, tokens, losses[0], losses[1], round(time.perf_counter() - start, 3), extra)

    def _from_hypernet(self, prefix: list[int], document: Document, on_step: StepCallback) -> tuple[lora.Factors, int]:
        net = self.net()
        size = self.config.chunk_tokens or self.net_config.chunk_tokens
        pieces = chunks(self.tokenizer, document.text, size)
        parts = []
        for i, reading in enumerate(read_chunks(self.model, prefix, pieces, self.layers, self.names), start=1):
            parts.append({name: (a.detach(), b.detach()) for name, (a, b) in zip(self.names, net(reading))})
            on_step(Step(i, len(pieces), phase="hypernetwork"))
        return (lora.concat(parts) if self.config.combine == "concat" else lora.mean(parts)), len(pieces)

    def _accumulate(self, factors: lora.Factors) -> lora.Factors:
        """The session's LoRA with this document's added: a running mean over documents, or a sum."""
        n = len(self.documents)
        if self.config.accumulate == "sum" or not self.factors:
            return lora.concat([self.factors, factors])
        kept = {k: (a, b * n / (n + 1)) for k, (a, b) in self.factors.items()}
        return lora.concat([kept, {k: (a, b / (n + 1)) for k, (a, b) in factors.items()}])

    def _simulate(self, prefix: list[int], document: Document, on_step: StepCallback) -> tuple[lora.Factors, tuple[float, float]]:
        c = self.config
        text_ids = [t for piece in chunks(self.tokenizer, document.text, c.chunk_tokens or 256) for t in piece]
        limit = getattr(lora.unwrap(self.model).config, "max_position_embeddings", None)
        if limit and len(prefix) + len(text_ids) > limit - 256:  # room for a probe after the document
            raise InputError(f"{document.name}: {len(text_ids)} tokens; simulated mode reads the whole document in one prompt of at most {limit - 256 - len(prefix)} tokens")
        factors, before, after = simulate(
            self.model, self.tokenizer, prefix, text_ids, document.text, self.names,
            rank=c.rank, steps=c.steps, lr=c.lr, probes=c.probes, seed=c.seed + len(self.documents),
            on_step=lambda i, loss: on_step(Step(i, c.steps, loss, phase="distillation")),
        )  # fmt: skip
        return factors, (round(before, 6), round(after, 6))

    @property
    def refinement(self) -> Refinement:
        c = self.config
        layers = [i for i in last_layers(lora.unwrap(self.model), c.refine_layers) if i in self.layers] or self.layers[-1:]
        return Refinement(
            layers, c.objective, c.epochs, c.refine_lr, c.batch_size, c.max_tokens, c.questions, c.hard, c.top_k,
            c.precision, c.init, c.seed + len(self.documents),
        )  # fmt: skip

    @property
    def mode_label(self) -> str:
        c = self.config
        if c.mode == "refined":
            start = "the hypernetwork's LoRA" if c.init == "hypernet" else "a zero LoRA"
            return f"refined: {start} + {c.epochs} epoch(s) of {c.objective} steps on the last {len(self.refinement.layers)} layers"
        return SIMULATED_LABEL if c.mode == "simulated" else "hypernetwork"

    # ---- routing, switching off, state -------------------------------------------------------------
    def beams(self, question: str) -> int:
        """`beams` where a document's LoRA acts; greedy where none does (the base model answers there)."""
        if not self.active_documents(question):
            return 1
        return self.config.beams or (2 if self.config.mode == "refined" else 1)

    def matches(self, question: str) -> bool:
        """Whether the question is about a learned document (sessions saved without keys: always)."""
        return bool(self.active_documents(question))

    def active_documents(self, question: str) -> list[int]:
        """The documents whose LoRAs answer `question`: the best router matches at or above the threshold."""
        if len(self.router) < len(self.documents):  # keys not saved: every document
            return list(range(len(self.documents)))
        return self.router.ranked(question)

    @contextmanager
    def route_to(self, active: list[int]):
        """The LoRA of the best-matching documents in `active` for the block; none (the base model) when no
        document matches; the session's LoRA with route_top=0 or when every document is chosen."""
        if not self.enabled:
            yield
            return
        everything = list(range(len(self.documents)))
        chosen = sorted(active[: self.config.route_top]) if self.config.route_top else everything
        if not active:
            with self.model.disable_adapter():
                yield
        elif chosen == everything or len(self.doc_factors) < len(self.documents):
            yield
        else:
            lora.install(self.model, self._session_of([self.doc_factors[i] for i in chosen]))
            try:
                yield
            finally:
                lora.install(self.model, self.factors)

    def _session_of(self, parts: list[lora.Factors]) -> lora.Factors:
        """What the session's LoRA would be with only these documents (the same accumulate rule)."""
        combined = lora.concat(parts) if self.config.accumulate == "sum" else lora.mean(parts)
        return lora.cap(combined, self.config.max_rank)

    @contextmanager
    def disabled(self):
        was, self.enabled = self.enabled, False
        try:
            with self.model.disable_adapter():
                yield
        finally:
            self.enabled = was

    def state_dict(self) -> dict:
        """The session's adapter under peft's own keys; each document's under `documents.I.` + the same keys."""
        state = lora.peft_state(self.factors) if self.factors else {}
        for i, factors in enumerate(self.doc_factors):
            state |= {f"{DOCUMENT_KEY}{i}.{k}": v for k, v in lora.peft_state(factors).items()}
        return state

    def check_state_dict(self, tensors: dict) -> None:
        """LoRA factors, the session's and each document's: A [r, in] and B [out, r] of a module doc2lora targets."""
        base, ranks = lora.unwrap(self.model), {}
        for key, value in tensors.items():
            match = SAVED_KEY.match(key)
            if match is None or match[2] not in self.names:
                continue  # load_state_dict refuses it by name
            out_features, in_features = base.get_submodule(match[2]).weight.shape
            r = value.shape[0] if match[3] == "A" else value.shape[-1]
            shape = (r, in_features) if match[3] == "A" else (out_features, r)
            need(value.is_floating_point() and value.ndim == 2 and tuple(value.shape) == shape and r >= 1, f"tensor {key!r} should be floating-point [{'r, ' + str(in_features) if match[3] == 'A' else str(out_features) + ', r'}], not {value.dtype} {list(value.shape)}")
            ranks.setdefault(match[1], set()).add(r)
        need(all(len(r) == 1 for r in ranks.values()), "the factors of one adapter have different ranks")

    def load_state_dict(self, tensors: dict) -> None:
        tensors, own = dict(tensors), {}
        for key in [k for k in tensors if k.startswith(DOCUMENT_KEY)]:
            index, rest = key.removeprefix(DOCUMENT_KEY).split(".", 1)
            own.setdefault(int(index), {})[rest] = tensors.pop(key)
        self.factors = self._on_device(lora.from_peft_state(tensors))
        self.doc_factors = [self._on_device(lora.from_peft_state(own[i])) for i in sorted(own)]
        if sorted(own) != list(range(len(own))):
            raise InputError("doc2lora: the saved per-document adapters are not numbered 0..n-1")
        lora.install(self.model, self.factors)

    def _on_device(self, factors: lora.Factors) -> lora.Factors:
        if not set(factors) <= set(self.names):
            raise InputError(f"doc2lora: saved adapter targets modules this configuration does not ({sorted(set(factors) - set(self.names))[:2]})")
        device = lora.unwrap(self.model).device
        return {k: (a.to(device), b.to(device)) for k, (a, b) in factors.items()}

    def extra_state(self) -> dict:
        hypernet = {"path": str(self.hypernet_path), "sha256": self.hypernet_sha256} if self.hypernet_sha256 else None
        keys = self.router.to_json()
        return {"mode": self.mode_label, "hypernet": hypernet, "documents": self.documents, "keys": keys} if self.documents else {}

    def check_extra_state(self, state: dict) -> None:
        documents, hypernet = state.get("documents", []), state.get("hypernet")
        need(isinstance(documents, list) and all(isinstance(d, dict) for d in documents), "documents must be a list of objects")
        super().check_extra_state(state)  # the routing keys
        need(len(state.get("keys", [])) <= len(documents), "more routing keys than documents")
        need(hypernet is None or (isinstance(hypernet, dict) and isinstance(hypernet.get("sha256"), (str, type(None)))), "hypernet must be null or {path, sha256}")
        need(isinstance(state.get("mode", ""), str), "mode must be a string")

    def load_extra_state(self, state: dict) -> None:
        self.documents = list(state.get("documents", []))
        self.router.load(state.get("keys", []))
        self.hypernet_sha256 = (state.get("hypernet") or {}).get("sha256")

    def forget(self, documents: list[dict], position: int) -> None:
        """Drop the document's own LoRA and router keys; the session's LoRA becomes that of the others."""
        if len(self.doc_factors) < len(self.documents) and len(self.documents) > 1:
            raise cannot(self.name, "it was learned before clslm kept each document's own LoRA")
        if position < len(self.router):
            self.router.remove(position)
        for kept in (self.documents, self.doc_factors):
            if position < len(kept):
                del kept[position]
        self.factors = self._session_of(self.doc_factors) if self.doc_factors else {}
        lora.install(self.model, self.factors or lora.zeros(lora.unwrap(self.model), self.names))

    def export_scope(self, document: int | None) -> str:
        """What an export holds: the session's LoRA, or (document: its position) that document's own, put in
        place of the session's (the strategy is not used after an export)."""
        n = len(self.documents)
        if document is None:
            self._exported = None
            return f"session: the {self.config.accumulate} of all {n} document(s)' LoRAs (rank {lora.rank(self.factors)})"
        if len(self.doc_factors) < n:
            raise InputError("doc2lora: this session was learned before clslm kept each document's own LoRA; export the session's")
        self._exported = document
        lora.install(self.model, self.doc_factors[document])
        name = self.documents[document]["name"]
        return f"document {name} ({document + 1} of {n}): its own LoRA (rank {lora.rank(self.doc_factors[document])}), as `clslm ask` answers a question routed to it"

    def export_notes(self) -> list[str]:
        c, n = self.config, len(self.documents)
        if getattr(self, "_exported", None) is not None:
            on = f"on questions routed to it (route_threshold={c.route_threshold})" if c.route_threshold > 0 else "on every question"
            return [f"clslm uses this document's LoRA only {on}; the export holds it alone, always on"]
        routed = [f"only on questions that match a document (route_threshold={c.route_threshold})"] if c.route_threshold > 0 else []
        if n > 1 and c.route_top and c.route_top < n:
            routed.append(f"through the LoRAs of the {c.route_top} best-matching document(s) (route_top={c.route_top})")
        if not routed or not n:
            return []
        return [f"clslm answers {' and '.join(routed)}; the export holds the session's LoRA ({c.accumulate} of all {n} document(s)), always on"]

    def describe(self) -> dict:
        info = {"mode": self.mode_label, "modules": len(self.names), "rank": lora.rank(self.factors), "documents": len(self.documents)}
        if self.hypernet_path is not None:
            info["hypernet"] = {"path": str(self.hypernet_path), "sha256": self.hypernet_sha256 or file_sha256(self.hypernet_path)}
        return info
