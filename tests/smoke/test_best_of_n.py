"""Best-of-n sampling (`prefloop sample --best-of N`) and rejection-sampling fine-tuning on a micro model."""

from __future__ import annotations

import json

import pytest

from prefloop.cli import main
from prefloop.recipes.rejection_sampling import RejectionSamplingConfig, run_rejection_sampling
from prefloop.recipes.sample import SampleConfig, run_sample

TOY_REWARD = '''
def count_o(prompts, responses):
    """Toy verifiable reward: how many letters 'o' the response has."""
    return [float(r.count("o")) for r in responses]
'''


@pytest.fixture
def toy_reward(tmp_path, monkeypatch) -> str:
    (tmp_path / "prefloop_toy_reward_bon.py").write_text(TOY_REWARD)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "prefloop_toy_reward_bon:count_o"


def rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs)


def sample_cfg(tmp_path, policy_dir, toy_data, name, **kw):
    return SampleConfig(model=str(policy_dir), prompts=toy_data["prompts"], out=tmp_path / f"{name}.jsonl",
                        max_new_tokens=8, max_length=64, batch_size=64, seed=5, **kw)


def test_best_of_n_selects_the_argmax_and_beats_plain_sampling(tmp_path, policy_dir, toy_data, toy_reward):
    plain = rows(run_sample(sample_cfg(tmp_path, policy_dir, toy_data, "plain", num_samples=1, reward_fn=toy_reward)))
    best = rows(run_sample(sample_cfg(tmp_path, policy_dir, toy_data, "best", best_of=8, keep_all=True,
                                      reward_fn=toy_reward)))
    assert len(plain) == len(best) == 64
    for r in best:
        assert len(r["responses"]) == len(r["scores"]) == len(r["ended"]) == 8
        assert r["score"] == max(r["scores"]) and r["response"] == r["responses"][r["best_index"]]
        assert r["scores"].index(max(r["scores"])) == r["best_index"]  # the first of equal maxima
        assert r["score"] == r["response"].count("o")  # the stored score is the reward of the kept text
    plain_mean = mean(r["scores"][0] for r in plain)
    best_mean = mean(r["score"] for r in best)
    assert best_mean >= plain_mean + 0.3, (plain_mean, best_mean)
    assert best_mean >= mean(x for r in best for x in r["scores"])


def test_best_of_n_with_a_reward_model_from_the_cli(tmp_path, policy_dir, reward_dir, toy_data):
    base = ["sample", "--model", str(policy_dir), "--prompts", str(toy_data["prompts"]), "--max-new-tokens", "8",
            "--max-length", "64", "--seed", "2", "--reward", str(reward_dir)]
    assert main(base + ["--num-samples", "1", "--out", str(tmp_path / "plain.jsonl")]) == 0
    assert main(base + ["--best-of", "6", "--out", str(tmp_path / "best.jsonl")]) == 0
    plain, best = rows(tmp_path / "plain.jsonl"), rows(tmp_path / "best.jsonl")
    assert set(best[0]) == {"prompt", "response", "score", "best_index", "model"}  # no --keep-all: the best only
    assert mean(r["score"] for r in best) > mean(r["scores"][0] for r in plain)


def test_sample_cli_bad_input(tmp_path, policy_dir, toy_data, capsys):
    base = ["sample", "--model", str(policy_dir), "--prompts", str(toy_data["prompts"]), "--out",
            str(tmp_path / "o.jsonl")]

    def error(*args) -> str:
        assert main(base + list(args)) == 2
        lines = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), lines
        return lines[0]

    assert "--reward-fn" in error("--best-of", "4")
    assert "--keep-all needs --best-of" in error("--keep-all")
    assert "--best-of must be >= 1" in error("--best-of", "0", "--reward", "x")
    assert "cannot import module" in error("--best-of", "2", "--reward-fn", "no_such_module_xyz:f")
    assert not (tmp_path / "o.jsonl").exists()


def test_rejection_sampling_improves_the_policy_and_resumes(tmp_path, policy_dir, toy_data, toy_reward):
    cfg = dict(policy=str(policy_dir), prompts=toy_data["prompts"], reward_fn=toy_reward, out=tmp_path / "rs",
               num_samples=8, max_new_tokens=8, max_length=64, lr=1e-2, epochs=3, batch_size=16)
    meta = run_rejection_sampling(RejectionSamplingConfig(rounds=2, **cfg))
    summary = json.loads((tmp_path / "rs" / "summary.json").read_text())
    assert meta["metrics"] == summary
    r1, r2 = summary["rounds"]
    # Best-of-8 beats the policy's average sample in every round; the round-2 policy, sampled on round 1's
    # prompts with round 1's seed, scores higher than the starting policy did.
    assert r1["best_of_n_mean"] > r1["sample_mean"] and r2["best_of_n_mean"] > r2["sample_mean"]
    assert summary["final"]["sample_mean"] > r1["sample_mean"] + 0.5, summary
    assert r2["policy_in"] == r1["policy_out"] and summary["final"]["trained_in"] == r2["policy_out"]
    for r in (1, 2):
        d = tmp_path / "rs" / f"round_{r}"
        samples, demos = rows(d / "samples.jsonl"), rows(d / "best.jsonl")
        record = json.loads((d / "round.json").read_text())
        assert len(samples) == 64 and len(demos) == 64 - record["empty_winners_dropped"] - record["nul_winners_dropped"]
        assert not any("\x00" in x["completion"] for x in demos)  # the micro model does sample NULs
        assert all(s["scores"][s["best_index"]] == max(s["scores"]) for s in samples)
        assert (d / "sft" / "model" / "model.safetensors").exists()
    assert (tmp_path / "rs" / "model" / "model.safetensors").exists()

    # --resume with one more round: rounds 1 and 2 are kept as they are, round 3 starts from round 2's policy.
    before = {r: (tmp_path / "rs" / f"round_{r}" / "round.json").stat().st_mtime_ns for r in (1, 2)}
    run_rejection_sampling(RejectionSamplingConfig(rounds=3, resume=True, **cfg))
    after = {r: (tmp_path / "rs" / f"round_{r}" / "round.json").stat().st_mtime_ns for r in (1, 2)}
    assert before == after
    rounds = json.loads((tmp_path / "rs" / "summary.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3] and rounds[2]["policy_in"] == r2["policy_out"]


def test_rejection_sampling_cli_bad_input(tmp_path, policy_dir, toy_data, capsys):
    args = ["rejection-sampling", "--policy", str(policy_dir), "--prompts", str(toy_data["prompts"]), "--out",
            str(tmp_path / "rs")]
    assert main(args) == 2
    assert "--reward-fn" in capsys.readouterr().err
    assert main(args + ["--reward-fn", "no_such_module_xyz:f"]) == 2
    assert "cannot import module 'no_such_module_xyz'" in capsys.readouterr().err
    assert main(args + ["--reward-fn", "x:y", "--rounds", "0"]) == 2
    assert "--rounds must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "rs").exists()
