"""Readers for public human-feedback data sets, into prefloop's record types.

- HH-RLHF (Bai et al. 2022): `{"chosen": DIALOGUE, "rejected": DIALOGUE}` lines, two whole
  `\\n\\nHuman: ... \\n\\nAssistant: ...` dialogues; split at the last `"\\n\\nAssistant:"` turn into a shared prompt
  and the two final replies.
- OpenAI summarize-from-feedback (Stiennon et al. 2020) comparison rows: `info` (post or article), two
  `summaries`, the labeller's `choice` and `worker`.
- Stanford SHP (Ethayarajh et al. 2022) rows: a Reddit post `history`, two comments `human_ref_A/B` and
  `labels` (1 when A is preferred), with the two comments' scores.
- VADER (Hutto & Gilbert 2014) rating files: `{domain}_anonDataRatings.txt.gz` (id, mean, std, list of the
  individual ratings on -4..+4) joined with `{domain}_GroundTruth.txt.gz` (id, mean, text), into one `Rating`
  per individual rating and into comparisons between texts (the higher mean rating preferred).

Malformed rows raise `DataError` naming `file:line` and the problem. Rows that are well formed but cannot
become a record (HH dialogues whose prompts differ, an empty final reply) are skipped and listed in the
`skipped` of the result, so a caller can report them.
"""

from __future__ import annotations

import codecs
import gzip
import json
import math
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from prefloop.errors import DataError, RecordError

from ._fields import short, type_name
from .jsonl import iter_jsonl
from .records import Comparison, Rating

R = TypeVar("R")
HH_ASSISTANT = "\n\nAssistant:"
VADER_SCALE = (-4.0, 4.0)
VADER_RATINGS_SUFFIX = "_anonDataRatings.txt.gz"
VADER_TEXT_SUFFIX = "_GroundTruth.txt.gz"


@dataclass
class ReadResult(Generic[R]):
    """Records read from a file, and the rows skipped as `"file:line: reason"` strings."""

    records: list[R]
    skipped: list[str] = field(default_factory=list)


def _build(cls, d: dict, path: Path, line: int):
    try:
        return cls.parse(d)
    except RecordError as e:
        raise DataError.at(path, line, str(e)) from None


def _string_field(d: dict, name: str, path: Path, line: int) -> str:
    if name not in d:
        raise DataError.at(path, line, f"missing field '{name}'")
    if not isinstance(d[name], str):
        raise DataError.at(path, line, f"field '{name}' must be a string, got {type_name(d[name])}")
    return d[name]


# --- HH-RLHF --------------------------------------------------------------------------------------------------

def split_hh_dialogue(dialogue: str) -> tuple[str, str] | None:
    """(prompt, final reply) of an HH-RLHF dialogue: the prompt runs up to and including the last
    `"\\n\\nAssistant:"`, the reply is the rest (with its leading space, the text convention of DESIGN.md).
    None when the dialogue has no assistant turn."""
    k = dialogue.rfind(HH_ASSISTANT)
    if k < 0:
        return None
    cut = k + len(HH_ASSISTANT)
    return dialogue[:cut], dialogue[cut:]


HH_TURN = re.compile(r"\n\n(Human|Assistant):")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def hh_messages(prompt: str) -> list[dict] | str:
    """The turns of an HH-RLHF prompt (as `split_hh_dialogue` returns it) as chat messages, each turn's text
    stripped; or the reason it cannot be split: text before the first turn, an empty turn, or two turns of
    one speaker in a row (a chat template expects user and assistant to alternate)."""
    pieces = HH_TURN.split(prompt)
    if pieces[0].strip():
        return "text before the first 'Human:' turn"
    # pieces: ['', role, text, role, text, ..., 'Assistant', ''] (the prompt ends with the last assistant cue)
    turns = list(zip(pieces[1::2], pieces[2::2]))[:-1]
    out = []
    for k, (speaker, text) in enumerate(turns):
        role = HH_ROLES[speaker]
        if not text.strip():
            return f"turn {k + 1} ({speaker}) is empty"
        if out and out[-1]["role"] == role:
            return f"turns {k} and {k + 1} are both {speaker}"
        out.append({"role": role, "content": text.strip()})
    if not out or out[0]["role"] != "user" or out[-1]["role"] != "user":
        return "the dialogue does not start and end its prompt with a 'Human:' turn"
    return out


def read_hh_rlhf(path: str | os.PathLike, as_messages: bool = False) -> ReadResult[Comparison]:
    """Comparisons from an HH-RLHF JSONL file (plain or .gz). A line whose two dialogues do not share the
    prompt up to the last assistant turn, or whose final reply is empty, is skipped and listed in
    `skipped`; a line without `chosen`/`rejected` strings or without any assistant turn is a `DataError`.
    `as_messages`: the prompt as chat messages (`hh_messages`) and each reply as one assistant message, so
    the tokenizer's chat template applies; lines whose turns cannot be split are skipped and listed."""
    path = Path(path)
    out, skipped = [], []
    for line, d in iter_jsonl(path):
        chosen = _string_field(d, "chosen", path, line)
        rejected = _string_field(d, "rejected", path, line)
        parts = []
        for name, dialogue in (("chosen", chosen), ("rejected", rejected)):
            split = split_hh_dialogue(dialogue)
            if split is None:
                raise DataError.at(path, line, f"field '{name}' has no {HH_ASSISTANT.strip()!r} turn: "
                                               f"{short(dialogue)}")
            parts.append(split)
        (p_c, r_c), (p_r, r_r) = parts
        if p_c != p_r:
            skipped.append(f"{path}:{line}: the dialogues differ before the last assistant turn "
                           f"({p_c.count(HH_ASSISTANT)} vs {p_r.count(HH_ASSISTANT)} assistant turns)")
            continue
        empty = [n for n, r in (("chosen", r_c), ("rejected", r_r)) if not r.strip()]
        if empty:
            skipped.append(f"{path}:{line}: the final reply of '{empty[0]}' is empty")
            continue
        row = {"prompt": p_c, "chosen": r_c, "rejected": r_r, "id": line}
        if as_messages:
            turns = hh_messages(p_c)
            if isinstance(turns, str):
                skipped.append(f"{path}:{line}: {turns}")
                continue
            row.update(prompt=turns, chosen=[{"role": "assistant", "content": r_c.strip()}],
                       rejected=[{"role": "assistant", "content": r_r.strip()}])
        out.append(_build(Comparison, row, path, line))
    return ReadResult(out, skipped)


# --- OpenAI summarize-from-feedback ---------------------------------------------------------------------------

def summarize_prompt(info: dict) -> str:
    """The TL;DR prompt of Stiennon et al. (2020): subreddit, title and post for Reddit rows, the article for
    CNN/DM rows, then `"TL;DR:"`."""
    if info.get("post"):
        head = f"SUBREDDIT: r/{info.get('subreddit') or ''}\nTITLE: {info.get('title') or ''}\nPOST: {info['post']}"
    else:
        head = f"ARTICLE: {info.get('article')}"
    return head + "\nTL;DR:"


def _summary_text(s: Any, i: int, path: Path, line: int) -> str:
    if not isinstance(s, dict) or not isinstance(s.get("text"), str):
        raise DataError.at(path, line, f"summaries[{i}] must be an object with a string 'text', got {short(s)}")
    text = s["text"]
    return text if text[:1].isspace() else " " + text


def read_summarize_comparisons(path: str | os.PathLike) -> list[Comparison]:
    """Comparisons from summarize-from-feedback comparison rows (JSON lines, as in the public
    `comparisons/batch*.json` files): `{"info": {"post" | "article", "title", "subreddit", ...},
    "summaries": [{"text", "policy"}, {...}], "choice": 0 | 1, "worker", "split", "extra": {"confidence"}}`.
    `annotator` is the worker; `meta` keeps the split, the batch, the two policies and the confidence."""
    path = Path(path)
    out = []
    for line, d in iter_jsonl(path):
        info = d.get("info")
        if not isinstance(info, dict):
            raise DataError.at(path, line, f"field 'info' must be an object, got {type_name(info)}")
        if not (isinstance(info.get("post"), str) and info["post"].strip()) and not (
                isinstance(info.get("article"), str) and info["article"].strip()):
            raise DataError.at(path, line, "field 'info' has neither a 'post' nor an 'article' text")
        summaries = d.get("summaries")
        if not isinstance(summaries, list) or len(summaries) != 2:
            raise DataError.at(path, line, f"field 'summaries' must be a list of 2 summaries, got {short(summaries)}")
        choice = d.get("choice")
        if choice not in (0, 1) or isinstance(choice, bool):
            raise DataError.at(path, line, f"field 'choice' must be 0 or 1, got {short(choice)}")
        texts = [_summary_text(s, i, path, line) for i, s in enumerate(summaries)]
        extra = d.get("extra") if isinstance(d.get("extra"), dict) else {}
        meta = {"split": d.get("split"), "batch": d.get("batch"),
                "policies": [s.get("policy") for s in summaries], "confidence": extra.get("confidence")}
        rec = {"prompt": summarize_prompt(info), "chosen": texts[choice], "rejected": texts[1 - choice],
               "meta": {k: v for k, v in meta.items() if v is not None}, "id": line}
        if isinstance(d.get("worker"), str) and d["worker"]:
            rec["annotator"] = d["worker"]
        out.append(_build(Comparison, rec, path, line))
    return out


# --- Stanford SHP ---------------------------------------------------------------------------------------------

def shp_prompt(history: str) -> str:
    return f"POST: {history}\n\nCOMMENT:"


def read_shp(path: str | os.PathLike, *, min_score_ratio: float = 1.0) -> list[Comparison]:
    """Comparisons from SHP-style rows: `{"history", "human_ref_A", "human_ref_B", "labels": 1 | 0,
    "score_A", "score_B", "domain", "post_id"}` (`labels` = 1 when comment A is preferred). Pairs whose
    `score_ratio` (the higher score over the lower) is below `min_score_ratio` are left out (the SHP authors
    recommend training on ratios of 2 or more). `pool` is the `domain` (subreddit and split)."""
    path = Path(path)
    out = []
    for line, d in iter_jsonl(path):
        history = _string_field(d, "history", path, line)
        a = _string_field(d, "human_ref_A", path, line)
        b = _string_field(d, "human_ref_B", path, line)
        label = d.get("labels")
        if label not in (0, 1) or isinstance(label, bool):
            raise DataError.at(path, line, f"field 'labels' must be 1 (A preferred) or 0 (B preferred), "
                                           f"got {short(label)}")
        ratio = d.get("score_ratio")
        if ratio is None and isinstance(d.get("score_A"), int | float) and isinstance(d.get("score_B"), int | float):
            hi, lo = max(d["score_A"], d["score_B"]), min(d["score_A"], d["score_B"])
            ratio = hi / lo if lo > 0 else math.inf
        if ratio is not None and not isinstance(ratio, int | float):
            raise DataError.at(path, line, f"field 'score_ratio' must be a number, got {short(ratio)}")
        if ratio is not None and ratio < min_score_ratio:
            continue
        chosen, rejected = (a, b) if label == 1 else (b, a)
        rec: dict[str, Any] = {"prompt": shp_prompt(history), "chosen": " " + chosen.lstrip(),
                               "rejected": " " + rejected.lstrip(), "id": d.get("post_id", line)}
        if not isinstance(rec["id"], str | int) or isinstance(rec["id"], bool):
            rec["id"] = line
        if isinstance(d.get("domain"), str) and d["domain"]:
            rec["pool"] = d["domain"]
        if ratio is not None and math.isfinite(ratio):
            rec["meta"] = {"score_ratio": ratio}
        out.append(_build(Comparison, rec, path, line))
    return out


# --- VADER ratings ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VaderText:
    """One rated text of the VADER data: its individual ratings (-4..+4) and their mean."""

    domain: str
    id: str
    text: str
    ratings: tuple[int, ...]
    file_mean: float  # the mean column of the GroundTruth file (differs from `mean` for 199 tweets)

    @property
    def mean(self) -> float:
        return sum(self.ratings) / len(self.ratings)


def _tsv_lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, tab-separated fields) of a plain or gzip text file; blank lines skipped, BOM dropped."""
    try:
        with path.open("rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError.whole(path, "file not found") from None
    except OSError as e:
        raise DataError.whole(path, f"cannot read the file ({e.strerror or e})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError.whole(path, f"corrupt or truncated gzip data ({e})") from None
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    n = 0
    for line_no, line in enumerate(raw.split(b"\n"), 1):
        try:
            text = line.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError:
            raise DataError.at(path, line_no, "not valid UTF-8") from None
        if text.strip():
            n += 1
            yield line_no, text.split("\t")
    if n == 0:
        raise DataError.whole(path, "empty file (no rows)")


def _float(s: str, what: str, path: Path, line: int) -> float:
    try:
        v = float(s)
    except ValueError:
        raise DataError.at(path, line, f"{what} must be a number, got {short(s)}") from None
    if not math.isfinite(v):
        raise DataError.at(path, line, f"{what} must be finite, got {short(s)}")
    return v


def _vader_ratings(path: Path) -> dict[str, tuple[int, tuple[int, ...]]]:
    """id -> (line, ratings) of an `*_anonDataRatings` file, checking the mean column against the list."""
    out: dict[str, tuple[int, tuple[int, ...]]] = {}
    lo, hi = VADER_SCALE
    for line, cols in _tsv_lines(path):
        if len(cols) != 4:
            raise DataError.at(path, line, f"expected 4 tab-separated fields (id, mean, std, [ratings]), "
                                           f"got {len(cols)}")
        rid, mean_s, _, ratings_s = (c.strip() for c in cols)
        if rid in out:
            raise DataError.at(path, line, f"id {rid!r} repeats line {out[rid][0]}")
        mean = _float(mean_s, "the mean", path, line)
        try:
            ratings = json.loads(ratings_s)
        except json.JSONDecodeError:
            raise DataError.at(path, line, f"the ratings must be a list like [1, -2, 0], got {short(ratings_s)}"
                               ) from None
        if not isinstance(ratings, list) or len(ratings) < 1 or not all(
                isinstance(r, int) and not isinstance(r, bool) for r in ratings):
            raise DataError.at(path, line, f"the ratings must be a non-empty list of integers, got {short(ratings_s)}")
        bad = [r for r in ratings if not lo <= r <= hi]
        if bad:
            raise DataError.at(path, line, f"rating {bad[0]} is outside the scale [{lo:g}, {hi:g}]")
        if abs(sum(ratings) / len(ratings) - mean) > 1e-3:
            raise DataError.at(path, line, f"the mean column {mean_s} is not the mean of the ratings "
                                           f"({sum(ratings) / len(ratings):.4f})")
        out[rid] = (line, tuple(ratings))
    return out


def vader_domain(path: str | os.PathLike) -> str:
    """The domain of a VADER file: `tweets` for `tweets_anonDataRatings.txt.gz`."""
    name = Path(path).name
    for suffix in (VADER_RATINGS_SUFFIX, VADER_TEXT_SUFFIX, ".txt.gz", ".txt"):
        if name.endswith(suffix):
            return name[:-len(suffix)]
    return name


def read_vader_texts(ratings_path: str | os.PathLike, texts_path: str | os.PathLike | None = None
                     ) -> list[VaderText]:
    """The rated texts of one VADER domain, in the order of the GroundTruth file.

    `ratings_path` is `{domain}_anonDataRatings.txt.gz`; `texts_path` defaults to the
    `{domain}_GroundTruth.txt.gz` beside it (id, mean, text). Every id must appear in both files."""
    ratings_path = Path(ratings_path)
    if texts_path is None:
        if not ratings_path.name.endswith(VADER_RATINGS_SUFFIX):
            raise DataError.whole(ratings_path, f"expected a '*{VADER_RATINGS_SUFFIX}' file (or pass the texts "
                                                f"file too)")
        texts_path = ratings_path.with_name(vader_domain(ratings_path) + VADER_TEXT_SUFFIX)
    texts_path = Path(texts_path)
    ratings = _vader_ratings(ratings_path)
    domain = vader_domain(ratings_path)
    out, seen = [], {}
    for line, cols in _tsv_lines(texts_path):
        if len(cols) < 3:
            raise DataError.at(texts_path, line, f"expected 3 tab-separated fields (id, mean, text), got {len(cols)}")
        tid, mean_s, text = cols[0].strip(), cols[1], "\t".join(cols[2:]).strip()
        if tid in seen:
            raise DataError.at(texts_path, line, f"id {tid!r} repeats line {seen[tid]}")
        seen[tid] = line
        if not text:
            raise DataError.at(texts_path, line, f"id {tid!r} has an empty text")
        if tid not in ratings:
            raise DataError.at(texts_path, line, f"id {tid!r} has no ratings in {ratings_path.name}")
        out.append(VaderText(domain, tid, text, ratings[tid][1], _float(mean_s, "the mean", texts_path, line)))
    missing = [(line, rid) for rid, (line, _) in ratings.items() if rid not in seen]
    if missing:
        line, rid = min(missing)
        raise DataError.at(ratings_path, line, f"id {rid!r} has no text in {texts_path.name}")
    return out


def find_vader_files(path: str | os.PathLike) -> list[Path]:
    """The `*_anonDataRatings.txt.gz` files of a VADER directory (sorted), or `[path]` for one file."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*" + VADER_RATINGS_SUFFIX))
        if not files:
            raise DataError.whole(path, f"no '*{VADER_RATINGS_SUFFIX}' files in the directory")
        return files
    if not path.exists():
        raise DataError.whole(path, "file not found")
    return [path]


def vader_ratings(texts: list[VaderText], *, mean: bool = False) -> list[Rating]:
    """`Rating` records: one per individual rating (default), or one per text with the mean rating.
    The text is the response to an empty prompt; `pool` is the domain; raters are anonymous, so no
    `annotator`."""
    out = []
    for t in texts:
        values = [t.mean] if mean else list(t.ratings)
        for j, r in enumerate(values):
            meta = {"n_ratings": len(t.ratings)} if mean else {"rater_index": j}
            out.append(Rating("", t.text, float(r), VADER_SCALE, pool=t.domain, id=f"{t.domain}/{t.id}", meta=meta))
    return out


def vader_comparisons(texts: list[VaderText], *, margin: float = 0.0, max_pairs: int | None = None,
                      seed: int = 0) -> list[Comparison]:
    """Pairs of texts of the same domain, the one with the higher mean rating preferred, kept only when the
    means differ by more than `margin` (so ties never become pairs). Pairs are drawn at random with `seed`
    (the same texts and seed give the same pairs), without repeats; `max_pairs` defaults to the number of
    texts (fewer pairs come back when too few pass the margin within 20 draws per wanted pair).
    The record's `margin` is the difference of the means (in rating points), for a margin loss."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    by_domain: dict[str, list[VaderText]] = {}
    for t in texts:
        by_domain.setdefault(t.domain, []).append(t)
    target = len(texts) if max_pairs is None else max_pairs
    rng = random.Random(seed)
    domains = sorted(by_domain)
    weights = [len(by_domain[d]) for d in domains]
    out: list[Comparison] = []
    seen: set[tuple[str, str, str]] = set()
    attempts = 0
    while len(out) < target and attempts < 20 * max(target, 1):
        attempts += 1
        dom = rng.choices(domains, weights)[0]
        pool = by_domain[dom]
        if len(pool) < 2:
            continue
        a, b = rng.sample(pool, 2)
        key = (dom, *sorted((a.id, b.id)))
        diff = a.mean - b.mean
        if key in seen or abs(diff) <= margin:
            continue
        seen.add(key)
        hi, lo = (a, b) if diff > 0 else (b, a)
        out.append(Comparison("", hi.text, lo.text, margin=round(abs(diff), 6), pool=dom,
                              id=f"{dom}/{hi.id}>{lo.id}"))
    return out
