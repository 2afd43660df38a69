"""What a command says when it ends: one summary line per trainer (final loss, held-out result, where the
model is) and for `prefloop sample`; and prefloop's own writers leave out rows holding a NUL character."""

from __future__ import annotations

import json
import re

import pytest

from prefloop.cli import main

SCORE_FN = "def length(prompts, responses):\n    return [float(len(r)) for r in responses]\n"


@pytest.fixture
def score_module(tmp_path, monkeypatch):
    (tmp_path / "prefloop_summary_score.py").write_text(SCORE_FN)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "prefloop_summary_score:length"


def run(args: list[str], capsys) -> tuple[int, list[str], list[str]]:
    capsys.readouterr()
    rc = main(args)
    cap = capsys.readouterr()
    return rc, [ln for ln in cap.out.splitlines() if ln.strip()], cap.err.splitlines()


def test_sft_ends_with_steps_final_loss_and_model_path(tmp_path, policy_dir, toy_data, capsys):
    out = tmp_path / "sft"
    rc, lines, _ = run(["sft", "--model", str(policy_dir), "--data", str(toy_data["demos"]), "--out", str(out),
                        "--max-steps", "2", "--batch-size", "4", "--max-length", "48"], capsys)
    assert rc == 0
    history = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1] == f"sft: 2 steps, final loss {history[-1]['loss/sft']:.4g}, model in {out / 'model'}"


def test_reward_summary_and_report_give_held_out_accuracy(tmp_path, policy_dir, toy_data, capsys):
    out = tmp_path / "rm"
    rc, lines, _ = run(["reward", "--model", str(policy_dir), "--data", str(toy_data["pairs"]), "--out", str(out),
                        "--max-steps", "2", "--batch-size", "4", "--max-length", "48"], capsys)
    assert rc == 0
    acc = json.loads((out / "prefloop.json").read_text())["metrics"]["eval/accuracy"]
    assert re.fullmatch(rf"reward: 2 steps, final loss [0-9.e-]+ \(held-out accuracy {acc:.4g}\), "
                        rf"model in {re.escape(str(out / 'model'))}", lines[-1]), lines
    # and the report of the run shows the same held-out accuracy
    from prefloop.eval.report_doc import fmt
    from prefloop.eval.report_run import write_report

    md = (write_report(out).parent / "report.md").read_text()
    held = md.split("## Held-out results", 1)[1].split("\n## ", 1)[0]
    assert f"| accuracy | {fmt(acc)} |" in held and "eval comparisons" in held, held


def test_sample_summary_and_nul_samples_are_replaced(tmp_path, policy_dir, toy_data, score_module, capsys,
                                                    monkeypatch):
    from prefloop.recipes import sample as sample_mod

    real = sample_mod.sample_and_score

    def with_a_nul(*args, **kwargs):
        s = real(*args, **kwargs)
        # the micro model samples random bytes (NULs among them): make the text known, then put in one NUL
        s.responses = [[f" answer {i}.{j}" for j in range(len(row))] for i, row in enumerate(s.responses)]
        s.responses[1][0] = " it is\x00 3"
        return s

    monkeypatch.setattr(sample_mod, "sample_and_score", with_a_nul)
    out = tmp_path / "samples.jsonl"
    rc, lines, err = run(["sample", "--model", str(policy_dir), "--prompts", str(toy_data["prompts"]),
                          "--out", str(out), "--num-samples", "2", "--max-new-tokens", "4",
                          "--reward-fn", score_module], capsys)
    assert rc == 0
    rows = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert len(rows) == 64 and not any("\x00" in r for row in rows for r in row["responses"])
    assert rows[1]["responses"] == [" it is\ufffd 3", " answer 1.1"]  # every prompt keeps its K samples
    assert any("1 sample(s) held a NUL character, written with U+FFFD" in ln for ln in err), err
    assert re.fullmatch(rf"sample: 64 prompts x 2 samples, mean score [0-9.]+, \d+% never ended, written "
                        rf"to {re.escape(str(out))}", lines[-1]), lines


def test_rejection_sampling_leaves_out_a_nul_winner(tmp_path, policy_dir, toy_data, score_module, monkeypatch):
    from prefloop.recipes import rejection_sampling as rs
    from prefloop.recipes.sample import Samples

    def fake(cfg, policy_dir, texts, reward, seed, device):
        n = len(texts)
        responses = [[" best\x00 one" if i == 0 else f" answer {i}", " b"] for i in range(n)]
        return Samples(responses, [[True, True]] * n, [[3, 1]] * n, [[5.0, 1.0]] * n)

    monkeypatch.setattr(rs, "_sample_policy", fake)
    out = tmp_path / "rs"
    rc = main(["rejection-sampling", "--policy", str(policy_dir), "--prompts", str(toy_data["prompts"]),
               "--reward-fn", score_module, "--rounds", "1", "--prompts-per-round", "4", "--num-samples", "2",
               "--max-steps", "1", "--batch-size", "2", "--max-length", "48", "--out", str(out)])
    assert rc == 0
    demos = [json.loads(ln) for ln in (out / "round_1" / "best.jsonl").read_text().splitlines()]
    assert len(demos) == 3 and not any("\x00" in d["completion"] for d in demos)
    record = json.loads((out / "round_1" / "round.json").read_text())
    assert record["nul_winners_dropped"] == 1 and record["empty_winners_dropped"] == 0
