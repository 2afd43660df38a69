"""Record forms: every accepted JSONL form reads to the right record and round-trips through write_jsonl."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from prefloop.data import (
    Comparison,
    Demonstration,
    Prompt,
    Ranking,
    Rating,
    read_comparisons,
    read_demonstrations,
    read_prompts,
    read_rankings,
    read_ratings,
    split_implicit_prompt,
    write_jsonl,
)
from prefloop.errors import DataError

Q = "User: What is 3 plus 4?\nAssistant:"
USER = [{"role": "user", "content": "What is 3 plus 4?"}]
SYS_USER = [{"role": "system", "content": "Be brief."}, *USER]


def assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def write_lines(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def roundtrip(tmp_path, reader, rows):
    """Read raw rows, write the records back, read again: both reads must agree."""
    src, dst = tmp_path / "src.jsonl", tmp_path / "dst.jsonl"
    write_lines(src, rows)
    first = reader(src)
    assert write_jsonl(dst, first) == len(rows)
    assert reader(dst) == first
    return first


def test_prompts_text_messages_and_bare_messages(tmp_path):
    recs = roundtrip(tmp_path, read_prompts, [
        {"prompt": Q, "id": 7, "meta": {"family": "arithmetic"}},
        {"prompt": SYS_USER},
        {"messages": USER, "id": "p3"},
    ])
    assert recs == [Prompt(Q, id=7, meta={"family": "arithmetic"}), Prompt(SYS_USER), Prompt(USER, id="p3")]


def test_demonstrations_all_three_forms(tmp_path):
    recs = roundtrip(tmp_path, read_demonstrations, [
        {"prompt": Q, "completion": " 7.", "annotator": "ann1"},
        {"prompt": USER, "completion": assistant("7.")},
        {"messages": [*SYS_USER, *assistant("7.")], "pool": "contractors"},
    ])
    assert recs[0] == Demonstration(Q, " 7.", annotator="ann1")
    assert recs[1] == Demonstration(USER, assistant("7."))
    # messages form: prompt = all but the final assistant message, completion = its content
    assert recs[2] == Demonstration(SYS_USER, "7.", pool="contractors")
    assert recs[2].to_json()["messages"][-1] == {"role": "assistant", "content": "7."}


def test_comparisons_standard_and_conversational(tmp_path):
    recs = roundtrip(tmp_path, read_comparisons, [
        {"prompt": Q, "chosen": " 7.", "rejected": " 8.", "margin": 2, "annotator": "a", "pool": "p",
         "id": "c1", "meta": {"k": [1, 2]}},
        {"prompt": USER, "chosen": assistant("7."), "rejected": assistant("8.")},
        {"prompt": Q, "chosen": " same", "rejected": " same"},  # a tie is allowed
    ])
    assert recs[0] == Comparison(Q, " 7.", " 8.", margin=2.0, annotator="a", pool="p", id="c1",
                                 meta={"k": [1, 2]})
    assert recs[1] == Comparison(USER, assistant("7."), assistant("8."))
    assert recs[2].chosen == recs[2].rejected


def test_comparisons_implicit_prompt_text_and_messages(tmp_path):
    recs = roundtrip(tmp_path, read_comparisons, [
        {"chosen": Q + " 7.", "rejected": Q + " 8."},
        {"chosen": [*USER, *assistant("7.")], "rejected": [*USER, *assistant("8.")]},
    ])
    assert recs[0] == Comparison(Q, " 7.", " 8.")
    assert recs[1] == Comparison(USER, assistant("7."), assistant("8."))


@pytest.mark.parametrize(("chosen", "rejected", "expected"), [
    (Q + " 7.", Q + " 8.", (Q, " 7.", " 8.")),
    # the common prefix "Hello th" is cut back to the whitespace boundary, never inside a word
    ("Hello there", "Hello thanks", ("Hello", " there", " thanks")),
    # a whitespace run goes whole to the responses
    ("Answer:\n\nyes", "Answer:\n\nno", ("Answer:", "\n\nyes", "\n\nno")),
    # one text a prefix of the other
    ("It is 7", "It is 7 or 8", ("It is", " 7", " 7 or 8")),
    # no shared whitespace boundary: the prompt is empty
    ("yes", "yet", ("", "yes", "yet")),
    ("same text", "same text", ("same", " text", " text")),
])
def test_split_implicit_prompt(chosen, rejected, expected):
    prompt, c, r = split_implicit_prompt(chosen, rejected)
    assert (prompt, c, r) == expected
    assert prompt + c == chosen and prompt + r == rejected


def test_rankings_and_ratings(tmp_path):
    rankings = roundtrip(tmp_path, read_rankings, [
        {"prompt": Q, "responses": [" 7.", " 8.", " 6."], "ranking": [0, 2, 1], "annotator": "a"},
        {"prompt": USER, "responses": ["7.", assistant("8.")], "ranking": [1, 0]},
    ])
    assert rankings[0] == Ranking(Q, [" 7.", " 8.", " 6."], [0, 2, 1], annotator="a")
    ratings = roundtrip(tmp_path, read_ratings, [
        {"prompt": Q, "response": " 7.", "rating": 7, "scale": [1, 7]},
        {"prompt": USER, "response": assistant("8."), "rating": 1.5, "scale": [1, 3], "id": 4},
    ])
    assert ratings[0] == Rating(Q, " 7.", 7.0, (1.0, 7.0))
    assert ratings[1].to_json()["scale"] == [1.0, 3.0]


def test_records_built_in_code_roundtrip(tmp_path):
    records = [Comparison(USER, "7.", assistant("8."), margin=0.5, meta={"src": "world"}),
               Comparison("", " a", " b")]
    write_jsonl(tmp_path / "c.jsonl.gz", records)
    assert read_comparisons(tmp_path / "c.jsonl.gz") == records
    assert Comparison.from_json(records[0].to_json()) == records[0]


def test_records_are_frozen():
    c = Comparison(Q, " 7.", " 8.")
    with pytest.raises(AttributeError):
        c.chosen = " 9."  # type: ignore[misc]
    assert replace(c, margin=1.0).margin == 1.0


def test_from_json_names_where():
    with pytest.raises(DataError, match=r"^request 3: missing field 'rejected'$"):
        Comparison.from_json({"prompt": Q, "chosen": " 7."}, where="request 3")


def test_unknown_fields_are_ignored_and_null_optionals_are_absent(tmp_path):
    write_lines(tmp_path / "c.jsonl", [{"prompt": Q, "chosen": " 7.", "rejected": " 8.", "source": "x",
                                        "margin": None, "annotator": None}])
    assert read_comparisons(tmp_path / "c.jsonl") == [Comparison(Q, " 7.", " 8.")]
