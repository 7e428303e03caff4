"""Errors a user can cause, each with a one-line hint saying what to do next.

The CLI maps every `GuardError` to a single line on stderr and its exit code (2 unless the class
says otherwise). Anything else is a bug: the CLI still prints one line and exits 2 (never 1, the
"poison found" code), and shows the traceback with `--debug` or `SSL_GUARD_DEBUG=1`.

Where a stdlib exception type means the same thing, the error also inherits it, so library users
can catch `FileNotFoundError` or `ValueError` as they would anywhere else.
"""

from __future__ import annotations


class GuardError(Exception):
    """Base class: `message` says what went wrong, `hint` the next action."""

    exit_code = 2

    def __init__(self, message: str, hint: str = "") -> None:
        Exception.__init__(self, message)  # not OSError's (errno, strerror) signature
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message

    def one_line(self) -> str:
        text = f"error: {self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return " ".join(text.split())


class DataNotFoundError(GuardError, FileNotFoundError):
    """A dataset path, shard or pattern that matches nothing."""


class EmptyDatasetError(GuardError):
    """The sources exist but hold no readable image."""


class EncoderError(GuardError):
    """An encoder spec that cannot be resolved or loaded."""


class EncoderNotFoundError(EncoderError, FileNotFoundError):
    """A Hub id or folder with no encoder in it."""


class UnsafeWeightsError(EncoderError):
    """Weights in a format that could run code when loaded (pickle)."""


class ConfigError(GuardError, ValueError):
    """An option value outside its allowed range."""


class RunDirError(GuardError):
    """A run folder that exists and was not asked to be resumed, or does not match its inputs."""


class ManifestError(GuardError, ValueError):
    """A quarantine manifest that is unreadable, of another schema, or stale."""


class StaleManifestError(ManifestError):
    """The data changed since the manifest was written."""

    exit_code = 1


class TruthError(GuardError, ValueError):
    """A ground-truth file that does not match the run it should score."""


class ReportError(GuardError, ValueError):
    """A run folder without a readable report.json, or one of another schema version."""


class ScoresError(GuardError, ValueError):
    """A run's scores.csv that is missing, malformed, or holds a sample twice."""


class PoisonFoundError(GuardError):
    """A check found more flagged samples than its --fail-on allows."""

    exit_code = 1


class IncompleteScanError(GuardError):
    """Part of the input could not be read, so the data was not fully checked."""


class UncoveredDataError(ManifestError):
    """Data files that no current quarantine manifest covers (changed or never scanned)."""

    exit_code = 1


class UnscannedSourceError(GuardError):
    """A training sample from a shard or file that the quarantine's scan never saw."""


def validation_summary(error, prefix: tuple = (), default: str = "(top level)") -> tuple[str, str]:
    """`(where, message)` of a pydantic `ValidationError`'s first error: the one line the CLI shows.

    `where` is the dotted field path (after `prefix`), `default` when the error has no location.
    """
    first = error.errors()[0]
    where = ".".join(str(part) for part in (*prefix, *first.get("loc", ()))) or default
    return where, str(first["msg"])
