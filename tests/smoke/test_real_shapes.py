"""Data shaped like the real sets that first failed: VADER-derived records all share the empty prompt (the
held-out split must not take them all), ordinal ratings on VADER's scale, a model folder without tokenizer
files. Tiny files written in the test; the real files are used where present (benchmarks' data folder)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from prefloop.cli import main

TEXTS = ["great product, works well", "terrible, broke at once", "ok I guess", "love it", "awful smell",
         "fine value", "would not buy again", "excellent battery", "meh", "superb sound"]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run(args: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(args)
    return rc, capsys.readouterr().err


def common(model: Path, data: Path, out: Path) -> list[str]:
    return ["--model", str(model), "--data", str(data), "--out", str(out), "--max-steps", "1", "--batch-size", "4",
            "--max-length", "32"]


def test_pairs_sharing_one_prompt_are_held_out_by_pair(tmp_path, policy_dir, capsys):
    rng = random.Random(0)
    rows = [{"prompt": "", "chosen": a, "rejected": b, "pool": "amazon"}
            for a, b in (rng.sample(TEXTS, 2) for _ in range(20))]
    data = _write(tmp_path / "vader_pairs.jsonl", rows)
    for command in ("reward", "dpo"):
        out = tmp_path / command
        rc, err = run([command] + common(policy_dir, data, out), capsys)
        assert rc == 0, err
        assert "note: every record has the same prompt; holding out 2 of 20 records instead of whole prompts" in err
        metrics = json.loads((out / "prefloop.json").read_text())["metrics"]
        assert (metrics["train_comparisons"], metrics["eval_comparisons"]) == (18, 2)


def test_ordinal_loss_on_vader_shaped_ratings_trains(tmp_path, policy_dir, capsys):
    """Several raters per text on VADER's -4..+4 scale, written as floats, one empty prompt: this crashed with
    an IndexError (the held-out split took every record, leaving no training rating to read the scale from)."""
    rng = random.Random(1)
    rows = [{"prompt": "", "response": t, "rating": float(rng.randint(-4, 4)), "scale": [-4.0, 4.0],
             "pool": "amazonReviewSnippets", "meta": {"rater_index": k}} for t in TEXTS for k in range(4)]
    data = _write(tmp_path / "vader_ratings.jsonl", rows)
    out = tmp_path / "rm"
    rc, err = run(["reward", "--rating-loss", "ordinal"] + common(policy_dir, data, out), capsys)
    assert rc == 0, err
    assert "Traceback" not in err
    meta = json.loads((out / "prefloop.json").read_text())
    assert (meta["metrics"]["train_ratings"], meta["metrics"]["eval_ratings"]) == (36, 4)
    assert "eval/pair_accuracy" in meta["metrics"]


def test_one_record_leaves_nothing_to_train_on(tmp_path, policy_dir, capsys):
    data = _write(tmp_path / "one.jsonl", [{"prompt": "", "response": "x", "rating": 1.0, "scale": [-4.0, 4.0]}])
    out = tmp_path / "rm"
    rc, err = run(["reward", "--rating-loss", "ordinal"] + common(policy_dir, data, out), capsys)
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("note:")]
    assert rc == 2 and lines == [f"error: {data}: no training records left after holding out 1 of 1 "
                                 "(--eval-fraction); give more records, --eval-fraction 0 or --eval-data"], err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("keep_config", [False, True])
def test_model_folder_without_tokenizer_files_is_one_line(tmp_path, policy_dir, toy_data, keep_config, capsys):
    """Weights and config.json only (a training script that saved the model and not its tokenizer): once a
    ZeroDivisionError in sft, then a long message from transformers; now one line naming the folder."""
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors") + (("tokenizer_config.json",) if keep_config else ()):
        if (policy_dir / f).exists():
            shutil.copy(policy_dir / f, bare / f)
    out = tmp_path / "sft"
    rc, err = run(["sft", "--model", str(bare), "--data", str(toy_data["demos"]), "--out", str(out),
                   "--max-steps", "1", "--max-length", "32"], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {bare}: no tokenizer files (none of tokenizer.json, tokenizer.model")
    assert not out.exists()
