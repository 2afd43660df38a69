"""Items in, records out: validating and importing item files, and exporting judgments as the JSONL records
of `prefloop.data` that the trainers read (docs/FEEDBACK_APP.md, "Import format" and "Export format")."""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from prefloop.data.jsonl import write_jsonl
from prefloop.data.records import Comparison, Demonstration, Prompt, Ranking, Rating
from prefloop.errors import AppError, DataError

from .db import Item, Judgment, Project, User
from .service import (
    DEFAULT_SCALE,
    MAX_RESPONSES,
    audit,
    ranks_from_order,
    strict_json_loads,
    text_problem,
    valid_ranks,
)

# ---------------------------------------------------------------- import


@dataclass(frozen=True)
class ImportLimits:
    """What one import may hold; beyond it the import is refused with an error naming the line or item."""

    max_field_chars: int = 200_000
    """Characters in any one text of an item (the prompt, a response, a message, a `meta` value)."""
    max_bytes: int = 256 << 20
    """Bytes of an import file after decompression (a small gzip file can expand a thousandfold)."""


DEFAULT_LIMITS = ImportLimits()

def _responses_of(d: dict) -> list:
    if "responses" in d:
        r = d["responses"]
        if not isinstance(r, list):
            raise DataError(f"field 'responses' must be a list, got {type(r).__name__}")
        return r
    if "response" in d:
        return [d["response"]]
    if "chosen" in d and "rejected" in d:
        return [d["chosen"], d["rejected"]]
    return []


def _check_gold(task_type: str, gold: Any, n: int, scale: tuple[int, int]) -> dict:
    if not isinstance(gold, dict):
        raise DataError(f"field 'gold' must be an object, got {type(gold).__name__}")
    if task_type == "pairwise":
        pref = gold.get("preferred", "missing")
        if pref is not None and pref not in (0, 1):
            raise DataError("gold of a pairwise item needs 'preferred': 0, 1 or null (a tie)")
        return {"preferred": pref}
    if task_type == "ranking":
        ranks = gold.get("ranks")
        if ranks is None and "ranking" in gold:
            ranks = ranks_from_order(gold["ranking"], n)
        if not valid_ranks(ranks, n):
            raise DataError(f"gold of a ranking item needs 'ranking' (a permutation of 0..{n - 1}) or "
                            f"'ranks' ({n} ranks from 1)")
        return {"ranks": ranks}
    if task_type == "rating":
        r = gold.get("rating")
        if not isinstance(r, int) or isinstance(r, bool) or not scale[0] <= r <= scale[1]:
            raise DataError(f"gold of a rating item needs an integer 'rating' in {scale[0]}..{scale[1]}")
        return {"rating": r}
    raise DataError("demonstration items cannot be gold items")


MAX_ID_LENGTH = 200  # the column holds 255, and a rating line's items add "#k"


def _check_fit(meta: dict | None, ext: Any) -> None:
    """What the database and the export need beyond the types: an id that fits its column, `meta` that is
    JSON (no NaN or Infinity, which PostgreSQL and strict JSON readers refuse)."""
    if ext is not None and len(str(ext)) > MAX_ID_LENGTH:
        raise DataError(f"field 'id' must have at most {MAX_ID_LENGTH} characters")
    try:
        json.dumps(meta, allow_nan=False)
    except ValueError:
        raise DataError("field 'meta' must be plain JSON: no NaN or Infinity") from None


def _check_content(task_type: str, d: dict, responses: list, limits: ImportLimits) -> None:
    """Text every page, export and trainer can handle (no NUL, no lone surrogate, not over the size limit),
    and responses that differ where they are compared."""
    problem = text_problem(d, limits.max_field_chars)
    if problem:
        raise DataError(problem)
    if task_type in ("pairwise", "ranking"):
        # a comparison of a response with itself teaches nothing and would export chosen == rejected
        if len({json.dumps(r, sort_keys=True) for r in responses}) < len(responses):
            raise DataError("two responses are identical; a comparison needs different responses")


def validate_item(task_type: str, d: dict, scale: tuple[int, int], where: str,
                  limits: ImportLimits = DEFAULT_LIMITS) -> list[dict]:
    """The item(s) one import line makes (a rating line with K responses makes K items)."""
    try:
        prompt = Prompt.from_json({k: d[k] for k in ("prompt", "messages") if k in d}, where).prompt
        responses = _responses_of(d)
        if task_type == "pairwise" and len(responses) != 2:
            raise DataError(f"a pairwise item needs exactly 2 responses, got {len(responses)}")
        if task_type == "ranking" and not 2 <= len(responses) <= MAX_RESPONSES:
            raise DataError(f"a ranking item needs 2..{MAX_RESPONSES} responses, got {len(responses)}")
        if task_type == "rating" and not responses:
            raise DataError("a rating item needs 'response' or 'responses'")
        if task_type == "demonstration" and len(responses) > 1:
            raise DataError("a demonstration item takes at most one draft response")
        if task_type == "ranking" or task_type == "pairwise":
            Ranking.from_json({"prompt": prompt, "responses": responses, "ranking": list(range(len(responses)))},
                              where)
        elif task_type == "rating":
            for r in responses:
                Rating.from_json({"prompt": prompt, "response": r, "rating": scale[0], "scale": list(scale)}, where)
        elif responses:
            Demonstration.from_json({"prompt": prompt, "completion": responses[0]}, where)
        gold = _check_gold(task_type, d["gold"], len(responses), scale) if d.get("gold") is not None else None
        meta = d.get("meta")
        if meta is not None and not isinstance(meta, dict):
            raise DataError(f"field 'meta' must be an object, got {type(meta).__name__}")
        policies = (meta or {}).get("policies")
        if policies is not None and (not isinstance(policies, list) or len(policies) != len(responses)
                                     or not all(isinstance(x, str) and x for x in policies)):
            raise DataError(f"field 'meta.policies' must be a list of {len(responses)} names, one per response")
        ext = d.get("id")
        if ext is not None and (isinstance(ext, bool) or not isinstance(ext, (str, int))):
            raise DataError("field 'id' must be a string or an integer")
        _check_fit(meta, ext)
        _check_content(task_type, d, responses, limits)
    except DataError as e:
        msg = str(e)
        raise DataError(msg if msg.startswith(where) else f"{where}: {msg}") from None
    base = {"prompt": prompt, "gold": gold, "meta": meta, "id": None if ext is None else str(ext)}
    if task_type == "rating" and len(responses) > 1:
        return [{**base, "responses": [r], "suffix": f"#{i}"} for i, r in enumerate(responses)]
    return [{**base, "responses": responses, "suffix": ""}]


def iter_item_lines(lines: Iterable[bytes], where: str) -> Iterator[tuple[int, dict]]:
    """`(line number, object)` of each non-blank JSONL line; `DataError` names the line: bytes that are not
    UTF-8, malformed JSON, a key given twice in one object, or a line that is not an object."""
    for line_no, raw in enumerate(lines, 1):
        if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{where}:{line_no}: not valid UTF-8") from None
        if not text.strip():
            continue
        try:
            obj = strict_json_loads(text)
        except AppError as e:
            raise DataError(f"{where}:{line_no}: {e}") from None
        if not isinstance(obj, dict):
            raise DataError(f"{where}:{line_no}: expected a JSON object, got {type(obj).__name__}")
        yield line_no, obj


def _capped(stream: IO[bytes], limit: int, where: str, chunk: int = 1 << 20) -> Iterator[bytes]:
    """The bytes of `stream` in chunks, gunzipped if it starts with the gzip magic number, refusing more than
    `limit` bytes of output (decompressed on the fly, never whole in memory)."""
    head = stream.read(2)
    unzip = zlib.decompressobj(wbits=31) if head == b"\x1f\x8b" else None
    total, data = 0, head
    while data:
        if unzip is not None:
            try:
                data = unzip.decompress(data, limit + 1 - total)
            except zlib.error as e:
                raise DataError(f"{where}: not a valid gzip file ({e})") from None
        total += len(data)
        if total > limit:
            raise DataError(f"{where}: more than {limit} bytes of items (after decompression); "
                            "split the file or raise the import limit")
        yield data
        data = unzip.unconsumed_tail if unzip is not None and unzip.unconsumed_tail else stream.read(chunk)


def _lines_of(chunks: Iterator[bytes]) -> Iterator[bytes]:
    pending: list[bytes] = []  # the start of a line that spans chunks (joined once, not per chunk)
    for chunk in chunks:
        parts = chunk.split(b"\n")
        if len(parts) == 1:
            pending.append(chunk)
            continue
        yield b"".join([*pending, parts[0]])
        yield from parts[1:-1]
        pending = [parts[-1]]
    if any(pending):
        yield b"".join(pending)


def read_item_stream(stream: IO[bytes], project: Project, where: str,
                     limits: ImportLimits = DEFAULT_LIMITS) -> list[dict]:
    """Validated items of a JSONL stream (plain or gzip), read in chunks; `DataError` names the line."""
    scale = tuple(project.config.get("scale", DEFAULT_SCALE))
    out = []
    seen: dict[str, int] = {}
    for line_no, d in iter_item_lines(_lines_of(_capped(stream, limits.max_bytes, where)), where):
        at = f"{where}:{line_no}"
        for item in validate_item(project.task_type, d, scale, at, limits):
            ext = (item["id"] if item["id"] is not None else f"line{line_no}") + item.pop("suffix")
            if ext in seen:
                raise DataError(f"{at}: duplicate item id {ext!r} (first on line {seen[ext]})")
            seen[ext] = line_no
            item["id"] = ext
            out.append(item)
    if not out:
        raise DataError(f"{where}: empty file (no items)")
    return out


def read_items(path: str | os.PathLike, project: Project, limits: ImportLimits = DEFAULT_LIMITS) -> list[dict]:
    """Validated items of a JSONL file, plain or gzip (see docs/FEEDBACK_APP.md, "Import format");
    `DataError` names the line. Accepts `prefloop sample` output (`{"prompt", "responses", "ended"}`) as it is.
    """
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below; the stream is read lazily)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    with f:
        return read_item_stream(f, project, str(path), limits)


def import_items(s: Session, project: Project, items: list[dict], actor: str = "cli", source: str = "") -> int:
    """Add validated items (from `read_items`); an id already in the project is an error and nothing is added."""
    ids = [it["id"] for it in items]
    existing = set()
    for i in range(0, len(ids), 500):
        existing.update(s.scalars(select(Item.external_id).where(Item.project_id == project.id,
                                                                 Item.external_id.in_(ids[i:i + 500]))))
    if existing:
        raise AppError(f"{len(existing)} item id(s) already in project {project.name!r}, "
                       f"e.g. {sorted(existing)[0]!r}; nothing imported", 409)
    s.add_all(Item(project_id=project.id, external_id=it["id"], prompt=it["prompt"], responses=it["responses"],
                   is_gold=it["gold"] is not None, gold=it["gold"], meta=it["meta"], n_assigned=0) for it in items)
    audit(s, actor, "project.import", project.name, items=len(items), source=source,
          gold=sum(it["gold"] is not None for it in items))
    return len(items)


# ---------------------------------------------------------------- export


def default_export_kind(task_type: str) -> str:
    return {"pairwise": "comparisons", "ranking": "comparisons", "rating": "ratings",
            "demonstration": "demonstrations"}[task_type]


def _judgment_rows(s: Session, project: Project, include_gold: bool):
    q = (select(Judgment, Item, User).join(Item, Item.id == Judgment.item_id).join(User, User.id == Judgment.user_id)
         .where(Judgment.project_id == project.id).order_by(Judgment.id))
    if not include_gold:
        q = q.where(Item.is_gold.is_(False))
    return s.execute(q)


def _pairs(value: dict, task_type: str) -> list[tuple[int, int, float | None, bool]]:
    """(better, worse, margin, tie) pairs of a judgment: a ranking gives all C(K, 2) pairs."""
    if task_type == "pairwise":
        if value["preferred"] is None:
            return [(0, 1, 0.0, True)]
        p = value["preferred"]
        return [(p, 1 - p, float(value["strength"]), False)]
    ranks, out = value["ranks"], []
    for i in range(len(ranks)):
        for j in range(i + 1, len(ranks)):
            if ranks[i] == ranks[j]:
                out.append((i, j, 0.0, True))
            else:
                a, b = (i, j) if ranks[i] < ranks[j] else (j, i)
                out.append((a, b, None, False))
    return out


def export_records(s: Session, project: Project, kind: str | None = None, ties: str = "drop",
                   include_gold: bool = False) -> list:
    """Records (`prefloop.data.records`) of the project's judgments, each with `annotator` and `pool`.

    comparisons: pairwise judgments (strength 1..3 as `margin`) and rankings expanded to their C(K, 2)
    pairs; tied pairs are dropped, or kept with `margin` 0 and `meta.tie` when `ties="keep"`. The item's own
    `meta` (from the import) comes back as `meta.item_meta`; when it names the writer of each response
    (`meta.policies`, e.g. `prefloop eval human-project`), each comparison also carries `meta.chosen_policy`
    and `meta.rejected_policy`, which `prefloop eval --judge-file` reads.
    rankings: rankings without ties (a tie is not representable in a `Ranking`). ratings, demonstrations.
    """
    kind = kind or default_export_kind(project.task_type)
    allowed = {"pairwise": ("comparisons",), "ranking": ("comparisons", "rankings"), "rating": ("ratings",),
               "demonstration": ("demonstrations",)}[project.task_type]
    if kind not in allowed:
        raise AppError(f"a {project.task_type} project exports {' or '.join(allowed)}, not {kind!r}")
    if ties not in ("drop", "keep"):
        raise AppError(f"ties must be 'drop' or 'keep', got {ties!r}")
    out: list = []
    for j, item, user in _judgment_rows(s, project, include_gold):
        common = {"annotator": user.username, "pool": user.pool, "id": f"{item.external_id}/{user.username}",
                  "meta": {"project": project.name, "item": item.external_id, "duration_ms": j.duration_ms,
                           **({"gold": True} if item.is_gold else {}),
                           **({"item_meta": item.meta} if item.meta else {})}}
        where = f"judgment {j.id}"
        p, rs, v = item.prompt, item.responses, j.value
        if kind == "comparisons":
            for a, b, margin, tie in _pairs(v, project.task_type):
                if tie and ties == "drop":
                    continue
                rec = {"prompt": p, "chosen": rs[a], "rejected": rs[b], **common}
                if margin is not None:
                    rec["margin"] = margin
                if tie:
                    rec["meta"] = {**common["meta"], "tie": True}
                policies = (item.meta or {}).get("policies")
                if isinstance(policies, list) and len(policies) == len(rs):
                    rec["meta"] = {**rec["meta"], "chosen_policy": policies[a], "rejected_policy": policies[b]}
                if len(rs) > 2:
                    rec["id"] = f"{common['id']}/{a}>{b}"
                out.append(Comparison.from_json(rec, where))
        elif kind == "rankings":
            ranks = v["ranks"]
            if len(set(ranks)) == len(ranks):
                order = sorted(range(len(ranks)), key=lambda i: ranks[i])
                out.append(Ranking.from_json({"prompt": p, "responses": rs, "ranking": order, **common}, where))
        elif kind == "ratings":
            meta = {**common["meta"], "criteria": v["criteria"], "flags": v["flags"]}
            out.append(Rating.from_json({"prompt": p, "response": rs[0], "rating": v["rating"],
                                         "scale": project.config["scale"], **common, "meta": meta}, where))
        else:
            out.append(Demonstration.from_json({"prompt": p, "completion": v["text"], **common}, where))
    return out


def write_export(path: str | os.PathLike, records: list) -> int:
    """Write the records atomically (a temporary file renamed into place); returns how many."""
    return write_jsonl(path, records)
