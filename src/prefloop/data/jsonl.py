"""JSONL readers and an atomic writer. One JSON object per line; `.jsonl.gz` is read and written too.

Readers stop at the first bad record with a `DataError` naming the file and the line (1-based, blank
lines counted, so the number is the one an editor shows). Blank lines are skipped. The file is read as
bytes and decoded line by line, so undecodable bytes are reported on their own line.

Beyond well-formed JSON, a record must not hold text no tokenizer can take: lone UTF-16 surrogates
(`"\\ud800"`, which cannot be encoded as UTF-8); and no object may repeat a key (JSON parsers keep the
last value silently, so a pair can lose its rejected response). The record readers (`read_records` and the
`read_*` helpers the trainers use) also refuse NUL characters: a NUL is never meant text, the feedback app
cannot store it, and a pair whose replies differ only by one would teach nothing (prefloop's own writers drop
rows holding a sampled NUL, with a count). `iter_jsonl`, the generic reader, lets NULs pass unless told
(`nul=False`, as the pretraining corpus reader does).
`parse_line` and `text_problem` (which also reports NULs) make these checks available to any other reader
(no torch).

Inside `skipping_invalid()` (the CLI's `--skip-invalid`) readers skip bad records instead of stopping,
and report how many they skipped and the first few lines on stderr; problems of the whole file (missing,
unreadable, no valid record) still stop them.
"""

from __future__ import annotations

import codecs
import contextlib
import contextvars
import gzip
import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from prefloop.errors import DataError, RecordError

from ._fields import short, type_name
from .records import Comparison, Demonstration, Prompt, Ranking, Rating

GZIP_MAGIC = b"\x1f\x8b"
R = TypeVar("R")
# How many skipped line numbers a --skip-invalid report lists.
SHOWN_SKIPS = 5
_SKIP_INVALID: contextvars.ContextVar[bool] = contextvars.ContextVar("skip_invalid", default=False)


@contextlib.contextmanager
def skipping_invalid(enabled: bool = True):
    """Within this block readers skip bad records (with a report on stderr) instead of raising."""
    token = _SKIP_INVALID.set(enabled)
    try:
        yield
    finally:
        _SKIP_INVALID.reset(token)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise RecordError(f"key {short(dup)} appears twice in one object (the last value would win silently)")
    return d


def _string_problem(s: str, nul: bool = True) -> str | None:
    if nul and "\x00" in s:
        return "holds a NUL character"
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return "holds a lone surrogate (\\ud800-\\udfff), which is not text"
    return None


def text_problem(obj: Any, where: str = "", *, nul: bool = True) -> str | None:
    """The first string (key or value) in a JSON value that holds a lone surrogate (or, with `nul`, a NUL),
    as "field 'a.b[2]' holds ...", or None when all text is clean."""
    if isinstance(obj, str):
        problem = _string_problem(obj, nul)
        return f"field '{where or 'value'}' {problem}" if problem else None
    if isinstance(obj, dict):
        for k, v in obj.items():
            name = f"{where}.{k}" if where else str(k)
            if _string_problem(k, nul):
                return f"key {short(k)} {_string_problem(k, nul)}"
            found = text_problem(v, name, nul=nul)
            if found:
                return found
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found = text_problem(v, f"{where}[{i}]", nul=nul)
            if found:
                return found
    return None


def parse_line(line: str) -> dict:
    """One JSONL line (decoded) -> the object; raises `RecordError` with the problem (malformed JSON, not
    an object, a repeated key, a lone surrogate in any string)."""
    try:
        obj = json.loads(line, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as e:
        raise RecordError(f"malformed JSON: {e.msg} (column {e.colno})") from None
    except RecursionError:
        raise RecordError("malformed JSON: nested too deeply") from None
    except RecordError:
        raise
    except ValueError as e:  # e.g. an integer of more than 4300 digits (Python's int/str conversion limit)
        raise RecordError(f"malformed JSON: {e}") from None
    if not isinstance(obj, dict):
        raise RecordError(f"expected a JSON object, got {type_name(obj)}")
    # A surrogate can only come from a \u escape: raw UTF-8 has none.
    if "\\u" in line:
        problem = text_problem(obj, nul=False)
        if problem:
            raise RecordError(problem)
    return obj


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes) of a plain or gzip-compressed file (detected by its magic bytes)."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        raise DataError.whole(path, "file not found") from None
    except IsADirectoryError:
        raise DataError.whole(path, "is a directory, expected a JSONL file") from None
    except OSError as e:
        raise DataError.whole(path, f"cannot read the file ({e.strerror or e})") from None
    line_no = 0
    with f:
        is_gzip = f.read(2) == GZIP_MAGIC
        f.seek(0)
        stream = gzip.GzipFile(fileobj=f, mode="rb") if is_gzip else f
        try:
            for line_no, raw in enumerate(stream, 1):
                yield line_no, raw
        except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
            problem = f"corrupt or truncated gzip data after line {line_no} ({e})"
            raise DataError.whole(path, problem) from None


def iter_jsonl(path: str | os.PathLike, *, nul: bool = True) -> Iterator[tuple[int, dict]]:
    """Yield `(line_number, object)` for each non-blank line; raise `DataError` on a missing file,
    undecodable bytes, a line `parse_line` refuses (and, with `nul=False`, a NUL character), or a file
    with no records. Inside `skipping_invalid()` bad lines are skipped and reported instead."""
    yield from _records(path, lambda obj: obj, nul=nul)


def _no_nul(line: str, obj: dict) -> dict:
    # A NUL can only arrive as a \u0000 escape (strict JSON refuses raw control characters in strings).
    if "\\u0000" in line:
        problem = text_problem(obj)
        if problem:
            raise RecordError(problem)
    return obj


def _records(path: str | os.PathLike, parse, *, nul: bool = True) -> Iterator[tuple[int, Any]]:
    """Records of `path` through `parse`; `nul=False` refuses NUL characters in any string."""
    path = Path(path)
    skip = _SKIP_INVALID.get()
    n, skipped = 0, []
    for line_no, raw in _lines(path):
        if line_no == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8):]
        try:
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise RecordError("not valid UTF-8") from None
            if not line.strip():
                continue
            obj = parse_line(line)
            record = parse(obj if nul else _no_nul(line, obj))
        except RecordError as e:
            if not skip:
                raise DataError.at(path, line_no, str(e)) from None
            skipped.append((line_no, str(e)))
            continue
        n += 1
        yield line_no, record
    if skipped:
        _report_skipped(path, skipped)
    if n == 0:
        raise DataError.whole(path, f"no valid records ({len(skipped)} skipped)" if skipped else
                              "empty file (no records)")


def _report_skipped(path: Path, skipped: list[tuple[int, str]]) -> None:
    lines = ", ".join(str(n) for n, _ in skipped[:SHOWN_SKIPS]) + (", ..." if len(skipped) > SHOWN_SKIPS else "")
    first_line, first_problem = skipped[0]
    print(f"warning: {path}: skipped {len(skipped)} invalid record(s) (lines {lines}); "
          f"line {first_line}: {first_problem}", file=sys.stderr)


def read_records(path: str | os.PathLike, record_type: type[R]) -> list[R]:
    """All records of `path` parsed as `record_type` (one of the classes in `prefloop.data.records`)."""
    return [r for _, r in _records(path, record_type.parse, nul=False)]  # type: ignore[attr-defined]


def read_prompts(path: str | os.PathLike) -> list[Prompt]:
    """`{"prompt": text | messages}` or `{"messages": [...]}` per line."""
    return read_records(path, Prompt)


def read_demonstrations(path: str | os.PathLike) -> list[Demonstration]:
    """`{"prompt", "completion"}` (text, or messages + [assistant message]) or `{"messages": [...]}`."""
    return read_records(path, Demonstration)


def read_comparisons(path: str | os.PathLike, *, allow_identical: bool = True) -> list[Comparison]:
    """`{"prompt", "chosen", "rejected"}` (standard or conversational) or implicit prompt
    (`{"chosen", "rejected"}` only); optional `margin`, `annotator`, `pool`, `id`, `meta`.
    `allow_identical=False` (training data) refuses a response compared with itself unless `meta.tie` is set."""
    if allow_identical:
        return read_records(path, Comparison)
    return [r for _, r in _records(path, lambda d: Comparison.parse(d).check_distinct(), nul=False)]


def read_rankings(path: str | os.PathLike) -> list[Ranking]:
    """`{"prompt", "responses": [K >= 2], "ranking": [indices best..worst]}` per line."""
    return read_records(path, Ranking)


def read_ratings(path: str | os.PathLike) -> list[Rating]:
    """`{"prompt", "response", "rating", "scale": [lo, hi]}` per line, lo <= rating <= hi."""
    return read_records(path, Rating)


def _as_json(item: Any) -> dict:
    if hasattr(item, "to_json"):
        return item.to_json()
    if isinstance(item, dict):
        return item
    raise TypeError(f"write_jsonl expects records (with to_json) or dicts, got {type(item).__name__}")


def write_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> int:
    """Write records (or dicts) one per line; return how many. Gzip-compressed when `path` ends in `.gz`.

    Atomic: the lines go to `{path}.tmp`, which replaces `path` only once everything is written and
    synced, so an exception midway (from the iterable, or a value JSON cannot hold such as NaN) leaves
    the old file, if any, untouched and no temporary file behind. Parent directories are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    try:
        with tmp.open("wb") as raw:
            out = raw
            if path.suffix == ".gz":
                # no name or time in the header: the same records give the same bytes (and file hash)
                out = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)
            try:
                for item in records:
                    line = json.dumps(_as_json(item), ensure_ascii=False, allow_nan=False)
                    out.write(line.encode("utf-8") + b"\n")
                    n += 1
            finally:
                if out is not raw:
                    out.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n
