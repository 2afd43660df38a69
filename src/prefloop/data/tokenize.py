"""Tokenisation and collation: token ids for SFT, reward pairs, sampling and pretraining.

Conventions (DESIGN.md): the prompt and the completion are tokenised separately and concatenated. The
prompt gets the tokenizer's special tokens (BOS where it has one, never a trailing EOS); the completion
gets none, then the EOS. So sampling sees exactly the prompt ids that training saw. Pad is distinct
from EOS (`ensure_pad_token`), so masks can never confuse the end of a text with padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from prefloop.rl.batches import PreferenceBatch, SFTBatch

from .templates import render_completion, render_prompt

IGNORE_INDEX = -100  # label of positions without a loss (prompt and pad), as in torch's cross_entropy
PAD_TOKEN = "<|pad|>"


# -- token ids ------------------------------------------------------------------------------------------

def _ids(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _added_special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text when asked for special tokens (e.g. [BOS], [])."""
    plain, full = _ids(tokenizer, "a", False), _ids(tokenizer, "a", True)
    for k in range(len(full) - len(plain) + 1):
        if full[k:k + len(plain)] == plain:
            return full[:k], full[k + len(plain):]
    return [], []


def encode_prompt(tokenizer: Any, prompt_text: str) -> list[int]:
    """Prompt ids with the tokenizer's special tokens, less a trailing EOS if the tokenizer appends one.

    A BOS is not doubled when the text already starts with it (chat templates that write `{{ bos_token }}`).
    """
    ids = _ids(tokenizer, prompt_text, False)
    before, after = _added_special_tokens(tokenizer)
    if before and ids[:len(before)] == before:
        before = []
    if after and after[-1] == tokenizer.eos_token_id:
        after = after[:-1]
    return before + ids + after


def encode_completion(tokenizer: Any, completion_text: str) -> list[int]:
    """Completion ids without special tokens, then the EOS."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token, and every completion must end with one")
    return _ids(tokenizer, completion_text, False) + [tokenizer.eos_token_id]


def _prompt_budget(n_prompt: int, n_completion: int, max_length: int) -> int:
    """How many prompt tokens to keep: all if everything fits, else as many as leave room for the
    completion, but at least max_length // 2 (the completion is then cut)."""
    if n_prompt + n_completion <= max_length:
        return n_prompt
    return min(n_prompt, max(max_length - n_completion, max_length // 2))


def _keep_prompt_end(ids: list[int], keep: int, bos_id: int | None) -> list[int]:
    """The last `keep` prompt tokens (the end is closest to the answer); a leading BOS stays in place."""
    if len(ids) <= keep:
        return ids
    if bos_id is not None and ids and ids[0] == bos_id and keep >= 2:
        return ids[:1] + ids[len(ids) - keep + 1:]
    return ids[len(ids) - keep:]


def _check_max_length(max_length: int) -> None:
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")


@dataclass
class Encoded:
    """One SFT example: prompt then completion ids, labels -100 on the prompt."""

    input_ids: list[int]  # (T,) prompt ids + completion ids (+ EOS unless truncated away)
    labels: list[int]  # (T,) -100 on the prompt, the completion ids (EOS included) after it
    prompt_len: int  # number of prompt tokens at the front
    truncated: bool  # whether prompt or completion lost tokens to max_length


def encode_example(tokenizer: Any, prompt: str, completion: str, max_length: int) -> Encoded:
    """Encode a rendered prompt and completion (see `render_prompt`, `render_completion`) for SFT.

    If prompt + completion exceed `max_length`, the prompt is cut from the left (its end, closest to the
    answer, stays; so does a leading BOS) to what leaves room for the completion, but never below
    `max_length // 2` tokens; then the completion is cut from the right, which loses its EOS (the model
    is not taught to stop where the text was cut).
    """
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise TypeError("encode_example takes rendered text: render messages with render_prompt and "
                        "render_completion first")
    _check_max_length(max_length)
    p, c = encode_prompt(tokenizer, prompt), encode_completion(tokenizer, completion)
    kept = _keep_prompt_end(p, _prompt_budget(len(p), len(c), max_length), tokenizer.bos_token_id)
    c_kept = c[:max_length - len(kept)]
    return Encoded(kept + c_kept, [IGNORE_INDEX] * len(kept) + c_kept, len(kept),
                   len(kept) < len(p) or len(c_kept) < len(c))


class EncodedPair(NamedTuple):
    chosen: list[int]  # (Tc,) prompt + chosen response + EOS
    rejected: list[int]  # (Tr,) prompt + rejected response + EOS


def encode_pair(tokenizer: Any, comparison: Any, max_length: int) -> EncodedPair:
    """Ids of prompt + chosen and prompt + rejected for a `Comparison` (any form; it is rendered here).

    Truncation as in `encode_example`, with the prompt budget set by the longer response, so both
    sequences keep the same prompt tokens and differ only in their responses.
    """
    _check_max_length(max_length)
    p = encode_prompt(tokenizer, render_prompt(tokenizer, comparison.prompt))
    ch = encode_completion(tokenizer, render_completion(tokenizer, comparison.prompt, comparison.chosen))
    rj = encode_completion(tokenizer, render_completion(tokenizer, comparison.prompt, comparison.rejected))
    budget = _prompt_budget(len(p), max(len(ch), len(rj)), max_length)
    kept = _keep_prompt_end(p, budget, tokenizer.bos_token_id)
    room = max_length - len(kept)
    return EncodedPair(kept + ch[:room], kept + rj[:room])


# -- padding and batches -------------------------------------------------------------------------------

def right_pad(seqs: list[list[int]], pad_id: int,
              length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (B, T), mask (B, T)) with the sequences at the left, pad after; T = `length` or the longest."""
    T = max((len(s) for s in seqs), default=0) if length is None else length
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids, mask


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (B, P), mask (B, P)) with pad before each sequence, so all end at column P - 1 (for sampling:
    new tokens are appended on the right of every row at once)."""
    P = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), P), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, P - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, P - len(s):] = 1
    return ids, mask


def collate_sft(examples: list[Encoded], pad_id: int) -> SFTBatch:
    """Right-pad a list of `Encoded` examples into one batch."""
    ids, mask = right_pad([e.input_ids for e in examples], pad_id)
    labels, _ = right_pad([e.labels for e in examples], IGNORE_INDEX)
    return SFTBatch(ids, mask, labels)


def collate_pairs(pairs: list[Sequence[list[int]]], pad_id: int, margins: list[float] | None = None,
                  prompt_lens: list[int] | None = None) -> PreferenceBatch:
    """Right-pad (chosen_ids, rejected_ids) pairs (`EncodedPair`, `PromptedPair` or plain tuples), both sides
    to one length T, so that `PreferenceBatch.rows()` scores the whole batch in one (2B, T) forward.

    margins: (B,) required reward gaps, or None. prompt_lens: prompt tokens at the front of each pair; with
    them the batch carries response masks (1 on the response tokens, EOS included), for losses on the
    response only (DPO)."""
    T = max((max(len(p[0]), len(p[1])) for p in pairs), default=0)
    c_ids, c_mask = right_pad([p[0] for p in pairs], pad_id, T)
    r_ids, r_mask = right_pad([p[1] for p in pairs], pad_id, T)
    margin = None if margins is None else torch.tensor(margins, dtype=torch.float)
    c_resp = r_resp = None
    if prompt_lens is not None:
        after_prompt = (torch.arange(T).unsqueeze(0) >= torch.tensor(prompt_lens).unsqueeze(1)).long()
        c_resp, r_resp = c_mask * after_prompt, r_mask * after_prompt
    return PreferenceBatch(c_ids, c_mask, r_ids, r_mask, margin, c_resp, r_resp)


def pack_texts(tokenizer: Any, texts: list[str], block_size: int) -> torch.Tensor:
    """Pretraining blocks (N, block_size): the texts tokenised without special tokens, each followed by
    the EOS (the document separator), concatenated and cut into full blocks; the tail is dropped."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token to separate documents")
    flat: list[int] = []
    if texts:
        for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
            flat.extend(ids)
            flat.append(tokenizer.eos_token_id)
    n = len(flat) // block_size
    return torch.tensor(flat[:n * block_size], dtype=torch.long).view(n, block_size)


def length_grouped_order(lengths: list[int], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Batches of indices of similar length, in random order: a random permutation is cut into
    mega-chunks of 50 * batch_size, each sorted by length (longest first) and split into batches,
    and the batches are shuffled. Padding drops while every epoch still sees new batch mixes.
    Every index appears exactly once; only the last batch of the last chunk can be short."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    perm = torch.randperm(len(lengths), generator=generator).tolist()
    mega = 50 * batch_size
    batches: list[list[int]] = []
    for start in range(0, len(perm), mega):
        chunk = sorted(perm[start:start + mega], key=lambda i: lengths[i], reverse=True)
        batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


def ensure_pad_token(tokenizer: Any) -> bool:
    """Give the tokenizer a pad token distinct from EOS (adding `<|pad|>` where it has none, or where
    pad is EOS). Returns True if the vocabulary grew: the caller must then resize the embeddings."""
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return False
    before = len(tokenizer)
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return len(tokenizer) > before
