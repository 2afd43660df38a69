"""The held-out split every recipe uses: whole prompts are held out, so no held-out prompt was trained on."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from typing import TypeVar

R = TypeVar("R")


def _prompt_field(record):
    return record["prompt"] if isinstance(record, dict) else record.prompt


def split_by_prompt(records: Sequence[R], fraction: float, seed: int | str,
                    prompt: Callable[[R], object] = _prompt_field) -> tuple[list[R], list[R]]:
    """(train, held-out) records: `fraction` of the distinct prompts (at least one; none when `fraction` is 0),
    drawn with `seed`, and every record of a held-out prompt. A prompt is text or a list of messages (records
    with a `prompt` attribute or key, or any `prompt(record)`); the draw depends on the set of prompts only,
    not on the records' order."""
    if fraction <= 0:
        return list(records), []

    def key(r) -> str:
        return json.dumps(prompt(r), sort_keys=True)

    prompts = sorted({key(r) for r in records})
    random.Random(seed).shuffle(prompts)
    held = set(prompts[:max(1, int(round(fraction * len(prompts))))])
    return [r for r in records if key(r) not in held], [r for r in records if key(r) in held]
