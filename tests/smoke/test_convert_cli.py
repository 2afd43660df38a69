"""`prefloop convert`: public data formats to JSONL through the CLI, errors as one line, and the reward
trainer reading the output with no glue."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from prefloop import cli
from prefloop.data.jsonl import read_comparisons, read_ratings
from prefloop.recipes.reward import RewardConfig, run_reward

H = "\n\nHuman: Is {w} a word?\n\nAssistant:"
WORDS = ["apple", "table", "river", "cloud", "stone", "light", "green", "music"]


@pytest.fixture(autouse=True)
def convert_command(monkeypatch):
    # the registration the CLI carries for `prefloop convert`
    monkeypatch.setitem(cli.COMMANDS, "convert", ("prefloop.data.convert", "ConvertConfig", "run_convert",
                                                  "convert public human-feedback data sets to prefloop JSONL"))


def hh_file(tmp_path: Path) -> Path:
    rows = [{"chosen": H.format(w=w) + f" Yes, {w} is a word.", "rejected": H.format(w=w) + " No."} for w in WORDS]
    rows.insert(3, {"chosen": H.format(w="x") + " Yes.\n\nHuman: ok\n\nAssistant: Bye.", "rejected": H.format(w="x")
                    + " No."})
    path = tmp_path / "hh.jsonl.gz"
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    return path


def vader_dir(tmp_path: Path) -> Path:
    d = tmp_path / "vader"
    d.mkdir()
    for domain, sign in (("happy", 1), ("sad", -1)):
        ratings = {f"{i}": [sign * (i % 5), sign * (i % 4), sign * (i % 3)] for i in range(12)}
        rows = [f"{k}\t{sum(r) / 3}\t0.1\t{json.dumps(r)}" for k, r in ratings.items()]
        (d / f"{domain}_anonDataRatings.txt.gz").write_bytes(gzip.compress("\n".join(rows).encode()))
        texts = [f"{k}\t0\t{domain} text number {k} " + "so " * int(k) for k in ratings]
        (d / f"{domain}_GroundTruth.txt.gz").write_bytes(gzip.compress("\n".join(texts).encode()))
    return d


def test_convert_hh_rlhf_reports_skipped_lines(tmp_path, capsys):
    src, out = hh_file(tmp_path), tmp_path / "pairs.jsonl"
    assert cli.main(["convert", "--format", "hh-rlhf", "--input", str(src), "--out", str(out)]) == 0
    pairs = read_comparisons(out)
    assert len(pairs) == len(WORDS)
    assert pairs[0].prompt == H.format(w="apple") and pairs[0].chosen == " Yes, apple is a word."
    err = capsys.readouterr().err
    assert "8 comparisons written" in err and f"{src}:4: the dialogues differ" in err


def test_convert_hh_rlhf_as_messages_lets_the_chat_template_apply(tmp_path, policy_dir):
    from prefloop.data import render_prompt
    from prefloop.models import load_tokenizer

    src, out = hh_file(tmp_path), tmp_path / "chat.jsonl"
    assert cli.main(["convert", "--format", "hh-rlhf", "--as-messages", "--input", str(src), "--out", str(out)]) == 0
    pairs = read_comparisons(out)
    assert len(pairs) == len(WORDS)
    assert pairs[0].prompt == [{"role": "user", "content": "Is apple a word?"}]
    assert pairs[0].chosen == [{"role": "assistant", "content": "Yes, apple is a word."}]
    tok = load_tokenizer(str(policy_dir))
    assert render_prompt(tok, pairs[0].prompt) == tok.apply_chat_template(pairs[0].prompt, tokenize=False,
                                                                          add_generation_prompt=True)
    assert "Human:" not in render_prompt(tok, pairs[0].prompt)
    assert cli.main(["convert", "--format", "shp", "--as-messages", "--input", str(src), "--out", str(out)]) == 2


def test_convert_vader_comparisons_are_reproducible_and_train_a_reward_model(tmp_path, policy_dir):
    src = vader_dir(tmp_path)
    outs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        outs.append(tmp_path / f"{name}.jsonl")
        args = ["convert", "--format", "vader-comparisons", "--input", str(src), "--out", str(outs[-1]),
                "--margin", "0.5", "--max-pairs", "30", "--seed", str(seed)]
        assert cli.main(args) == 0
    assert outs[0].read_bytes() == outs[1].read_bytes() != outs[2].read_bytes()
    pairs = read_comparisons(outs[0])
    assert len(pairs) == 30 and all(p.margin > 0.5 and p.pool in ("happy", "sad") for p in pairs)
    # the reward trainer reads the converted file as it is (empty prompts; held-out pairs from another seed)
    meta = run_reward(RewardConfig(model=str(policy_dir), data=outs[0], eval_data=outs[2], out=tmp_path / "rm",
                                      max_steps=2, batch_size=8, max_length=48, use_margin=True))
    assert meta["metrics"]["train_comparisons"] == 30 and meta["metrics"]["eval_comparisons"] == 30
    assert 0.0 <= meta["metrics"]["eval/accuracy"] <= 1.0


def test_convert_vader_ratings(tmp_path):
    out = tmp_path / "ratings.jsonl"
    src = vader_dir(tmp_path) / "sad_anonDataRatings.txt.gz"
    assert cli.main(["convert", "--format", "vader-ratings", "--input", str(src), "--out", str(out)]) == 0
    ratings = read_ratings(out)
    assert len(ratings) == 36 and {r.scale for r in ratings} == {(-4.0, 4.0)} and ratings[0].pool == "sad"
    assert cli.main(["convert", "--format", "vader-ratings", "--input", str(src), "--out", str(out),
                     "--mean-rating"]) == 0
    assert len(read_ratings(out)) == 12


def test_convert_summarize_and_shp(tmp_path):
    summ = tmp_path / "summ.jsonl"
    summ.write_text(json.dumps({"info": {"post": "p", "title": "t", "subreddit": "s"}, "choice": 0, "worker": "w1",
                                "summaries": [{"text": " good"}, {"text": " bad"}]}) + "\n")
    shp = tmp_path / "shp.jsonl"
    shp.write_text("".join(json.dumps({"history": "q", "human_ref_A": "a", "human_ref_B": "b", "labels": 0,
                                       "score_A": 1, "score_B": s, "domain": "d"}) + "\n" for s in (3, 5)))
    out = tmp_path / "o.jsonl"
    assert cli.main(["convert", "--format", "summarize", "--input", str(summ), "--out", str(out)]) == 0
    assert read_comparisons(out)[0].annotator == "w1"
    assert cli.main(["convert", "--format", "shp", "--input", str(shp), "--out", str(out),
                     "--min-score-ratio", "4"]) == 0
    assert [c.chosen for c in read_comparisons(out)] == [" b"]


@pytest.mark.parametrize("extra,message", [
    (["--format", "hh-rlhf", "--margin", "1"],
     "error: --margin applies to --format vader-comparisons only, not hh-rlhf"),
    (["--format", "vader-ratings", "--max-pairs", "5"],
     "error: --max-pairs applies to comparison formats only, not vader-ratings"),
    (["--format", "shp"], "error: {src}:2: field 'labels' must be 1 (A preferred) or 0 (B preferred), got 7"),
])
def test_convert_errors_are_one_line_and_write_nothing(tmp_path, capsys, extra, message):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"history": "q", "human_ref_A": "a", "human_ref_B": "b", "labels": 1}) + "\n"
                   + json.dumps({"history": "q", "human_ref_A": "a", "human_ref_B": "b", "labels": 7}) + "\n")
    out = tmp_path / "out.jsonl"
    assert cli.main(["convert", "--input", str(src), "--out", str(out), *extra]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err == [message.format(src=src)]
    assert not out.exists() and not list(tmp_path.glob("out.jsonl*"))


def test_convert_needs_input(tmp_path, capsys):
    assert cli.main(["convert", "--format", "hh-rlhf", "--out", str(tmp_path / "o.jsonl")]) == 2
    assert capsys.readouterr().err.strip() == "error: missing option --input"
