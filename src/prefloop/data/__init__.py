"""Data: record types, JSONL readers and writers with file:line errors, chat templates, tokenisation.

The names below load on first use (PEP 562), so `prefloop.data.records` and `prefloop.data.jsonl`
import without torch: the feedback app and its command line never load it. Only the tokenisation
helpers (`prefloop.data.tokenize`) import torch. Nothing here imports recipes.
"""

import importlib

_SOURCES = {
    "hashing": ("file_sha256",),
    "jsonl": ("iter_jsonl", "read_comparisons", "read_demonstrations", "read_prompts", "read_rankings",
              "read_ratings", "read_records", "write_jsonl"),
    "records": ("Comparison", "Demonstration", "Prompt", "Ranking", "Rating", "split_implicit_prompt"),
    "templates": ("DEFAULT_CHAT_TEMPLATE", "render_completion", "render_prompt"),
    "tokenize": ("IGNORE_INDEX", "Encoded", "EncodedPair", "collate_pairs",
                 "collate_sft", "encode_completion", "encode_example", "encode_pair", "encode_prompt",
                 "ensure_pad_token", "left_pad", "length_grouped_order", "pack_texts", "right_pad"),
}
_MODULE_OF = {name: module for module, names in _SOURCES.items() for name in names}


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))


__all__ = [
    "DEFAULT_CHAT_TEMPLATE",
    "IGNORE_INDEX",
    "Comparison",
    "Demonstration",
    "Encoded",
    "EncodedPair",
    "Prompt",
    "Ranking",
    "Rating",
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
