"""A session: a directory holding one base-model reference, one strategy and what it learned."""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import __version__, registry
from .atomic import crash_point, is_temp, write_json_atomic
from .documents import Document
from .paths import clslm_home, session_path
from .errors import ClslmError, InputError, ModelError, SessionBusy, SessionCorrupt, SessionError, SessionMismatch, SessionNotFound, StateMismatch
from .generation import Answer
from .manifest import FORMAT_VERSION, checked_config, config_problem, read_committed, read_manifest, strict_numbers, upgrade
from .state_files import check_finite, load_extra, load_extra_into, load_into, load_tensors, read_blob, write_extra, write_tensors
from .models import DEFAULT_MODEL, ModelSource, load_model, resolve_model, resolve_recorded
from .session_documents import find as find_documents
from .strategies.base import LearnReport, Strategy, StrategyContext, StepCallback, noop
from .strategies.config import config_from_dict, parse_options

MANIFEST = "session.json"
LOCK = ".lock"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class Session:
    """Open with Session.open / Session.create, use inside `with` (holds the lock), then learn/ask/reset."""

    def __init__(self, path: Path, manifest: dict[str, Any], *, device: str = "auto", dtype: str = "auto", wait: float = 0):
        self.path, self.manifest = Path(path), manifest
        self.device, self.dtype, self.wait = device, dtype, wait
        self._strategy: Strategy | None = None
        self._lock = None
        self._made_dir = False
        # What the opener asked for, applied again to the manifest read under the lock (see __enter__):
        # "new" is None for an existing session, "create" for Session.create (a session that appeared
        # meanwhile is an error), "open" for open_or_create (it is opened instead).
        self._new: str | None = None
        self._request: dict[str, Any] = {"model": None, "strategy": None, "options": None}

    # ---- opening -------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, *, model: str = DEFAULT_MODEL, strategy: str = "ttt", options: dict[str, str] | None = None, **kw) -> "Session":
        """A new, empty session (written to disk at the first save)."""
        path = session_path(path)
        if (path / MANIFEST).exists():
            raise SessionMismatch(f"{path}: a session already exists here")
        config = checked_config(parse_options(registry.get(strategy).Config, options or {}))
        source = resolve_model(model)
        manifest = {
            "format_version": FORMAT_VERSION,
            "clslm_version": __version__,
            "created": _now(),
            "model": {"ref": source.ref, "kind": source.kind, "fingerprint": source.fingerprint},
            "strategy": {"name": strategy, "config": asdict(config)},
            "state": {"tensors": None, "extra": None},
            "documents": [],
        }
        session = cls(path, manifest, **kw)
        session._new = "create"
        return session

    @classmethod
    def open(cls, path: str | Path, **kw) -> "Session":
        """An existing session; SessionNotFound / SessionCorrupt otherwise."""
        path = session_path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise SessionNotFound(f"{path}: no session here (run `clslm learn` first, or pass --session)")
        return cls(path, upgrade(read_manifest(manifest_path), manifest_path), **kw)

    @classmethod
    def open_or_create(cls, path: str | Path, *, model: str | None = None, strategy: str | None = None, options: dict[str, str] | None = None, **kw) -> "Session":
        """Open PATH if it holds a session (checking --model/--strategy agree), else create it."""
        path = session_path(path)
        if not (path / MANIFEST).exists():
            session = cls.create(path, model=model or DEFAULT_MODEL, strategy=strategy or "ttt", options=options, **kw)
            session._new = "open"
        else:
            session = cls.open(path, **kw)
            session._apply(model=model, strategy=strategy, options=options)
        session._request = {"model": model, "strategy": strategy, "options": options}
        return session

    def _apply(self, *, model: str | None, strategy: str | None, options: dict[str, str] | None) -> None:
        if strategy and strategy != self.strategy_name and not self.documents:
            self.change_strategy(strategy)  # nothing learned yet: the session may take another strategy
        self.check_matches(model=model, strategy=strategy)
        if options:
            self.set_options(options)

    def change_strategy(self, strategy: str) -> None:
        """Use `strategy` (default options) from now on; only with nothing learned (reset, or a new session)."""
        if self.documents:
            raise SessionMismatch(f"{self.path}: cannot change the strategy of a session with documents learned")
        config = checked_config(parse_options(registry.get(strategy).Config, {}))
        self.manifest["strategy"] = {"name": strategy, "config": asdict(config)}
        self.manifest["state"], self._strategy = {"tensors": None, "extra": None}, None

    def check_matches(self, *, model: str | None = None, strategy: str | None = None) -> None:
        if strategy and strategy != self.strategy_name:
            start_over = f"`clslm reset --strategy {strategy} -s {self.path}` forgets its {len(self.documents)} document(s) and switches"
            raise SessionMismatch(f"{self.path}: session uses strategy {self.strategy_name!r}, not {strategy!r}; {start_over}, or use another --session")
        if model and model != self.model_ref and not self._same_model(model):
            raise SessionMismatch(f"{self.path}: session was made with model {self.model_ref!r}, not {model!r}")

    def _same_model(self, ref: str) -> bool:
        """`./m` and `/abs/m` name one model: compare fingerprints, not spellings."""
        try:
            return resolve_model(ref).fingerprint == self.manifest["model"]["fingerprint"]
        except ClslmError:
            return False

    def set_options(self, options: dict[str, str]) -> None:
        config = checked_config(parse_options(self._strategy_class().Config, options, base=self._saved_config()))
        self.manifest["strategy"]["config"] = asdict(config)
        self._strategy = None

    def _strategy_class(self) -> type[Strategy]:
        try:
            return registry.get(self.strategy_name)
        except InputError as e:  # a session from a newer clslm, or a plugin not installed here
            raise SessionMismatch(f"{self.path}: session uses a strategy this clslm cannot run ({e})") from None

    def _saved_config(self):
        config_cls, saved = self._strategy_class().Config, self.manifest["strategy"]["config"]
        try:
            problem = config_problem(config_cls, saved)
            if problem:
                raise InputError(problem)
            return config_from_dict(config_cls, saved)
        except (InputError, TypeError, ValueError) as e:
            raise SessionCorrupt(f"{self.path / MANIFEST}: strategy config does not fit {self.strategy_name!r} ({e})") from None

    # ---- locking -------------------------------------------------------------------------------
    def __enter__(self) -> "Session":
        from filelock import FileLock, Timeout

        if not self.wait >= 0:  # NaN or negative (filelock waits forever on a negative timeout)
            raise InputError(f"wait {self.wait}: must be a number of seconds >= 0")
        self._made_dir, deadline = False, time.monotonic() + self.wait
        try:
            try:
                for _ in range(10):
                    self._made_dir |= not self.path.exists()
                    self.path.mkdir(parents=True, exist_ok=True)
                    lock = FileLock(str(self.path / LOCK), timeout=max(0.0, deadline - time.monotonic()))
                    try:
                        lock.acquire()
                    except FileNotFoundError:  # a first learn that failed removed the directory we waited in
                        continue
                    self._lock = lock
                    break
                else:
                    raise SessionBusy(f"{self.path}: the session directory keeps disappearing")
            except Timeout:
                raise SessionBusy(f"{self.path}: session busy (another clslm process holds it; retry, or pass --wait SECONDS)") from None
            except OSError as e:  # a file in the way, a read-only or vanished directory
                raise SessionError(f"{self.path}: cannot use this as a session directory ({e.strerror or e})") from None
            self._reread()
        except BaseException:  # Ctrl-C while waiting included: leave no directory this call made
            self.__exit__(None, None, None)
            raise
        return self

    def _reread(self) -> None:
        """Under the lock: the session as it is now. What was read before the lock was taken may be stale:
        another process may have learned, reset or created this session while this one waited."""
        manifest_path = self.path / MANIFEST
        self._strategy = None
        if not manifest_path.exists():
            if self._new is None:
                raise SessionNotFound(f"{self.path}: no session here any more (removed while this process waited)")
            return
        if self._new == "create":
            raise SessionMismatch(f"{self.path}: a session already exists here")
        self.manifest = upgrade(read_manifest(manifest_path), manifest_path)
        if self._new == "open":  # created by another process while this one waited: open it as if it had been there
            self._new = None
        self._apply(**self._request)

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if self._made_dir and not (self.path / MANIFEST).exists():  # nothing was saved: leave no trace
            with contextlib.suppress(OSError):  # nothing to remove when the directory could not be made
                (self.path / LOCK).unlink(missing_ok=True)
                self.path.rmdir()

    # ---- facts ---------------------------------------------------------------------------------
    @property
    def strategy_name(self) -> str:
        return self.manifest["strategy"]["name"]

    @property
    def model_ref(self) -> str:
        return self.manifest["model"]["ref"]

    @property
    def documents(self) -> list[dict[str, Any]]:
        return self.manifest["documents"]

    def state_bytes(self) -> int:
        return sum(entry["bytes"] for entry in self.manifest["state"].values() if entry)

    def info(self) -> dict[str, Any]:
        """What `clslm info` shows. It takes no lock: a learn may commit (and prune the state files this
        manifest names) meanwhile, so a failed check is retried on the manifest as it is then."""
        for _ in range(3):
            try:
                self.verify()
                break
            except SessionCorrupt:
                now = read_committed(self.path / MANIFEST, self.manifest)
                if now == self.manifest:
                    raise
                self.manifest, self._strategy = now, None
        else:
            self.verify()
        info = {"session": str(self.path), **{k: self.manifest[k] for k in ("format_version", "clslm_version", "created", "model", "strategy")}}
        info |= {"documents": self.documents, "state_bytes": self.state_bytes()}
        if self._strategy is not None:
            info["strategy"] = info["strategy"] | {"state": self._strategy.describe()}
        return info

    # ---- the strategy --------------------------------------------------------------------------
    def strategy(self) -> Strategy:
        """The strategy on the loaded base model, with the saved state applied (loaded once)."""
        if self._strategy is None:
            cls, config = self._strategy_class(), self._saved_config()
            source = self._model_source()
            model, tokenizer = load_model(source, device=self.device, dtype=self.dtype)
            try:
                strategy = cls(model, tokenizer, config, StrategyContext(source.fingerprint, cache_dir=clslm_home()))
            except InputError as e:  # from this command's -o options: bad input; from the manifest alone: corrupt
                if self._new or self._request["options"]:
                    raise
                raise SessionCorrupt(f"{self.path / MANIFEST}: strategy config does not fit {self.strategy_name!r} on this model ({e})") from None
            self._load_state(strategy)
            self._strategy = strategy
        return self._strategy

    def _model_source(self) -> ModelSource:
        try:
            source = resolve_recorded(self.model_ref, self.manifest["model"]["kind"])
        except ModelError as e:  # the session's model is gone: a session error, as a changed one is
            raise SessionMismatch(f"{self.path}: the session's {e}") from None
        if source.fingerprint != self.manifest["model"]["fingerprint"]:
            raise SessionMismatch(f"{self.path}: model {self.model_ref!r} is not the one this session was made with (fingerprint changed)")
        return source

    def learn(self, documents: list[Document], on_step: StepCallback = noop, on_document=None) -> list[LearnReport]:
        """Learn the documents in order, then save once: all or nothing."""
        strategy, reports = self.strategy(), []

        def step(s):
            crash_point("learning")
            on_step(s)

        with self._changing():
            for doc in documents:
                if on_document:
                    on_document(doc)
                reports.append(strategy.learn(doc, step))
            learned = [strict_numbers(asdict(r)) | {"encoding": d.encoding, "characters": len(d.text), "learned_at": _now()} for d, r in zip(documents, reports)]
            self.manifest["documents"] = self.documents + learned
            self.save()
        return reports

    def forget(self, selector: str) -> list[dict[str, Any]]:
        """Forget the learned document `selector` names (name or sha256 prefix; every copy of its content),
        then save: all or nothing. Returns the forgotten documents' records."""
        positions = find_documents(self.documents, selector)
        forgotten, strategy = [copy.deepcopy(self.documents[i]) for i in positions], self.strategy()
        with self._changing():
            for position in reversed(positions):
                strategy.forget(self.documents, position)
                del self.documents[position]
            self.save()
        return forgotten

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        """A learn or forget, all or nothing. On any failure the in-memory model holds half-changed state: drop it
        and go back to what is on disk (the old session, or the new one if the failure came after the commit
        point), minus any state files this change wrote but never committed. A strategy's StateMismatch (it
        knows no session) becomes SessionMismatch naming this one."""
        before = copy.deepcopy(self.manifest)
        try:
            yield
        except BaseException as e:
            self._strategy, self.manifest = None, read_committed(self.path / MANIFEST, before)
            with contextlib.suppress(OSError):
                self._prune()
            if isinstance(e, StateMismatch):
                raise SessionMismatch(f"{self.path}: {e}; use a new session") from None
            raise

    def ask(self, question: str, *, deltas: bool = True, max_new_tokens: int = 64) -> Answer:
        if not question.strip():
            raise InputError("the question is empty")
        strategy = self.strategy()
        if deltas:
            return strategy.answer(question, max_new_tokens=max_new_tokens)
        with strategy.disabled():
            return strategy.answer(question, max_new_tokens=max_new_tokens)

    def reset(self, strategy: str | None = None, options: dict[str, str] | None = None) -> None:
        """Forget everything learned; keep the model, and the strategy and its settings unless given new ones."""
        self.manifest["documents"] = []
        self.manifest["state"] = {"tensors": None, "extra": None}
        self._strategy = None
        if strategy and strategy != self.strategy_name:
            self.change_strategy(strategy)
        if options:
            self.set_options(options)
        self._commit()

    def export(self, out: str | Path, *, format: str = "merged", rank: int = 16, force: bool = False, document: str | None = None):
        """Write what was learned for use outside clslm: merged weights, a peft adapter or context files
        (docs/export.md); returns an ExportReport. The session itself is not changed."""
        from .export import export

        try:
            return export(self, out, format=format, rank=rank, force=force, document=document)
        finally:
            self._strategy = None  # folding rewires the loaded model: the next use loads it afresh

    # ---- persistence ---------------------------------------------------------------------------
    def save(self) -> None:
        """Write state files (content-named), then the manifest as the commit point, then prune."""
        strategy = self.strategy()
        tensors = strategy.state_dict()
        check_finite(tensors)
        extra = strategy.extra_state()
        self.manifest["state"] = {
            "tensors": write_tensors(self.path, tensors, self.strategy_name) if tensors else None,
            "extra": write_extra(self.path, extra, self.strategy_name) if extra else None,
        }
        self._commit()

    def _commit(self) -> None:
        self.manifest["updated"] = _now()
        self.manifest["clslm_version"] = __version__
        write_json_atomic(self.path / MANIFEST, self.manifest)
        self._new = None
        self._prune()

    def verify(self) -> None:
        """Check that every state file the manifest names is there with its size and sha256, and that the
        JSON state is a JSON object within limits (the tensors are checked against the model at load)."""
        for kind, entry in self.manifest["state"].items():
            if entry:
                data = read_blob(self.path, entry)
                if kind == "extra":
                    load_extra(data, self.path / entry["file"])

    def _load_state(self, strategy: Strategy) -> None:
        """Apply the saved state, every file checked first (clslm/state_files.py): extra, then tensors."""
        tensors_entry, extra_entry = self.manifest["state"]["tensors"], self.manifest["state"]["extra"]
        if extra_entry:
            where = self.path / extra_entry["file"]
            load_extra_into(strategy, load_extra(read_blob(self.path, extra_entry), where), where)
        if tensors_entry:
            where = self.path / tensors_entry["file"]
            load_into(strategy, load_tensors(read_blob(self.path, tensors_entry), where), where)

    def _prune(self) -> None:
        """Delete state files the manifest does not name and temp files of writes a kill cut short."""
        keep = {entry["file"] for entry in self.manifest["state"].values() if entry}
        for path in self.path.iterdir():
            unused = path.name.startswith(("deltas-", "state-")) and path.name not in keep
            if (unused or is_temp(path)) and path.is_file():
                path.unlink(missing_ok=True)

