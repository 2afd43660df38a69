"""Every error prefloop raises on purpose, in one family under `PrefloopError`.

`InputError` is the part the command line catches (exit code 2, one line `error: {message}`): bad data
(`DataError`), bad options (`ConfigError`, `PrecisionError`, `CLIError`) and a model that cannot be loaded
(`ModelLoadError`). The message of each names what is wrong and where. The others are failures of a run
(`LogitsMismatchError`), of the feedback app (`AppError`, `SecretKeyError`) or of its server as a client sees
it (`FeedbackError`).

This module is the bottom layer: it imports nothing of prefloop and nothing heavy, so every layer (the
torch-free feedback app included) may use it.
"""

from __future__ import annotations

import os


class PrefloopError(Exception):
    """The base of every error prefloop raises on purpose."""


class InputError(PrefloopError, ValueError):
    """Bad input of any kind: the message is one line naming what is wrong and where."""


class DataError(InputError):
    """Bad input data. The message is one line: ``"{path}:{line}: {problem}"`` or ``"{path}: {problem}"``.

    Build it with `DataError.at` (a record on a line) or `DataError.whole` (the whole file); the parts stay
    available as `path`, `line` and `problem`. The CLI prints ``error: {message}`` and exits with code 2.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 problem: str | None = None):
        super().__init__(_one_line(message))
        self.path, self.line, self.problem = path, line, problem

    @classmethod
    def at(cls, path: str | os.PathLike, line: int, problem: str) -> DataError:
        """The record on `line` (1-based, blank lines counted) of `path` is bad."""
        return cls(f"{path}:{line}: {problem}", path=str(path), line=line, problem=problem)

    @classmethod
    def whole(cls, path: str | os.PathLike, problem: str) -> DataError:
        """The file as a whole is bad (missing, empty, unreadable)."""
        return cls(f"{path}: {problem}", path=str(path), problem=problem)


class RecordError(PrefloopError, ValueError):
    """A problem with one record, before the reader knows where it came from (it adds path and line)."""


class ConfigError(InputError):
    """A missing or inconsistent option; the message is one line naming the option."""


class PrecisionError(ConfigError):
    """A precision the machine cannot run; the message is one line naming the option."""


class CLIError(InputError):
    """A command-line error (unknown option in a --config file, a missing value); exit code 2."""


class ModelLoadError(InputError):
    """A model or tokenizer could not be loaded; the message is one line naming the path."""


class LogitsMismatchError(PrefloopError, ValueError):
    """The model's forward computes its logits differently from the head prefloop applies."""


class AppError(PrefloopError, ValueError):
    """A request the feedback app refuses: `status` is the HTTP status, the message one line for the user."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class SecretKeyError(PrefloopError, ValueError):
    """The feedback app has no usable secret key: the message says what to set."""


class FeedbackError(PrefloopError, RuntimeError):
    """The feedback app's server refused or failed a client's request."""


def require(cfg, *names: str) -> None:
    """A `ConfigError` naming the first option of `names` that `cfg` leaves empty (None or "")."""
    for n in names:
        if getattr(cfg, n) in (None, ""):
            raise ConfigError(f"missing option --{n.replace('_', '-')}")


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())
