"""Record types of the feedback loop: prompts, demonstrations, comparisons, rankings and ratings.

A prompt is raw text (`"User: ...\\nAssistant:"`) or a list of chat messages `{"role", "content"}`.
After a text prompt, responses are text; after a conversational prompt, a response is either the
assistant's text or a list of messages ending with the assistant's message (TRL's conversational form).
A demonstration's completion must not be empty; a judged response (comparison, ranking, rating) may be,
since people sometimes prefer no answer (it trains as EOS only). A text prompt may be `""` in
demonstrations and feedback records (an implicit-prompt split gives `""` when the two texts share no
whitespace boundary), but not in a prompts file, where sampling needs something to continue.

Every record has `to_json()` (a dict in the standard form, optional fields left out when None) and
`from_json(d)` (validation; raises `DataError`), and `from_json(r.to_json()) == r`. Records are frozen:
use `dataclasses.replace` for a changed copy. Unknown fields in the JSON are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefloop.errors import DataError, RecordError

from . import _fields as F

Text = str | list[dict]  # raw text, or a list of chat messages


def _optional_json(record: Any, out: dict, names: tuple[str, ...]) -> dict:
    for n in names:
        v = getattr(record, n)
        if v is not None:
            out[n] = list(v) if n == "scale" else v
    return out


def _from_json(cls, d: Any, where: str):
    if not isinstance(d, dict):
        raise DataError(f"{where}: expected a JSON object, got {F.type_name(d)}")
    try:
        return cls.parse(d)
    except RecordError as e:
        raise DataError(f"{where}: {e}") from None


class _Record:
    @classmethod
    def from_json(cls, d: dict, where: str = "<record>"):
        """Validate a JSON object and build the record; `where` names it in the `DataError`."""
        return _from_json(cls, d, where)


@dataclass(frozen=True)
class Prompt(_Record):
    """A prompt to sample from: `{"prompt": text | messages}` or `{"messages": [...]}`."""

    prompt: Text
    id: str | int | None = None
    meta: dict | None = None

    def to_json(self) -> dict:
        return _optional_json(self, {"prompt": self.prompt}, ("id", "meta"))

    @classmethod
    def parse(cls, d: dict) -> Prompt:
        F.only_one(d, "prompt", "messages")
        if "messages" in d:
            p = F.messages(d["messages"], "messages")
        else:
            p = F.prompt(_prompt_field(d), allow_empty=False)
        return cls(p, id=F.optional_id(d), meta=F.optional_meta(d))


@dataclass(frozen=True)
class Demonstration(_Record):
    """A demonstration of the wanted behaviour, for SFT.

    Forms: `{"prompt": str, "completion": str}`; `{"prompt": [messages], "completion": [assistant message]}`;
    `{"messages": [..., assistant message]}`, split into `prompt` = all messages but the last and
    `completion` = the last message's content (a string).
    """

    prompt: Text
    completion: Text
    annotator: str | None = None
    pool: str | None = None
    id: str | int | None = None
    meta: dict | None = None

    def to_json(self) -> dict:
        if isinstance(self.prompt, list) and isinstance(self.completion, str):
            out = {"messages": [*self.prompt, {"role": "assistant", "content": self.completion}]}
        else:
            out = {"prompt": self.prompt, "completion": self.completion}
        return _optional_json(self, out, ("annotator", "pool", "id", "meta"))

    @classmethod
    def parse(cls, d: dict) -> Demonstration:
        F.only_one(d, "prompt", "messages")
        if "messages" in d:
            msgs = F.messages(d["messages"], "messages")
            last = msgs[-1]
            if last["role"] != "assistant":
                raise RecordError("field 'messages' must end with an assistant message, "
                                  f"got role '{last['role']}'")
            if len(msgs) < 2:
                raise RecordError("field 'messages' needs at least one message before the final "
                                  "assistant message")
            prompt, completion = msgs[:-1], F.text(last["content"], f"messages[{len(msgs) - 1}].content")
        else:
            prompt = F.prompt(_prompt_field(d))
            completion = F.response(F.required(d, "completion"), "completion", prompt)
        return cls(prompt, completion, **_common(d))


@dataclass(frozen=True)
class Comparison(_Record):
    """A preference between two responses to one prompt (`chosen` preferred over `rejected`).

    `margin` is how strongly `chosen` is preferred (e.g. Llama 2's margin loss). `chosen == rejected` is a
    valid record (a judge's tie between two policies that wrote the same text), but training data refuses it
    (`check_distinct`; `read_comparisons(..., allow_identical=False)`) unless `meta.tie` marks a recorded tie.
    """

    prompt: Text
    chosen: Text
    rejected: Text
    margin: float | None = None
    annotator: str | None = None
    pool: str | None = None
    id: str | int | None = None
    meta: dict | None = None

    def to_json(self) -> dict:
        out = {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}
        return _optional_json(self, out, ("margin", "annotator", "pool", "id", "meta"))

    @classmethod
    def parse(cls, d: dict) -> Comparison:
        if "prompt" in d:
            prompt = F.prompt(d["prompt"])
            chosen = F.response(F.required(d, "chosen"), "chosen", prompt, allow_empty=True)
            rejected = F.response(F.required(d, "rejected"), "rejected", prompt, allow_empty=True)
        else:
            prompt, chosen, rejected = _implicit(F.required(d, "chosen"), F.required(d, "rejected"))
        return cls(prompt, chosen, rejected, margin=F.optional_number(d, "margin"), **_common(d))

    def check_distinct(self) -> Comparison:
        """Raise `RecordError` for a response compared with itself (usually a mistake upstream, e.g. a repeated
        key where the last value won; it teaches nothing) unless `meta.tie` marks a recorded tie."""
        if self.chosen == self.rejected and not (self.meta or {}).get("tie"):
            raise RecordError("fields 'chosen' and 'rejected' are identical (mark a recorded tie with "
                              "\"meta\": {\"tie\": true})")
        return self


@dataclass(frozen=True)
class Ranking(_Record):
    """K >= 2 responses to one prompt, ranked: `ranking` lists response indices from best to worst
    (InstructGPT's K-way rankings). Ties are not representable."""

    prompt: Text
    responses: list
    ranking: list[int]
    annotator: str | None = None
    pool: str | None = None
    id: str | int | None = None
    meta: dict | None = None

    def to_json(self) -> dict:
        out = {"prompt": self.prompt, "responses": self.responses, "ranking": self.ranking}
        return _optional_json(self, out, ("annotator", "pool", "id", "meta"))

    @classmethod
    def parse(cls, d: dict) -> Ranking:
        prompt = F.prompt(F.required(d, "prompt"))
        responses = F.required(d, "responses")
        if not isinstance(responses, list):
            raise RecordError(f"field 'responses' must be a list of responses, got {F.type_name(responses)}")
        if len(responses) < 2:
            raise RecordError(f"field 'responses' must hold at least 2 responses, got {len(responses)}")
        responses = [F.response(r, f"responses[{i}]", prompt, allow_empty=True) for i, r in enumerate(responses)]
        ranking = F.required(d, "ranking")
        k = len(responses)
        if not F.is_permutation(ranking, k):
            raise RecordError(f"field 'ranking' must be a permutation of 0..{k - 1} (response indices, "
                              f"best first), got {F.short(ranking)}")
        return cls(prompt, responses, ranking, **_common(d))


@dataclass(frozen=True)
class Rating(_Record):
    """An absolute rating of one response on a scale `(lo, hi)`, e.g. 1-7 (higher is better)."""

    prompt: Text
    response: Text
    rating: float
    scale: tuple[float, float]
    annotator: str | None = None
    pool: str | None = None
    id: str | int | None = None
    meta: dict | None = None

    def to_json(self) -> dict:
        out = {"prompt": self.prompt, "response": self.response, "rating": self.rating,
               "scale": list(self.scale)}
        return _optional_json(self, out, ("annotator", "pool", "id", "meta"))

    @classmethod
    def parse(cls, d: dict) -> Rating:
        prompt = F.prompt(F.required(d, "prompt"))
        response = F.response(F.required(d, "response"), "response", prompt, allow_empty=True)
        rating = F.number(F.required(d, "rating"), "rating")
        scale = F.required(d, "scale")
        if not isinstance(scale, list) or len(scale) != 2:
            raise RecordError(f"field 'scale' must be a list [lo, hi], got {F.short(scale)}")
        lo, hi = F.number(scale[0], "scale[0]"), F.number(scale[1], "scale[1]")
        if not lo < hi:
            raise RecordError(f"field 'scale' must have lo < hi, got {F.short(scale)}")
        if not lo <= rating <= hi:
            raise RecordError(f"field 'rating' {F.short(d['rating'])} is outside the scale "
                              f"[{F.short(scale[0])}, {F.short(scale[1])}]")
        return cls(prompt, response, rating, (lo, hi), **_common(d))


def _prompt_field(d: dict) -> Any:
    if "prompt" not in d:
        raise RecordError("missing field 'prompt' (or give the whole conversation as 'messages')")
    return d["prompt"]


def _common(d: dict) -> dict:
    return {"annotator": F.optional_text(d, "annotator"), "pool": F.optional_text(d, "pool"),
            "id": F.optional_id(d), "meta": F.optional_meta(d)}


def split_implicit_prompt(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split two whole texts into (prompt, chosen, rejected) at their shared prefix.

    The prompt is the longest common prefix cut back to a whitespace boundary: it ends just before the
    last run of whitespace that both texts share, so each response keeps its leading whitespace
    (`"...Assistant: 7."` and `"...Assistant: 8."` give the prompt `"...Assistant:"` and responses
    `" 7."`, `" 8."`, the text convention of DESIGN.md). A cut inside a word would make tokens no model
    ever saw. Without a shared whitespace boundary the prompt is `""` and the responses are the whole texts.
    """
    n = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        n += 1
    # the last k <= n with whitespace at k in both texts (for k < n the texts agree there)
    def both_space(k: int) -> bool:
        return k < len(chosen) and k < len(rejected) and chosen[k].isspace() and rejected[k].isspace()

    k = n
    while k > 0 and not both_space(k):
        k -= 1
    while k > 0 and chosen[k - 1].isspace():  # back to the start of the whitespace run
        k -= 1
    return chosen[:k], chosen[k:], rejected[k:]


def _implicit(chosen: Any, rejected: Any) -> tuple[Text, Text, Text]:
    """TRL's implicit-prompt form: `chosen` and `rejected` hold the whole texts or whole conversations."""
    if isinstance(chosen, str) and isinstance(rejected, str):
        F.text(chosen, "chosen")
        F.text(rejected, "rejected")
        return split_implicit_prompt(chosen, rejected)
    if isinstance(chosen, list) and isinstance(rejected, list):
        for name, conv in (("chosen", chosen), ("rejected", rejected)):
            F.messages(conv, name)
            if len(conv) < 2:
                raise RecordError(f"field '{name}' needs at least one prompt message before the final "
                                  f"assistant message (implicit prompt: there is no 'prompt' field)")
            F.response(conv[-1:], name, conv[:-1], allow_empty=True)
        if chosen[:-1] != rejected[:-1]:
            raise RecordError("fields 'chosen' and 'rejected' must share all messages but the last "
                              "(implicit prompt: there is no 'prompt' field)")
        return chosen[:-1], chosen[-1:], rejected[-1:]
    for name, v in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(v, str | list):
            raise RecordError(f"field '{name}' must be a string or a list of messages, got {F.type_name(v)}")
    raise RecordError(f"fields 'chosen' and 'rejected' must both be strings or both lists of messages, "
                      f"got {F.type_name(chosen)} and {F.type_name(rejected)}")
