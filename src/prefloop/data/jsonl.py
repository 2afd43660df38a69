"""JSONL readers and an atomic writer. One JSON object per line; `.jsonl.gz` is read and written too.

Readers stop at the first bad record with a `DataError` naming the file and the line (1-based, blank
lines counted, so the number is the one an editor shows). Blank lines are skipped. The file is read as
bytes and decoded line by line, so undecodable bytes are reported on their own line.
"""

from __future__ import annotations

import codecs
import gzip
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from ._fields import type_name
from .errors import DataError, RecordError
from .records import Comparison, Demonstration, Prompt, Ranking, Rating

GZIP_MAGIC = b"\x1f\x8b"
R = TypeVar("R")


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


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield `(line_number, object)` for each non-blank line; raise `DataError` on a missing file,
    undecodable bytes, malformed JSON, a line that is not a JSON object, or a file with no records."""
    path = Path(path)
    n = 0
    for line_no, raw in _lines(path):
        if line_no == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8):]
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError.at(path, line_no, "not valid UTF-8") from None
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError.at(path, line_no, f"malformed JSON: {e.msg} (column {e.colno})") from None
        except RecursionError:
            raise DataError.at(path, line_no, "malformed JSON: nested too deeply") from None
        except ValueError as e:  # e.g. an integer of more than 4300 digits (Python's int/str conversion limit)
            raise DataError.at(path, line_no, f"malformed JSON: {e}") from None
        if not isinstance(obj, dict):
            raise DataError.at(path, line_no, f"expected a JSON object, got {type_name(obj)}")
        n += 1
        yield line_no, obj
    if n == 0:
        raise DataError.whole(path, "empty file (no records)")


def read_records(path: str | os.PathLike, record_type: type[R]) -> list[R]:
    """All records of `path` parsed as `record_type` (one of the classes in `prefloop.data.records`)."""
    out = []
    for line_no, obj in iter_jsonl(path):
        try:
            out.append(record_type.parse(obj))  # type: ignore[attr-defined]
        except RecordError as e:
            raise DataError.at(path, line_no, str(e)) from None
    return out


def read_prompts(path: str | os.PathLike) -> list[Prompt]:
    """`{"prompt": text | messages}` or `{"messages": [...]}` per line."""
    return read_records(path, Prompt)


def read_demonstrations(path: str | os.PathLike) -> list[Demonstration]:
    """`{"prompt", "completion"}` (text, or messages + [assistant message]) or `{"messages": [...]}`."""
    return read_records(path, Demonstration)


def read_comparisons(path: str | os.PathLike) -> list[Comparison]:
    """`{"prompt", "chosen", "rejected"}` (standard or conversational) or implicit prompt
    (`{"chosen", "rejected"}` only); optional `margin`, `annotator`, `pool`, `id`, `meta`."""
    return read_records(path, Comparison)


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
