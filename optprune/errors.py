"""Error hierarchy. Every class also subclasses the matching builtin, so callers
can catch either ``optprune.errors.ValidationError`` or plain ``ValueError``."""

from __future__ import annotations


class OptpruneError(Exception):
    """Base class of every error optprune raises on purpose."""


class ValidationError(OptpruneError, ValueError):
    """Input that does not have the expected shape, type, range or meaning."""


class InfeasibleProblemError(OptpruneError, ValueError):
    """No selection can satisfy the constraints; the message names the conflict."""


class BackendUnavailableError(OptpruneError, RuntimeError):
    """A solver backend is unknown or cannot be imported here."""


class MissingExtraError(OptpruneError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""


class UnsupportedModuleError(OptpruneError, TypeError):
    """A network contains layers or modules optprune cannot handle (all are listed)."""


class SolverError(OptpruneError, RuntimeError):
    """A solver failed in a way that is not a limit, infeasibility or unboundedness."""


class SolutionMismatchError(OptpruneError, RuntimeError):
    """A solver's answer, checked against the problem it was meant to solve, breaks a
    constraint or is worth other than the solver reported. Never returned as a result."""


class CheckpointError(OptpruneError, ValueError):
    """A model file that cannot be read back (missing, damaged, another program's or
    another format), or a checkpoint that cannot be written; the message names the file."""


class TrainingDivergedError(OptpruneError, RuntimeError):
    """A loss (or gradient, or parameter) became NaN or infinite. The model was reset to
    its last good checkpoint, which the error carries: ``checkpoint`` (name -> tensor),
    ``step`` (and ``epoch``) where it went bad, ``checkpoint_path`` if it was written."""

    def __init__(self, message: str, step: int, checkpoint: dict | None = None,
                 epoch: int | None = None, checkpoint_path: str | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint
        self.epoch = epoch
        self.checkpoint_path = checkpoint_path


def check(condition: bool, what: str, expected: str, got: object, hint: str = "") -> None:
    """Raise ValidationError with the project's one message template.

    "The 'budget' parameter of ParamBudget must be in (0, 1]; got 1.7."
    """
    if not condition:
        msg = f"{what} must be {expected}; got {got!r}."
        if hint:
            msg += f" {hint}"
        raise ValidationError(msg)
