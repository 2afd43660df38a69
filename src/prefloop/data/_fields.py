"""Checks of single JSON fields. Each returns the value or raises `RecordError` naming the field.

Messages are dicts with a `role` in ROLES and a string `content`; other keys (e.g. `name`) are kept
as they are, because chat templates may use them.
"""

from __future__ import annotations

import json
import math
from typing import Any

from prefloop.errors import RecordError

ROLES = ("system", "user", "assistant", "tool")
Text = str | list[dict]


def type_name(x: Any) -> str:
    return "null" if x is None else type(x).__name__


def short(x: Any, limit: int = 60) -> str:
    """A value quoted for an error message, cut to `limit` characters."""
    s = json.dumps(x, ensure_ascii=False, default=str)
    return s if len(s) <= limit else s[:limit - 3] + "..."


def required(d: dict, name: str) -> Any:
    if name not in d:
        raise RecordError(f"missing field '{name}'")
    return d[name]


def text(value: Any, name: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise RecordError(f"field '{name}' must be a string, got {type_name(value)}")
    if not allow_empty and not value.strip():
        raise RecordError(f"field '{name}' is empty")
    return value


def message(m: Any, name: str) -> dict:
    if not isinstance(m, dict):
        raise RecordError(f"field '{name}' must be a message object with 'role' and 'content', "
                          f"got {type_name(m)}")
    for key in ("role", "content"):
        if key not in m:
            raise RecordError(f"field '{name}': message has no '{key}'")
    if m["role"] not in ROLES:
        raise RecordError(f"field '{name}': role {short(m['role'])} is not one of {', '.join(ROLES)}")
    if not isinstance(m["content"], str):
        raise RecordError(f"field '{name}': 'content' must be a string, got {type_name(m['content'])}")
    return m


def messages(value: Any, name: str) -> list[dict]:
    if not isinstance(value, list):
        raise RecordError(f"field '{name}' must be a list of messages, got {type_name(value)}")
    if not value:
        raise RecordError(f"field '{name}' is empty")
    for i, m in enumerate(value):
        message(m, f"{name}[{i}]")
    return value


def prompt(value: Any, name: str = "prompt", *, allow_empty: bool = True) -> Text:
    """A prompt: raw text (may be empty where `allow_empty`) or a non-empty list of messages."""
    if isinstance(value, str):
        return text(value, name, allow_empty=allow_empty)
    if isinstance(value, list):
        return messages(value, name)
    raise RecordError(f"field '{name}' must be a string or a list of messages, got {type_name(value)}")


def response(value: Any, name: str, prompt_value: Text, *, allow_empty: bool = False) -> Text:
    """A response to `prompt_value`. After a text prompt it is text. After a conversational prompt it is
    either the assistant's text or a list of messages ending with an assistant message.

    `allow_empty`: an empty reply is a valid response where it is judged (comparisons, rankings, ratings):
    people do prefer silence to some answers, and it trains as EOS only. A demonstration must show something."""
    if isinstance(value, str):
        return text(value, name, allow_empty=allow_empty)
    if not isinstance(value, list):
        raise RecordError(f"field '{name}' must be a string or a list of messages, got {type_name(value)}")
    if isinstance(prompt_value, str):
        raise RecordError(f"field '{name}' must be a string when 'prompt' is a string, got list")
    messages(value, name)
    last = value[-1]
    if last["role"] != "assistant":
        raise RecordError(f"field '{name}' must end with an assistant message, got role '{last['role']}'")
    if not allow_empty and not last["content"].strip():
        raise RecordError(f"field '{name}' is empty")
    return value


def number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordError(f"field '{name}' must be a number, got {type_name(value)}")
    try:
        f = float(value)
    except OverflowError:
        f = math.inf
    if not math.isfinite(f):
        raise RecordError(f"field '{name}' must be a finite number, got {short(value, 30)}")
    return f


def is_permutation(x: Any, k: int) -> bool:
    """Whether `x` is a list holding each of the integers 0..k-1 once."""
    ints = isinstance(x, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in x)
    return ints and sorted(x) == list(range(k))


def optional_number(d: dict, name: str) -> float | None:
    return None if d.get(name) is None else number(d[name], name)


def optional_text(d: dict, name: str) -> str | None:
    return None if d.get(name) is None else text(d[name], name)


def optional_id(d: dict) -> str | int | None:
    v = d.get("id")
    if v is None or isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)):
        return v
    raise RecordError(f"field 'id' must be a string or an integer, got {type_name(v)}")


def optional_meta(d: dict) -> dict | None:
    v = d.get("meta")
    if v is None or isinstance(v, dict):
        return v
    raise RecordError(f"field 'meta' must be an object, got {type_name(v)}")


def only_one(d: dict, a: str, b: str) -> None:
    if a in d and b in d:
        raise RecordError(f"record has both '{a}' and '{b}'; give one form")
