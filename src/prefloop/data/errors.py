"""Errors of bad input, each with a one-line message that names what is wrong and where.

`InputError` is the family the command line catches (exit code 2, `error: {message}`): bad data
(`DataError`), bad options (`ConfigError`), a model that cannot be loaded (`ModelLoadError`) and
command-line errors all derive from it. This module imports nothing heavy, so anything may use it.
"""

from __future__ import annotations

import os


class InputError(ValueError):
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


class RecordError(ValueError):
    """A problem with one record, before the reader knows where it came from (it adds path and line)."""


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())
