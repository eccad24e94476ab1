"""The Strategy interface every learning method implements, and its small value types."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..documents import Document
from ..errors import InputError
from ..generation import Answer, generate
from .config import StrategyConfig
from .context import StrategyContext  # noqa: F401  (re-exported: what the Session gives a strategy)


@dataclass
class Step:
    """Progress of a long learn: step i of total, with the latest loss when there is one."""

    i: int
    total: int
    loss: float | None = None
    phase: str = "train"


StepCallback = Callable[[Step], None]


def noop(step: Step) -> None:
    pass


@dataclass
class LearnReport:
    """What one learn() did; its asdict() is the per-document --json output."""

    name: str
    sha256: str
    tokens: int
    loss_before: float | None
    loss_after: float | None
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def timed_report(document: Document, tokenizer, start: float, **extra) -> LearnReport:
    """The report of a learn that has no loss (prompt- and store-side strategies), timed from `start`."""
    import time

    tokens = len(tokenizer(document.text, add_special_tokens=False)["input_ids"])
    return LearnReport(document.name, document.sha256, tokens, None, None, round(time.perf_counter() - start, 2), extra)


class DeltaModule:
    """Mixin for modules a strategy injects: when `enabled` is False they must act as the base module."""

    enabled: bool = True


@dataclass
class Merged:
    """A plain transformers model holding what a strategy learned in its own weights (for export)."""

    model: Any
    exact: bool = True  # reproduces the strategy (every document on) up to float rounding
    notes: list[str] = field(default_factory=list)  # what the fold changed or approximated, one line each


@dataclass
class Adapter:
    """A peft model whose active LoRA adapter holds what was learned (for export --format peft)."""

    model: Any
    exact: bool = True  # reproduces the strategy (every document on) up to float rounding
    rank: int | None = None
    layers: list[dict[str, Any]] = field(default_factory=list)  # per module: relative error of the approximation
    notes: list[str] = field(default_factory=list)


def is_peft_model(model) -> bool:
    return type(model).__module__.startswith("peft.")


class Strategy(ABC):
    """Learn documents into a model; answer questions; switch what was learned off and on."""

    name: ClassVar[str]
    Config: ClassVar[type[StrategyConfig]] = StrategyConfig
    prefix: ClassVar[str] = ""  # in the name of every injected parameter/buffer
    paper: ClassVar[str | None] = None
    summary: ClassVar[str] = ""
    # For the contract tests (tests/test_contract.py runs every strategy through them): -o options that keep a
    # learn fast on a tiny random model (CLI strings), and whether a learn descends a loss it reports (the loss
    # after must be below the loss before).
    test_options: ClassVar[dict[str, str]] = {}
    learns_by_gradient: ClassVar[bool] = False

    def __init__(self, model, tokenizer, config: StrategyConfig | None = None, context: StrategyContext | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.config = config if config is not None else self.Config()
        self.context = context or StrategyContext()
        self.enabled = True
        self.attach()

    def attach(self) -> None:
        """Inject DeltaModules into self.model (base weights stay frozen). Default: nothing."""

    @abstractmethod
    def learn(self, document: Document, on_step: StepCallback = noop) -> LearnReport:
        """Study one document, updating only this strategy's own state."""

    def prompt_context(self, question: str) -> str:
        """Text a strategy puts in the prompt above the question ('' for weight-based strategies)."""
        return ""

    def logits_processors(self, question: str) -> list:
        """transformers LogitsProcessors applied while answering (none by default)."""
        return []

    def beams(self, question: str) -> int:
        """Beam width of the strategy's answer to `question` (1: greedy; the base model always answers greedily)."""
        return 1

    def answers_plainly(self, question: str) -> bool:
        """True when answer(question) is a plain greedy generation of the question alone (no context, no
        logits processor, one beam) by the model as routed(question) leaves it, and routed() leaves it the
        same for every such question: the bench then answers them in one batch. Default: never claimed."""
        return False

    def answer_group(self, question: str) -> Hashable | None:
        """Questions of one group are answered alike: a generation of prompt_context(question) and the question
        with logits_processors(question) (which must read only their own row) at beams(question), under
        routed(question), which leaves the model the same for all of them; the bench answers a group in
        batches. None: only answer() answers it. Default: the plain ones."""
        return ("plain",) if self.answers_plainly(question) else None

    @contextmanager
    def routed(self, question: str) -> Iterator[None]:
        """Condition input-dependent deltas on `question` for the block (default: nothing to do).

        Anything that runs the model on a question outside answer() (e.g. scoring an answer's
        likelihood in a benchmark) should do it inside this block.
        """
        yield

    def answer(self, question: str, *, max_new_tokens: int = 64) -> Answer:
        on = self.enabled
        with self.routed(question):
            return self._generate(question, on, max_new_tokens)

    def answer_nll(self, question: str, reply: str) -> float:
        """Mean NLL per token of `reply` to `question`, through the same path answer() takes."""
        from ..likelihood import answer_nll

        on = self.enabled
        with self.routed(question):
            return answer_nll(
                self.model,
                self.tokenizer,
                question,
                reply,
                context=self.prompt_context(question) if on else "",
                logits_processors=self.logits_processors(question) if on else [],
            )

    def _generate(self, question: str, on: bool, max_new_tokens: int) -> Answer:
        return generate(
            self.model,
            self.tokenizer,
            question,
            context=self.prompt_context(question) if on else "",
            max_new_tokens=max_new_tokens,
            logits_processors=self.logits_processors(question) if on else [],
            deltas=on,
            beams=self.beams(question) if on else 1,
        )

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """Within the block the model behaves exactly as the base model."""
        modules = [m for m in self.model.modules() if isinstance(m, DeltaModule)]
        saved = [(m, m.enabled) for m in modules]
        was = self.enabled
        self.enabled = False
        for m in modules:
            m.enabled = False
        try:
            yield
        finally:
            self.enabled = was
            for m, state in saved:
                m.enabled = state

    def state_dict(self) -> dict[str, Any]:
        """Learned tensors (a filter on the prefix by default); saved as safetensors."""
        if not self.prefix:
            return {}
        return {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items() if self.prefix in k}

    def load_state_dict(self, tensors: dict[str, Any]) -> None:
        expected = set(self.state_dict())
        if set(tensors) != expected:
            missing, unexpected = sorted(expected - set(tensors))[:3], sorted(set(tensors) - expected)[:3]
            raise InputError(f"{self.name}: saved state does not fit the model (missing {missing}, unexpected {unexpected})")
        self.model.load_state_dict(self.loadable(tensors), strict=False)

    def loadable(self, tensors: dict[str, Any]) -> dict[str, Any]:
        """The saved tensors as the model's parameters hold them (a strategy that stores them otherwise converts)."""
        return tensors

    def extra_state(self) -> dict[str, Any]:
        """JSON-serialisable state (documents seen, playbooks, ...)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    # Checked before the load_* methods run (clslm/state_files.py): raise ValueError naming what does not fit
    # (types, bounds, indices past the model: what a load would leave to the first question that uses it).
    def check_extra_state(self, state: dict[str, Any]) -> None:
        """The saved JSON state's layout (an object, already parsed and bounded)."""

    def check_state_dict(self, tensors: dict[str, Any]) -> None:
        """The saved tensors against this model (names, dtypes and shapes as the strategy puts them there)."""

    def describe(self) -> dict[str, Any]:
        """A few facts for `clslm info`."""
        return {}

    def forget(self, documents: list[dict[str, Any]], position: int) -> None:
        """Remove from this strategy's state what learning documents[position] added (`clslm forget`).

        `documents` are the learn reports of every document learned so far, in learn order, as the session
        saved them (LearnReport fields; `extra` holds what the strategy reported), so a strategy can find a
        document's share of its state. The session drops the report and saves afterwards.
        """
        raise InputError(f"{self.name}: cannot forget one document; `clslm reset` forgets every document")

    # ---- export (`clslm export`, docs/export.md) ----------------------------------------------------
    def learns_in_weights(self) -> bool:
        """Whether what was learned lives in the model's weights (exported as merged or peft weights) rather
        than in the prompt (exported as its context)."""
        return is_peft_model(self.model) or any(isinstance(m, DeltaModule) for m in self.model.modules())

    def cannot_export(self, format: str) -> str | None:
        """Why what was learned cannot be written as `format` ("merged", "peft") weights; None when it can."""
        return None

    def export_merged(self) -> Merged:
        """What was learned folded into the model's own weights, as a plain transformers model.

        Default: a peft model is merged (`merge_and_unload`); a model with no injected modules is the
        base model as it is (prompt-side strategies, nothing to fold). Strategies with their own
        DeltaModules override this. It may change self.model: a strategy is not used after an export.
        """
        if is_peft_model(self.model):
            return Merged(self.model.merge_and_unload())
        injected = sorted({type(m).__name__ for m in self.model.modules() if isinstance(m, DeltaModule)})
        if injected:
            raise InputError(f"{self.name}: what it learned lives in {', '.join(injected)}, which a standard checkpoint has no place for; it cannot be exported as merged weights")
        return Merged(self.model)

    def export_notes(self) -> list[str]:
        """How an exported model (its weights always on) differs from what `ask` does; one line each."""
        return []

    def lora_adapter(self) -> Any | None:
        """The peft model whose active LoRA adapter holds what was learned (for --format peft); None when
        what was learned is not LoRA-shaped."""
        return self.model if is_peft_model(self.model) else None

    def export_adapter(self, rank: int) -> Adapter:
        """What was learned as a LoRA adapter (--format peft, at most `rank` where it is approximated).
        Default: lora_adapter() as it is; a strategy whose deltas are not LoRA overrides this."""
        adapter = self.lora_adapter()
        if adapter is None:
            raise InputError(f"{self.name}: what it learned is not LoRA-shaped; export it with --format merged")
        return Adapter(adapter, True, adapter.peft_config[adapter.active_adapter].r)

    def context_markdown(self, extra: dict[str, Any]) -> list[str]:
        """Markdown sections of context.md (--format context) for the JSON state `extra`; default: describe()."""
        facts = self.describe()
        return ["## State", "", *(f"- {k}: {v}" for k, v in facts.items()), ""] if facts else []
