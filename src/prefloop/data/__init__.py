"""Data: record types, JSONL readers and writers with file:line errors, chat templates, tokenisation.

Imports torch (for collation) but no model code; nothing here imports recipes.
"""

from .errors import DataError
from .hashing import file_sha256
from .jsonl import (
    iter_jsonl,
    read_comparisons,
    read_demonstrations,
    read_prompts,
    read_rankings,
    read_ratings,
    read_records,
    write_jsonl,
)
from .records import Comparison, Demonstration, Prompt, Ranking, Rating, split_implicit_prompt
from .templates import DEFAULT_CHAT_TEMPLATE, render_completion, render_prompt
from .tokenize import (
    IGNORE_INDEX,
    Encoded,
    EncodedPair,
    PairTensors,
    SFTTensors,
    collate_pairs,
    collate_sft,
    encode_completion,
    encode_example,
    encode_pair,
    encode_prompt,
    ensure_pad_token,
    left_pad,
    length_grouped_order,
    pack_texts,
    right_pad,
)

__all__ = [
    "DEFAULT_CHAT_TEMPLATE",
    "IGNORE_INDEX",
    "Comparison",
    "DataError",
    "Demonstration",
    "Encoded",
    "EncodedPair",
    "PairTensors",
    "Prompt",
    "Ranking",
    "Rating",
    "SFTTensors",
    "collate_pairs",
    "collate_sft",
    "encode_completion",
    "encode_example",
    "encode_pair",
    "encode_prompt",
    "ensure_pad_token",
    "file_sha256",
    "iter_jsonl",
    "left_pad",
    "length_grouped_order",
    "pack_texts",
    "read_comparisons",
    "read_demonstrations",
    "read_prompts",
    "read_rankings",
    "read_ratings",
    "read_records",
    "render_completion",
    "render_prompt",
    "right_pad",
    "split_implicit_prompt",
    "write_jsonl",
]
