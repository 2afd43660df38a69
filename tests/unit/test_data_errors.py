"""Bad input: every problem is a one-line DataError naming the file, the line and the problem;
writers leave nothing half-written."""

from __future__ import annotations

import gzip
import hashlib
import json

import pytest

from prefloop.data import (
    file_sha256,
    iter_jsonl,
    read_comparisons,
    read_demonstrations,
    read_prompts,
    read_rankings,
    read_ratings,
    write_jsonl,
)
from prefloop.errors import DataError

GOOD = {"prompt": "User: hi\nAssistant:", "chosen": " hello", "rejected": " go away"}


def lines(*rows) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


MSG = [{"role": "user", "content": "hi"}]

# (reader, file bytes, line of the error or None for whole-file problems, text the message must contain)
CASES = {
    "malformed_json_line3": (read_comparisons, lines(GOOD, GOOD, b'{"prompt": "a", "chosen": '), 3,
                             "malformed JSON: Expecting value"),
    "missing_field_line2": (read_comparisons, lines(GOOD, {"prompt": "a", "chosen": " b"}), 2,
                            "missing field 'rejected'"),
    "wrong_type": (read_comparisons, lines({**GOOD, "chosen": 5}), 1,
                   "field 'chosen' must be a string or a list of messages, got int"),
    "text_prompt_list_response": (read_comparisons, lines({**GOOD, "chosen": [{"role": "assistant",
                                                                                "content": "x"}]}), 1,
                                  "field 'chosen' must be a string when 'prompt' is a string, got list"),
    "empty_text": (read_demonstrations, lines({"prompt": "q", "completion": " x"},
                                              {"prompt": "q", "completion": ""}), 2,
                   "field 'completion' is empty"),
    "empty_file": (read_prompts, b"", None, "empty file (no records)"),
    "blank_lines_only": (read_prompts, b"\n  \n\n", None, "empty file (no records)"),
    "invalid_utf8_line2": (read_prompts, lines({"prompt": "a"}, b'{"prompt": "caf\xe9"}'), 2,
                           "not valid UTF-8"),
    "bad_role": (read_prompts, lines({"prompt": [{"role": "bot", "content": "hi"}]}), 1,
                 "field 'prompt[0]': role \"bot\" is not one of system, user, assistant, tool"),
    "missing_role": (read_prompts, lines({"messages": [*MSG, {"content": "x"}]}), 1,
                     "field 'messages[1]': message has no 'role'"),
    "not_an_object": (read_prompts, lines({"prompt": "a"}, [1, 2]), 2, "expected a JSON object, got list"),
    "ranking_not_permutation": (read_rankings, lines({"prompt": "q", "responses": [" a", " b", " c"],
                                                      "ranking": [0, 0, 1]}), 1,
                                "field 'ranking' must be a permutation of 0..2"),
    "ranking_one_response": (read_rankings, lines({"prompt": "q", "responses": [" a"], "ranking": [0]}), 1,
                             "field 'responses' must hold at least 2 responses, got 1"),
    "rating_out_of_scale": (read_ratings, lines({"prompt": "q", "response": " a", "rating": 9,
                                                 "scale": [1, 7]}), 1,
                            "field 'rating' 9 is outside the scale [1, 7]"),
    "margin_not_finite": (read_comparisons, lines(GOOD, b'{"prompt": "q", "chosen": " a", "rejected": " b", '
                                                       b'"margin": NaN}'), 2,
                          "field 'margin' must be a finite number, got NaN"),
    "margin_not_number": (read_comparisons, lines({**GOOD, "margin": "big"}), 1,
                          "field 'margin' must be a number, got str"),
    "implicit_messages_differ": (read_comparisons, lines({
        "chosen": [*MSG, {"role": "assistant", "content": "a"}],
        "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}]}), 1,
        "fields 'chosen' and 'rejected' must share all messages but the last"),
    "messages_not_ending_with_assistant": (read_demonstrations, lines({"messages": MSG}), 1,
                                           "field 'messages' must end with an assistant message, got role"),
    "blank_lines_counted": (read_prompts, lines(b"", {"prompt": "a"}, b"   ", {"prompt": 3}), 4,
                            "field 'prompt' must be a string or a list of messages, got int"),
    "stops_at_first_bad_record": (read_prompts, lines({"prompt": "a"}, {"x": 1}, {"y": 2}), 2,
                                  "missing field 'prompt'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_names_file_line_and_problem(tmp_path, case):
    reader, data, line, problem = CASES[case]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(data)
    with pytest.raises(DataError) as info:
        reader(path)
    msg = str(info.value)
    where = f"{path}:{line}: " if line is not None else f"{path}: "
    assert msg.startswith(where), msg
    assert problem in msg, msg
    assert "\n" not in msg
    assert isinstance(info.value, ValueError)
    assert info.value.line == line and info.value.path == str(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nothing\.jsonl: file not found$"):
        read_prompts(tmp_path / "nothing.jsonl")


def test_gzip_input_reports_lines(tmp_path):
    path = tmp_path / "p.jsonl.gz"
    path.write_bytes(gzip.compress(lines({"prompt": "a"}, b"{oops")))
    with pytest.raises(DataError, match=r"p\.jsonl\.gz:2: malformed JSON"):
        read_prompts(path)


def test_utf8_bom_and_crlf_are_accepted(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "caf\xc3\xa9"}\r\n{"prompt": "b"}\r\n')
    assert [r.prompt for r in read_prompts(path)] == ["café", "b"]
    assert [n for n, _ in iter_jsonl(path)] == [1, 2]


def _failing(n_good: int):
    for i in range(n_good):
        yield {"prompt": f"new {i}"}
    raise RuntimeError("annotator crashed")


@pytest.mark.parametrize("name", ["out.jsonl", "out.jsonl.gz"])
def test_write_jsonl_is_atomic(tmp_path, name):
    path = tmp_path / "sub" / name
    write_jsonl(path, [{"prompt": "old"}])
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="annotator crashed"):
        write_jsonl(path, _failing(3))
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [name]
    # a value JSON cannot hold fails the same way
    with pytest.raises(ValueError):
        write_jsonl(path, [{"prompt": "x", "meta": {"score": float("nan")}}])
    assert path.read_bytes() == before


def test_write_jsonl_leaves_no_file_when_new(tmp_path):
    path = tmp_path / "new.jsonl"
    with pytest.raises(RuntimeError):
        write_jsonl(path, _failing(2))
    assert list(tmp_path.iterdir()) == []


def test_gzip_output_is_reproducible_and_hash_streams(tmp_path):
    a, b = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"
    rows = [{"prompt": f"q{i}", "meta": {"i": i}} for i in range(50)]
    write_jsonl(a, rows)
    write_jsonl(b, rows)
    assert a.read_bytes() == b.read_bytes()
    assert file_sha256(a, chunk_size=7) == hashlib.sha256(a.read_bytes()).hexdigest()
    with pytest.raises(DataError, match="file not found"):
        file_sha256(tmp_path / "none")


def test_an_integer_too_long_to_convert_is_malformed_json_not_a_crash(tmp_path):
    p = tmp_path / "big.jsonl"
    p.write_bytes(lines(GOOD, b'{"prompt": ' + b"1" * 5000 + b', "chosen": "a", "rejected": "b"}'))
    with pytest.raises(DataError) as e:
        read_comparisons(p)
    assert str(e.value).startswith(f"{p}:2: malformed JSON") and "\n" not in str(e.value)


# -- text no tokenizer can take, repeated keys, self-comparisons, empty judged responses -----------------------


@pytest.mark.parametrize("raw,problem", [
    (b'{"prompt": "a\\ud800b"}', "field 'prompt' holds a lone surrogate"),
    (b'{"prompt": [{"role": "user", "content": "x\\udc00"}]}', "field 'prompt[0].content' holds a lone surrogate"),
    (b'{"prompt": "a", "meta": {"\\udfff": 1}}', "holds a lone surrogate"),
    (b'{"prompt": "a", "prompt": "b"}', "key \"prompt\" appears twice in one object"),
    (b'{"prompt": "a", "meta": {"k": 1, "k": 2}}', "key \"k\" appears twice"),
])
def test_text_and_key_problems_name_the_line(tmp_path, raw, problem):
    path = tmp_path / "p.jsonl"
    path.write_bytes(lines({"prompt": "fine"}) + raw + b"\n")
    with pytest.raises(DataError) as e:
        read_prompts(path)
    assert e.value.line == 2 and problem in str(e.value), str(e.value)


def test_jsonl_checks_work_on_single_lines_without_torch():
    from prefloop.data.jsonl import parse_line, text_problem
    from prefloop.errors import RecordError

    assert parse_line('{"a": "\\u00e9"}') == {"a": "é"}
    assert text_problem({"a": ["ok", "bad\x00"]}) == "field 'a[1]' holds a NUL character"
    with pytest.raises(RecordError, match="appears twice"):
        parse_line('{"a": 1, "a": 1}')


def test_identical_responses_need_a_recorded_tie(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(lines(GOOD, {**GOOD, "rejected": GOOD["chosen"]}))
    with pytest.raises(DataError, match=r"c.jsonl:2: fields 'chosen' and 'rejected' are identical"):
        read_comparisons(path, allow_identical=False)
    assert len(read_comparisons(path)) == 2  # a judge's tie between two policies that wrote the same text
    path.write_bytes(lines(GOOD, {**GOOD, "rejected": GOOD["chosen"], "meta": {"tie": True}}))
    assert len(read_comparisons(path, allow_identical=False)) == 2


def test_empty_replies_are_valid_judged_responses(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_bytes(lines({**GOOD, "chosen": " "}, {**GOOD, "chosen": ""},
                           {"prompt": MSG, "chosen": [{"role": "assistant", "content": ""}],
                            "rejected": [{"role": "assistant", "content": "no"}]}))
    assert [c.chosen for c in read_comparisons(path)][:2] == [" ", ""]
    path.write_bytes(lines({"prompt": "q", "responses": ["", " a"], "ranking": [1, 0]}))
    assert read_rankings(path)[0].responses == ["", " a"]
    path.write_bytes(lines({"prompt": "q", "response": "", "rating": 1, "scale": [1, 7]}))
    assert read_ratings(path)[0].response == ""


def test_skipping_invalid_records_reports_them(tmp_path, capsys):
    from prefloop.data.jsonl import skipping_invalid

    path = tmp_path / "p.jsonl"
    path.write_bytes(lines({"prompt": "a"}, b"{bad", {"prompt": 3}, {"prompt": "b"}))
    with skipping_invalid():
        assert [p.prompt for p in read_prompts(path)] == ["a", "b"]
    assert "skipped 2 invalid record(s) (lines 2, 3)" in capsys.readouterr().err
    path.write_bytes(lines({"prompt": 3}))
    with skipping_invalid(), pytest.raises(DataError, match="no valid records"):
        read_prompts(path)
    with pytest.raises(DataError, match=":1: field 'prompt'"):  # outside the block: stop at the first
        read_prompts(path)


def test_record_readers_refuse_nul_and_skip_it_when_asked(tmp_path, capsys):
    from prefloop.data.jsonl import skipping_invalid

    path = tmp_path / "c.jsonl"
    path.write_bytes(lines(GOOD, {**GOOD, "rejected": " go\x00 away"}, {**GOOD, "prompt": "b"}))
    with pytest.raises(DataError, match=r"c.jsonl:2: field 'rejected' holds a NUL character"):
        read_comparisons(path)
    with skipping_invalid():
        assert [c.prompt for c in read_comparisons(path)] == [GOOD["prompt"], "b"]
    assert "skipped 1 invalid record(s) (lines 2); line 2: field 'rejected' holds a NUL" in capsys.readouterr().err
    # the generic reader lets a NUL pass unless told otherwise (the pretraining corpus is told)
    assert len(list(iter_jsonl(path))) == 3
    with pytest.raises(DataError, match=r"c.jsonl:2: .*NUL"):
        list(iter_jsonl(path, nul=False))
