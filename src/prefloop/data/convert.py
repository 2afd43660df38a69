"""`prefloop convert --format F --input IN --out OUT.jsonl`: public human-feedback data into prefloop's JSONL.

Formats (readers in `prefloop.data.real`):
- `hh-rlhf`: HH-RLHF lines -> comparisons (lines whose two dialogues differ before the last assistant turn,
  or whose final reply is empty, are skipped and reported); raw "Human:/Assistant:" text, or with
  `--as-messages` chat messages (the turns split), which the tokenizer's chat template renders;
- `summarize`: OpenAI summarize-from-feedback comparison rows -> comparisons (`annotator` = worker);
- `shp`: Stanford SHP rows -> comparisons (`pool` = domain);
- `vader-ratings`: VADER rating files -> one rating per individual human rating (scale -4..4);
- `vader-comparisons`: VADER rating files -> pairs of texts, the higher mean rating preferred.
The output is what `prefloop reward --data` / `prefloop sft` read, written atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from prefloop.data.jsonl import write_jsonl
from prefloop.data.real import (
    find_vader_files,
    read_hh_rlhf,
    read_shp,
    read_summarize_comparisons,
    read_vader_texts,
    vader_comparisons,
    vader_ratings,
)

Format = Literal["hh-rlhf", "summarize", "shp", "vader-ratings", "vader-comparisons"]
COMPARISON_FORMATS = ("hh-rlhf", "summarize", "shp", "vader-comparisons")


@dataclass(kw_only=True)
class ConvertConfig:
    config: Path | None = None
    """YAML file with option values; options given on the command line override it."""
    format: Format = "hh-rlhf"
    """Input format: HH-RLHF lines, OpenAI summarize-from-feedback comparisons, Stanford SHP rows, or VADER ratings."""
    input: Path | None = None
    """Input file (JSONL, plain or .gz); for vader-*: one *_anonDataRatings.txt.gz file or a directory of them."""
    out: Path | None = None
    """Output JSONL file (.jsonl.gz compresses): comparisons, or ratings for vader-ratings."""
    margin: float | None = None
    """vader-comparisons only: keep a pair only when the mean ratings differ by more than this (default 0)."""
    max_pairs: int | None = None
    """At most this many comparisons: drawn pairs for vader-comparisons (default: one per text), else the first."""
    min_score_ratio: float = 1.0
    """shp only: keep pairs whose higher comment score is at least this many times the lower one (SHP: 2)."""
    mean_rating: bool = False
    """vader-ratings only: one rating per text (the mean of its raters) instead of one per rater."""
    seed: int = 0
    """Seed of the pair drawing of vader-comparisons (the same input and seed give the same pairs)."""
    as_messages: bool = False
    """hh-rlhf only: write the prompt as chat messages (the Human/Assistant turns split) and each reply as an
    assistant message, so the tokenizer's chat template applies; lines whose turns cannot be split are skipped."""


def _check(cfg: ConvertConfig) -> None:
    from prefloop.errors import ConfigError, require

    require(cfg, "input", "out")
    if cfg.margin is not None and cfg.format != "vader-comparisons":
        raise ConfigError(f"--margin applies to --format vader-comparisons only, not {cfg.format}")
    if cfg.margin is not None and cfg.margin < 0:
        raise ConfigError(f"--margin must be >= 0, got {cfg.margin}")
    if cfg.max_pairs is not None and cfg.format not in COMPARISON_FORMATS:
        raise ConfigError(f"--max-pairs applies to comparison formats only, not {cfg.format}")
    if cfg.max_pairs is not None and cfg.max_pairs < 1:
        raise ConfigError(f"--max-pairs must be >= 1, got {cfg.max_pairs}")
    if cfg.as_messages and cfg.format != "hh-rlhf":
        raise ConfigError(f"--as-messages applies to --format hh-rlhf only, not {cfg.format}")
    if cfg.mean_rating and cfg.format != "vader-ratings":
        raise ConfigError(f"--mean-rating applies to --format vader-ratings only, not {cfg.format}")


def convert_records(cfg: ConvertConfig) -> tuple[list, list[str]]:
    """The records `cfg` asks for and the skipped input lines (as `file:line: reason`)."""
    _check(cfg)
    skipped: list[str] = []
    if cfg.format in ("vader-ratings", "vader-comparisons"):
        texts = [t for f in find_vader_files(cfg.input) for t in read_vader_texts(f)]
        if cfg.format == "vader-ratings":
            return vader_ratings(texts, mean=cfg.mean_rating), skipped
        return vader_comparisons(texts, margin=cfg.margin or 0.0, max_pairs=cfg.max_pairs, seed=cfg.seed), skipped
    if cfg.format == "hh-rlhf":
        result = read_hh_rlhf(cfg.input, as_messages=cfg.as_messages)
        records, skipped = result.records, result.skipped
    elif cfg.format == "summarize":
        records = read_summarize_comparisons(cfg.input)
    else:
        records = read_shp(cfg.input, min_score_ratio=cfg.min_score_ratio)
    if cfg.max_pairs is not None:
        records = records[:cfg.max_pairs]
    return records, skipped


def run_convert(cfg: ConvertConfig) -> Path:
    from prefloop.errors import ConfigError
    from prefloop.runtime import console

    records, skipped = convert_records(cfg)
    if not records:
        raise ConfigError(f"{cfg.input}: no records to write (all rows skipped or filtered out)")
    n = write_jsonl(cfg.out, records)
    kind = "ratings" if cfg.format == "vader-ratings" else "comparisons"
    console.print(f"{n} {kind} written to {cfg.out}" + (f"; {len(skipped)} input lines skipped" if skipped else ""),
                  soft_wrap=True)
    for line in skipped[:10]:
        console.print(f"  skipped {line}", markup=False, highlight=False, soft_wrap=True)
    if len(skipped) > 10:
        console.print(f"  ... and {len(skipped) - 10} more")
    return Path(cfg.out)
