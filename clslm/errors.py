"""One exception family; each carries the exit code the CLI returns (see README, "Exit codes")."""


class ClslmError(Exception):
    """An anticipated failure: printed as one line, never as a traceback."""

    exit_code = 1


class UsageError(ClslmError):
    """The command line itself is wrong."""

    exit_code = 2


class InputError(ClslmError):
    """A document, option or data file that clslm cannot use."""

    exit_code = 3


class UnknownStrategy(InputError):
    pass


class StrategyNotImplemented(InputError):
    pass


class ModelError(InputError):
    """A model reference that does not resolve to loadable weights."""


class SessionError(ClslmError):
    """A session directory that is missing, corrupt, busy or made for something else."""

    exit_code = 4


class SessionNotFound(SessionError):
    pass


class SessionCorrupt(SessionError):
    pass


class SessionBusy(SessionError):
    pass


class SessionMismatch(SessionError):
    pass


class StateMismatch(ClslmError):
    """Raised by a strategy (which knows no session): what it learned no longer fits something it was learned
    with (doc2lora: the hypernetwork file changed since). The Session re-raises it as SessionMismatch naming the
    session; a saved state that does not load is the Session's to say too (SessionCorrupt, state_files.py)."""

    exit_code = 4


class BackendUnreachable(ClslmError):
    """A model hub or LLM server that cannot be reached."""

    exit_code = 5


class TrainingDiverged(InputError):
    """Learning produced non-finite losses several times in a row (or non-finite state); nothing was saved.

    Bad input, not a bug: these options (usually -o lr) or this document make this strategy diverge.
    """
