"""The held-out split every recipe uses: whole prompts are held out, so no held-out prompt was trained on."""

from __future__ import annotations

import json
import random
import sys
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
    not on the records' order. When every record shares one prompt (VADER-derived data all have the empty
    prompt), records are held out instead, with a note on stderr."""
    if fraction <= 0:
        return list(records), []

    def key(r) -> str:
        return json.dumps(prompt(r), sort_keys=True)

    prompts = sorted({key(r) for r in records})
    if len(prompts) == 1 and len(records) > 1:
        # One prompt for all (VADER-derived data: the empty prompt): holding it out would leave nothing to
        # train on, so hold out records instead.
        order = list(range(len(records)))
        random.Random(seed).shuffle(order)
        held_idx = set(order[:max(1, int(round(fraction * len(records))))])
        print(f"note: every record has the same prompt; holding out {len(held_idx)} of {len(records)} records "
              "instead of whole prompts", file=sys.stderr)
        return ([r for i, r in enumerate(records) if i not in held_idx],
                [r for i, r in enumerate(records) if i in held_idx])
    random.Random(seed).shuffle(prompts)
    held = set(prompts[:max(1, int(round(fraction * len(prompts))))])
    return [r for r in records if key(r) not in held], [r for r in records if key(r) in held]
