"""Token ids for feedback beyond one reward pair: pairs with their prompt length (DPO), K-way rankings
and single rated responses. Same conventions as `tokenize.py` (DESIGN.md): prompt with special tokens,
response without, then EOS; when too long, the prompt is cut from the left, the responses from the right,
and all responses to one prompt keep the same prompt tokens.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .templates import render_completion, render_prompt
from .tokenize import _check_max_length, _keep_prompt_end, _prompt_budget, encode_completion, encode_prompt


def encode_responses(tokenizer: Any, prompt: Any, responses: list, max_length: int) -> tuple[list[list[int]], int]:
    """Ids of prompt + each response (rendered here), all with the same prompt tokens, and the number of
    prompt tokens at the front of each. The prompt budget is set by the longest response (as `encode_pair`)."""
    _check_max_length(max_length)
    p = encode_prompt(tokenizer, render_prompt(tokenizer, prompt))
    rs = [encode_completion(tokenizer, render_completion(tokenizer, prompt, r)) for r in responses]
    kept = _keep_prompt_end(p, _prompt_budget(len(p), max(len(r) for r in rs), max_length), tokenizer.bos_token_id)
    room = max_length - len(kept)
    return [kept + r[:room] for r in rs], len(kept)


class PromptedPair(NamedTuple):
    chosen: list[int]  # (Tc,) prompt + chosen response + EOS
    rejected: list[int]  # (Tr,) prompt + rejected response + EOS
    prompt_len: int  # prompt tokens at the front of both


def encode_pair_with_prompt(tokenizer: Any, comparison: Any, max_length: int) -> PromptedPair:
    """`encode_pair` plus the prompt length, so that a loss can read the response tokens only (DPO)."""
    (c, r), n = encode_responses(tokenizer, comparison.prompt, [comparison.chosen, comparison.rejected], max_length)
    return PromptedPair(c, r, n)


def encode_ranking(tokenizer: Any, ranking: Any, max_length: int) -> list[list[int]]:
    """Ids of prompt + each response of a `Ranking`, in the order of `ranking.responses`."""
    return encode_responses(tokenizer, ranking.prompt, list(ranking.responses), max_length)[0]


def encode_rating(tokenizer: Any, rating: Any, max_length: int) -> list[int]:
    """Ids of prompt + the rated response of a `Rating`."""
    return encode_responses(tokenizer, rating.prompt, [rating.response], max_length)[0][0]
