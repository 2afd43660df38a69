"""Readers of public human-feedback data: small files written here for every format, and the real files (HH-RLHF,
VADER) when a data directory holds them: $PREFLOOP_SHARED_DATA, by default a `shared/data` folder beside
the repository (skipped with a message otherwise)."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from prefloop.data.real import (
    find_vader_files,
    read_hh_rlhf,
    read_shp,
    read_summarize_comparisons,
    read_vader_texts,
    split_hh_dialogue,
    vader_comparisons,
    vader_ratings,
)
from prefloop.data.records import Comparison, Rating
from prefloop.errors import DataError
from prefloop.feedback.agreement import krippendorff_alpha

SHARED = Path(os.environ.get("PREFLOOP_SHARED_DATA", Path(__file__).resolve().parents[2] / ".." / "shared" / "data"))


def shared_file(rel: str) -> Path:
    path = SHARED / rel
    if not path.exists():
        pytest.skip(f"{path} not found: the real-data checks read $PREFLOOP_SHARED_DATA "
                    "(default: shared/data beside the repository)")
    return path


def write_lines(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# --- HH-RLHF ---------------------------------------------------------------------------------------------------

H1 = "\n\nHuman: How do I bake bread?\n\nAssistant:"
H2 = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant:"


def test_hh_splits_at_the_last_assistant_turn_and_reports_mismatches(tmp_path):
    path = write_lines(tmp_path / "hh.jsonl", [
        {"chosen": H1 + " Mix flour and water.", "rejected": H1 + " No."},
        {"chosen": H2 + " Why did the chicken cross the road?", "rejected": H2 + " I can't."},
        {"chosen": H1 + " Knead it.\n\nHuman: and?\n\nAssistant: Bake it.", "rejected": H1 + " Buy some."},
        "",
        {"chosen": H1 + " ", "rejected": H1 + " No."},
    ])
    result = read_hh_rlhf(path)
    assert [c.prompt for c in result.records] == [H1, H2]
    assert result.records[0].chosen == " Mix flour and water." and result.records[0].rejected == " No."
    assert result.records[1].chosen == " Why did the chicken cross the road?"
    assert result.skipped == [f"{path}:3: the dialogues differ before the last assistant turn (2 vs 1 assistant turns)",
                              f"{path}:5: the final reply of 'chosen' is empty"]


@pytest.mark.parametrize("row,problem", [
    ({"chosen": H1 + " a"}, "missing field 'rejected'"),
    ({"chosen": H1 + " a", "rejected": 3}, "field 'rejected' must be a string, got int"),
    ({"chosen": "\n\nHuman: hi", "rejected": H1 + " a"}, "field 'chosen' has no 'Assistant:' turn"),
])
def test_hh_malformed_rows_name_the_line(tmp_path, row, problem):
    path = write_lines(tmp_path / "hh.jsonl", [{"chosen": H1 + " a", "rejected": H1 + " b"}, row])
    with pytest.raises(DataError, match=f"^{path}:2: {problem}"):
        read_hh_rlhf(path)


def test_split_hh_dialogue():
    assert split_hh_dialogue(H2 + " Sure.") == (H2, " Sure.")
    assert split_hh_dialogue("\n\nHuman: hi") is None


def test_real_hh_harmless_round_trips_every_kept_line():
    path = shared_file("hh-rlhf/harmless-base-test.jsonl.gz")
    result = read_hh_rlhf(path)
    with gzip.open(path, "rt", encoding="utf-8") as f:
        raw = [json.loads(line) for line in f]
    assert len(result.records) + len(result.skipped) == len(raw)
    assert len(result.records) >= 2300  # the README: 2,307 of 2,312 lines share the prompt
    for c in result.records:
        line = raw[c.id - 1]
        assert c.prompt + c.chosen == line["chosen"] and c.prompt + c.rejected == line["rejected"]
        assert c.prompt.endswith("\n\nAssistant:")
    assert all(s.startswith(f"{path}:") for s in result.skipped)


def test_hh_as_messages_splits_the_turns():
    from prefloop.data.real import hh_messages

    prompt = "\n\nHuman: hi there \n\nAssistant: Hello! How can I help?\n\nHuman: a joke\n\nAssistant:"
    assert hh_messages(prompt) == [{"role": "user", "content": "hi there"},
                                   {"role": "assistant", "content": "Hello! How can I help?"},
                                   {"role": "user", "content": "a joke"}]
    assert hh_messages("\n\nHuman: a\n\nAssistant: b\n\nAssistant: c\n\nHuman: d\n\nAssistant:") == \
        "turns 2 and 3 are both Assistant"
    assert hh_messages("\n\nHuman:  \n\nAssistant:") == "turn 1 (Human) is empty"
    assert hh_messages("preface\n\nHuman: a\n\nAssistant:") == "text before the first 'Human:' turn"


def test_hh_as_messages_records_and_skips(tmp_path):
    rows = [{"chosen": H2 + " Sure.", "rejected": H2 + " No."},
            {"chosen": "\n\nHuman: a\n\nAssistant: b\n\nAssistant: c\n\nHuman: d\n\nAssistant: Yes.",
             "rejected": "\n\nHuman: a\n\nAssistant: b\n\nAssistant: c\n\nHuman: d\n\nAssistant: No."}]
    path = tmp_path / "hh.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = read_hh_rlhf(path, as_messages=True)
    (c,) = result.records
    assert isinstance(c.prompt, list) and c.prompt[-1]["role"] == "user"
    assert c.chosen == [{"role": "assistant", "content": "Sure."}]
    assert c.rejected == [{"role": "assistant", "content": "No."}]
    assert result.skipped == [f"{path}:2: turns 2 and 3 are both Assistant"]


def test_real_hh_harmless_as_messages_alternates_turns():
    path = shared_file("hh-rlhf/harmless-base-test.jsonl.gz")
    text, msgs = read_hh_rlhf(path), read_hh_rlhf(path, as_messages=True)
    assert len(msgs.records) >= 2290 and len(msgs.records) + len(msgs.skipped) == len(text.records) + len(text.skipped)
    by_id = {c.id: c for c in text.records}
    for c in msgs.records:
        roles = [m["role"] for m in c.prompt]
        assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"]
        # nothing lost but the turn markers and the white space around each turn (a few turns hold a marker
        # that is not at a turn boundary: it stays in the text)
        assert _bare("".join(m["content"] for m in c.prompt)) == _bare(by_id[c.id].prompt)


def _bare(text: str) -> str:
    return "".join(text.replace("Human:", "").replace("Assistant:", "").split())


# --- summarize-from-feedback ------------------------------------------------------------------------------------

def _summarize_row(choice=1, **info):
    info = info or {"post": "My cat ignores me.", "title": "Cat help", "subreddit": "cats"}
    return {"info": {"id": "t3_x", **info}, "summaries": [{"text": " cat is aloof", "policy": "sup1"},
                                                          {"text": "cat ignores owner", "policy": "ppo"}],
            "choice": choice, "worker": "w7", "batch": "b1", "split": "train", "extra": {"confidence": 8}}


def test_summarize_rows(tmp_path):
    path = write_lines(tmp_path / "cmp.jsonl", [_summarize_row(1), _summarize_row(0, article="Markets fell.")])
    c1, c2 = read_summarize_comparisons(path)
    assert c1.prompt == "SUBREDDIT: r/cats\nTITLE: Cat help\nPOST: My cat ignores me.\nTL;DR:"
    assert (c1.chosen, c1.rejected) == (" cat ignores owner", " cat is aloof")  # a leading space is added
    assert c1.annotator == "w7" and c1.meta == {"split": "train", "batch": "b1", "policies": ["sup1", "ppo"],
                                                "confidence": 8}
    assert c2.prompt == "ARTICLE: Markets fell.\nTL;DR:" and c2.chosen == " cat is aloof"


@pytest.mark.parametrize("change,problem", [
    ({"choice": 2}, "field 'choice' must be 0 or 1, got 2"),
    ({"summaries": [{"text": "a"}]}, "field 'summaries' must be a list of 2 summaries"),
    ({"info": {"title": "t"}}, "field 'info' has neither a 'post' nor an 'article' text"),
    ({"summaries": [{"text": "a"}, {"txt": "b"}]}, "summaries\\[1\\] must be an object with a string 'text'"),
])
def test_summarize_malformed_rows(tmp_path, change, problem):
    path = write_lines(tmp_path / "cmp.jsonl", [_summarize_row(), {**_summarize_row(), **change}])
    with pytest.raises(DataError, match=f"^{path}:2: {problem}"):
        read_summarize_comparisons(path)


# --- SHP -------------------------------------------------------------------------------------------------------

def _shp_row(labels=1, score_a=30, score_b=10, **kw):
    return {"post_id": "p1", "domain": "askscience_train", "history": "Why is the sky blue?",
            "human_ref_A": "Rayleigh scattering.", "human_ref_B": "Because.", "labels": labels,
            "score_A": score_a, "score_B": score_b, **kw}


def test_shp_rows_and_score_ratio_filter(tmp_path):
    path = write_lines(tmp_path / "shp.jsonl", [_shp_row(1), _shp_row(0, 10, 30), _shp_row(1, 15, 10)])
    rows = read_shp(path)
    assert [r.chosen for r in rows] == [" Rayleigh scattering.", " Because.", " Rayleigh scattering."]
    assert rows[0].prompt == "POST: Why is the sky blue?\n\nCOMMENT:" and rows[0].pool == "askscience_train"
    assert rows[0].meta == {"score_ratio": 3.0}
    assert len(read_shp(path, min_score_ratio=2.0)) == 2  # the 15/10 pair is dropped


def test_shp_malformed_label(tmp_path):
    path = write_lines(tmp_path / "shp.jsonl", [_shp_row(), _shp_row(labels="A")])
    with pytest.raises(DataError, match=f"^{path}:2: field 'labels' must be 1 \\(A preferred\\) or 0"):
        read_shp(path)


# --- VADER ------------------------------------------------------------------------------------------------------

def write_vader(tmp_path: Path, ratings: list[tuple[str, list[int]]], texts: dict[str, str] | None = None,
                domain: str = "mini") -> Path:
    texts = texts if texts is not None else {rid: f"text {rid}" for rid, _ in ratings}
    rows = [f"{rid}\t{sum(r) / len(r)}\t0.5\t{json.dumps(r)}" for rid, r in ratings]
    path = tmp_path / f"{domain}_anonDataRatings.txt.gz"
    path.write_bytes(gzip.compress(("\ufeff" + "\n".join(rows) + "\n").encode()))
    gt = [f"{rid}\t0.0\t{t}" for rid, t in texts.items()]
    (tmp_path / f"{domain}_GroundTruth.txt.gz").write_bytes(gzip.compress("\n".join(gt).encode()))
    return path


MINI = [("1", [3, 4, 2]), ("2", [-2, -3, -1, -2]), ("3", [0, 1, 0]), ("4", [1, 1, 2]), ("5", [-4, -4, -3])]


def test_vader_texts_ratings_and_pairs(tmp_path):
    path = write_vader(tmp_path, MINI)
    texts = read_vader_texts(path)
    assert [t.id for t in texts] == ["1", "2", "3", "4", "5"] and texts[0].domain == "mini"
    assert texts[1].mean == pytest.approx(-2.0)
    ratings = vader_ratings(texts)
    assert len(ratings) == sum(len(r) for _, r in MINI)
    assert ratings[0] == Rating("", "text 1", 3.0, (-4.0, 4.0), pool="mini", id="mini/1", meta={"rater_index": 0})
    assert Rating.from_json(ratings[0].to_json()) == ratings[0]
    assert [r.rating for r in vader_ratings(texts, mean=True)][:2] == [3.0, -2.0]

    pairs = vader_comparisons(texts, max_pairs=10, seed=3)
    assert len(pairs) == 10  # all C(5, 2) pairs: no two texts have the same mean
    mean_of = {t.text: t.mean for t in texts}
    for p in pairs:
        assert mean_of[p.chosen] > mean_of[p.rejected]
        assert p.margin == pytest.approx(mean_of[p.chosen] - mean_of[p.rejected])
        assert Comparison.from_json(p.to_json()) == p
    assert len({(p.chosen, p.rejected) for p in pairs}) == 10


def test_vader_pairs_margin_and_seed(tmp_path):
    texts = read_vader_texts(write_vader(tmp_path, MINI))
    wide = vader_comparisons(texts, margin=2.5, max_pairs=10, seed=0)
    assert wide and all(p.margin > 2.5 for p in wide)
    assert len(wide) < 10
    assert vader_comparisons(texts, max_pairs=4, seed=1) == vader_comparisons(texts, max_pairs=4, seed=1)
    orders = {tuple(p.id for p in vader_comparisons(texts, max_pairs=4, seed=s)) for s in range(5)}
    assert len(orders) > 1  # the seed changes the draw


def test_vader_ties_never_become_pairs(tmp_path):
    texts = read_vader_texts(write_vader(tmp_path, [("a", [1, 2]), ("b", [2, 1]), ("c", [0, 3])]))
    assert vader_comparisons(texts, max_pairs=5) == []


@pytest.mark.parametrize("line,problem", [
    ("9\t1.0\t0.5\t[1, 1]\textra", "expected 4 tab-separated fields"),
    ("9\t1.0\t0.5\t[1, x]", "the ratings must be a list like"),
    ("9\t5.0\t0.5\t[5, 5]", "rating 5 is outside the scale \\[-4, 4\\]"),
    ("9\t2.0\t0.5\t[1, 1]", "the mean column 2.0 is not the mean of the ratings \\(1.0000\\)"),
    ("1\t3.0\t0.5\t[3, 3]", "id '1' repeats line 1"),
])
def test_vader_malformed_rating_rows_name_the_line(tmp_path, line, problem):
    path = write_vader(tmp_path, MINI[:2])
    rows = gzip.decompress(path.read_bytes()).decode().rstrip("\n").split("\n")
    path.write_bytes(gzip.compress(("\n".join([*rows, line]) + "\n").encode()))
    with pytest.raises(DataError, match=f"^{path}:3: {problem}"):
        read_vader_texts(path)


def test_vader_ids_must_match_across_the_two_files(tmp_path):
    path = write_vader(tmp_path, MINI[:3], texts={"1": "a", "2": "b"})
    with pytest.raises(DataError, match=f"^{path}:3: id '3' has no text in mini_GroundTruth.txt.gz"):
        read_vader_texts(path)
    path = write_vader(tmp_path, MINI[:2], texts={"1": "a", "2": "b", "7": "c"})
    gt = tmp_path / "mini_GroundTruth.txt.gz"
    with pytest.raises(DataError, match=f"^{gt}:3: id '7' has no ratings in mini_anonDataRatings.txt.gz"):
        read_vader_texts(path)


def test_vader_missing_directory_entries(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no '\\*_anonDataRatings.txt.gz' files in the directory"):
        find_vader_files(tmp_path / "empty")
    with pytest.raises(DataError, match="file not found"):
        find_vader_files(tmp_path / "nope_anonDataRatings.txt.gz")


EXPECTED_VADER = {"amazonReviewSnippets": 3708, "movieReviewSnippets": 10605, "nytEditorialSnippets": 5190,
                  "tweets": 4200}


def test_real_vader_domains_read_whole_and_raters_agree_beyond_chance():
    directory = shared_file("vader-icwsm2014")
    files = find_vader_files(directory)
    assert [f.name.split("_")[0] for f in files] == sorted(EXPECTED_VADER)
    for f in files:
        texts = read_vader_texts(f)
        assert len(texts) == EXPECTED_VADER[texts[0].domain]
        assert min(len(t.ratings) for t in texts) >= 15
        # interval alpha over the raters: sentiment of short texts is far from chance agreement, not perfect
        alpha = krippendorff_alpha([list(t.ratings) for t in texts], "interval")
        assert 0.3 < alpha < 0.95, (texts[0].domain, alpha)
