"""`prefloop eval reward | policy | best-of-n | judge` and `prefloop report` on micro models built here and a
tiny synthetic world: the files appear, the numbers obey what must hold, bad input -> `error: ...`, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from prefloop.cli import main
from prefloop.world import WorldConfig, build_world, write_world

GEN = ["--max-new-tokens", "8", "--temperature", "1.0", "--num-prompts", "6", "--batch-size", "32"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    from prefloop.models import load_reward_model
    from prefloop.recipes.pretrain import new_model, train_tokenizer

    root = tmp_path_factory.mktemp("evalcli")
    world = build_world(WorldConfig.preset("tiny", n_comparisons=80, n_demonstrations=20, n_train_prompts=100,
                                           n_heldout_prompts=20, corpus_responses_per_prompt=1,
                                           encyclopedia_repeats=1))
    write_world(world, root / "world")
    tok = train_tokenizer(world.corpus, vocab_size=300)
    paths = {"world": root / "world"}
    for i, name in enumerate(("policy", "ref")):
        torch.manual_seed(i)
        m = new_model(tok, "llama", "micro", 256)
        m.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        paths[name] = root / name
    torch.manual_seed(2)
    rm = load_reward_model(str(paths["policy"]), tok, new_head=True)
    rm.save_pretrained(root / "rm")
    tok.save_pretrained(root / "rm")
    paths["rm"] = root / "rm"
    paths["prompts"] = root / "world" / "prompts_heldout.jsonl"
    paths["pairs"] = root / "world" / "comparisons.jsonl"
    paths["root"] = root
    return paths


def run(*args, capsys=None) -> tuple[int, str]:
    code = main(["eval", *map(str, args)])
    err = capsys.readouterr().err if capsys is not None else ""
    return code, (err.strip().splitlines() or [""])[-1]  # the last line (model loading may print progress)


def test_eval_reward_accuracy_calibration_pools(setup, tmp_path):
    code, _ = run("reward", "--model", setup["rm"], "--data", setup["pairs"], "--out", tmp_path, "--bins", "4")
    assert code == 0
    m = json.loads((tmp_path / "metrics.json").read_text())["reward_model"]
    recs = [json.loads(x) for x in setup["pairs"].read_text().splitlines()]
    assert m["n"] == len(recs) and 0.0 <= m["accuracy"] <= 1.0
    assert sum(b["count"] for b in m["calibration"]) == len(recs) and len(m["calibration"]) == 4
    assert set(m["by_pool"]) == {r["pool"] for r in recs}
    assert sum(v["n"] for v in m["by_pool"].values()) == len(recs)
    # Gold agreement from the comparisons' meta; the simulated annotators agree with gold more often than not.
    assert m["gold_pairs"] > 0 and m["annotator_gold_agreement"] > 0.5
    report = (tmp_path / "report.md").read_text()
    assert "Calibration of the Bradley-Terry probability" in report and (tmp_path / "calibration.png").exists()


def test_eval_policy_against_a_reference(setup, tmp_path):
    code, _ = run("policy", "--model", setup["policy"], "--reference", setup["ref"], "--reward-model", setup["rm"],
                  "--world", setup["world"], "--prompts", setup["prompts"], "--k", "2", "--redteam-prompts", "3",
                  "--name", "ppo", "--reference-name", "sft", "--out", tmp_path, *GEN)
    assert code == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    ppo, sft = m["stages"]["ppo"], m["stages"]["sft"]
    # Two different random models: KL > 0, and k3 (non-negative per token) is positive. The reference spends
    # none: its KL to itself is 0, under the same key as the demo's and the loop's.
    assert ppo["kl_to_ref_k3"] > 0 and sft["kl_to_ref"] == 0.0 and sft["kl_to_ref_k3"] == 0.0
    for s in (ppo, sft):
        assert 0 <= s["no_eos_fraction"] <= 1 and s["mean_response_tokens"] <= 8 and s["entropy"] > 0
        assert {"gold_reward_mean", "reward_model_mean", "per_input/ead", "across_input/distinct_2",
                "hallucination_rate", "redteam_bad_answer_rate"} <= set(s)
    wr = m["win_rates"]["ppo vs sft"]
    assert wr["judge"] == "gold" and wr["n"] == 12 and wr["ci_low"] <= wr["win_rate"] <= wr["ci_high"]
    assert wr["interval"] == "bootstrap over prompts" and 0 <= wr["lc_win_rate"] <= 1 and "length_coef" in wr
    assert m["win_rates"]["ppo vs sft, reward model"]["judge"] == "reward-model"  # every judge the run has
    assert m["intervals"]["ppo"]["win_rate_vs_ref"]["mean"] == pytest.approx(wr["win_rate"])
    assert m["stages"]["sft"]["win_rate_vs_ref"] == 0.5
    # Every mean carries an interval over the 6 prompts (12 samples); the difference is paired on them.
    for st in ("ppo", "sft"):
        iv = m["intervals"][st]["gold_reward_mean"]
        assert iv["prompts"] == 6 and iv["samples"] == 12 and iv["ci_low"] <= iv["mean"] <= iv["ci_high"]
        assert iv["mean"] == pytest.approx(m["stages"][st]["gold_reward_mean"])
    d = m["differences"]["ppo - sft"]["gold_reward_mean"]
    assert d["diff"] == pytest.approx(ppo["gold_reward_mean"] - sft["gold_reward_mean"]) and d["prompts"] == 6
    assert m["intervals"]["ppo"]["redteam_bad_answer_rate"]["prompts"] == 3 and isinstance(m["regressions"], list)
    assert ppo["self_bleu"] == ppo["per_input/self_bleu"]  # one self-BLEU, per prompt, under both names
    rt = m["redteam"]["ppo"]
    assert rt["bad_answer_n"] == 6 and rt["needless_refusal_n"] == 6
    rows = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all(len(r["responses"]) == 2 and len(r["gold"]) == 2 for r in rows)
    html = (tmp_path / "report.html").read_text()
    assert "win rate vs reference" in html and "Red team" in html and "data:image/png;base64," in html


def test_eval_policy_against_itself_spends_no_kl(setup, tmp_path, capsys):
    # No --judge and no world: the reward model is the judge there is, and the output says so.
    code, _ = run("policy", "--model", setup["policy"], "--reference", setup["policy"], "--reward-model", setup["rm"],
                  "--prompts", setup["prompts"], "--k", "2", "--out", tmp_path, *GEN)
    assert code == 0 and "judge: reward-model (the best available" in capsys.readouterr().err
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert abs(m["stages"]["policy"]["kl_to_ref"]) < 1e-4 and abs(m["stages"]["policy"]["kl_to_ref_k3"]) < 1e-4
    assert m["win_rates"]["policy vs reference"]["judge"] == "reward-model"
    assert "gold_reward_mean" not in m["stages"]["policy"] and "redteam" not in m
    # The same policy twice, same seed: the same samples, no difference, nothing called a regression. The KL
    # is measured for the policy (rounding noise, which may be consistently signed) and 0 by definition for the
    # reference, so only its difference may differ from 0, by rounding.
    diffs = m["differences"]["policy - reference"]
    assert m["regressions"] == [] and {"kl_to_ref", "kl_to_ref_k3"} <= set(diffs)
    assert all(abs(d["diff"]) < 1e-4 if k.startswith("kl_to_ref") else d["diff"] == 0 for k, d in diffs.items())
    assert not any(d["significant"] for k, d in diffs.items() if not k.startswith("kl_to_ref"))


def test_eval_policy_with_a_judgments_file(setup, tmp_path):
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b",
             "meta": {"chosen_policy": "ppo" if i < 3 else "sft", "rejected_policy": "sft" if i < 3 else "ppo"}}
            for i in range(4)]
    f = tmp_path / "people.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _ = run("policy", "--model", setup["policy"], "--prompts", setup["prompts"], "--judge", "file",
                  "--judge-file", f, "--name", "ppo", "--reference-name", "sft", "--k", "1", "--out", tmp_path / "o",
                  *GEN)
    assert code == 0
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    wr = m["win_rates"]["ppo vs sft"]
    assert wr["judge"] == "file" and wr["win_rate"] == 0.75 and wr["n"] == 4
    assert m["stages"]["ppo"]["win_rate_vs_ref"] == 0.75


def test_eval_sweep_over_policy_runs(setup, tmp_path, capsys):
    runs = []
    for name in ("policy", "ref"):  # two evaluated policies stand in for two KL coefficients
        out = tmp_path / f"run-{name}"
        code, _ = run("policy", "--model", setup[name], "--world", setup["world"], "--prompts", setup["prompts"],
                      "--k", "2", "--redteam-prompts", "0", "--out", out, *GEN)
        assert code == 0
        runs.append(out)
    code, _ = run("sweep", "--runs", *runs, "--out", tmp_path / "sweep")
    assert code == 0
    sweep = json.loads((tmp_path / "sweep" / "metrics.json").read_text())["sweep"]
    assert [p["run"] for p in sweep["points"]] == ["run-policy", "run-ref"]
    for p, r in zip(sweep["points"], runs):
        stage = json.loads((r / "metrics.json").read_text())["stages"]["policy"]
        assert p["gold_reward_mean"] == stage["gold_reward_mean"] and p["per_input/distinct_2"] == stage[
            "per_input/distinct_2"]
    assert (tmp_path / "sweep" / "diversity_trade.png").exists()
    code, err = run("sweep", "--runs", tmp_path, "--out", tmp_path / "s2", capsys=capsys)
    assert code == 2 and "no stages" in err


def test_eval_best_of_n(setup, tmp_path):
    code, _ = run("best-of-n", "--model", setup["policy"], "--reward-model", setup["rm"], "--world", setup["world"],
                  "--prompts", setup["prompts"], "--n", "6", "--out", tmp_path, *GEN)
    assert code == 0
    bon = json.loads((tmp_path / "metrics.json").read_text())["best_of_n"]
    curve = bon["curve"]
    assert [r["n"] for r in curve] == list(range(1, 7)) and curve[0]["kl"] == 0.0
    proxy = [r["proxy"] for r in curve]
    assert all(b >= a - 1e-9 for a, b in zip(proxy, proxy[1:]))  # E[max of n] never falls with n
    assert {"alpha", "beta"} <= set(bon["fit_gold"]) and 1 <= bon["peak_gold"]["n"] <= 6
    assert (tmp_path / "best_of_n.png").stat().st_size > 3000
    assert "Best-of-n over-optimisation" in (tmp_path / "report.md").read_text()


def test_judge_file_win_rate(tmp_path, capsys):
    rows = [{"prompt": f"q{i}", "chosen": f"a{i}", "rejected": f"b{i}",
             "meta": {"chosen_policy": "ppo" if i < 7 else "sft", "rejected_policy": "sft" if i < 7 else "ppo"}}
            for i in range(10)]
    f = tmp_path / "export.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = main(["eval", "--judge-file", str(f), "--name", "ppo", "--reference-name", "sft", "--out",
                 str(tmp_path / "o")])
    assert code == 0
    wr = json.loads((tmp_path / "o" / "metrics.json").read_text())["win_rates"]["ppo vs sft"]
    assert wr["win_rate"] == pytest.approx(0.7) and wr["n"] == 10
    assert wr["ci_low"] == pytest.approx(0.3968, abs=1e-3) and wr["ci_high"] == pytest.approx(0.8922, abs=1e-3)


def test_bad_input_is_one_line_and_exit_2(setup, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": 3}\n')
    code, err = run("reward", "--model", setup["rm"], "--data", bad, "--out", tmp_path / "o", capsys=capsys)
    assert code == 2 and err.startswith("error: ") and f"{bad}:2:" in err
    code, err = run("policy", "--prompts", setup["prompts"], capsys=capsys)
    assert code == 2 and "missing option --model" in err
    code, err = run("policy", "--model", setup["policy"], "--prompts", setup["prompts"], "--reference",
                    setup["ref"], "--judge", "reward-model", capsys=capsys)
    assert code == 2 and "--judge reward-model needs --reward-model" in err
    strange = tmp_path / "strange.jsonl"
    strange.write_text('{"prompt": "User: What is 2 plus 2?\\nAssistant:"}\n{"prompt": "User: Who are you?"}\n')
    code, err = run("policy", "--model", setup["policy"], "--prompts", strange, "--world", setup["world"],
                    "--out", tmp_path / "o2", capsys=capsys)
    assert code == 2 and f"{strange}:2: not a prompt of the world" in err
    code, err = run("policy", "--model", setup["policy"], "--prompts", setup["prompts"], "--redteam-file",
                    setup["prompts"], "--redteam-scorer", "nope", "--out", tmp_path / "o3", capsys=capsys)
    assert code == 2 and "should_refuse" in err  # the prompts file is no red-team file: named with its line
    assert not (tmp_path / "o3" / "metrics.json").exists()
    assert main(["eval", "nonsense"]) == 2
    code, err = run("judge", "--judge-file", tmp_path / "missing.jsonl", capsys=capsys)
    assert code == 2 and "missing.jsonl: file not found" in err


def _fake_demo(run: Path) -> None:
    stages = {name: {"gold_reward_mean": g, "kl_to_ref": kl, "distinct_2": 0.5, "self_bleu": 0.4,
                     "gold_win_rate_vs_sft": w} for name, g, kl, w in
              (("base", -2.0, 3.0, 0.2), ("sft", 1.0, 0.0, 0.5), ("ppo", 1.5, 2.0, 0.7))}
    (run / "ppo").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({
        "stages": stages, "preset": "tiny", "seed": 0, "settings": {"eval_k": 2},
        "reward_model": {"heldout_accuracy": 0.7, "gold_accuracy": 0.8, "train_comparisons": 500},
        "seconds": {"ppo": 10.0, "total": 20.0}}))
    rows = [{"step": s, "rollout/score_mean": 0.1 * s, "kl/k1": 0.2 * s, "gold/mean": s - 0.08 * s * s,
             "loss/policy": 1.0 / (s + 1)} for s in range(1, 15)]
    (run / "ppo" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    samples = [{"stage": st, "prompt": "User: What is 1 plus 1?\nAssistant:", "responses": [resp], "gold": [g]}
               for st, resp, g in (("sft", " 1 plus 1 is 2.", 2.9), ("ppo", " <script>alert(1)</script> | x", -1.0))]
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in samples))


def test_report_on_a_demo_layout(tmp_path, capsys):
    run = tmp_path / "demo-tiny"
    _fake_demo(run)
    assert main(["report", str(run)]) == 0
    md = (run / "report.md").read_text()
    assert "## Stages" in md and "gold win rate vs SFT" in md and "ppo_curves.png" in md
    # s = 6: 6 - 2.88 is the highest batch, named as a noisy maximum; the clean parabola supports a fit.
    assert "RL over-optimisation (ppo)" in md and "highest batch: 3.120 at KL 1.200" in md
    assert "Fit R^2 = 0.88 over 14 points" in md and "peak KL n/a" not in md
    assert "\\| x" in md  # a pipe in a sample does not break the Markdown table
    html = (run / "report.html").read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert (run / "ppo_curves.png").stat().st_size > 3000 and (run / "frontier.png").exists()
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_demo_samples_feed_the_report(tmp_path):
    from prefloop.eval.report_run import write_report
    from prefloop.eval.sampling import PolicySamples
    from prefloop.eval.stages import write_stage_samples

    run = tmp_path / "demo"
    _fake_demo(run)
    prompts = ["User: What is 2 plus 2?\nAssistant:", "User: What is 3 plus 3?\nAssistant:"]
    sft = PolicySamples(prompts, [[" 2 plus 2 is 4."], [" 3 plus 3 is 6."]], [[True], [True]], [[5], [5]],
                        reward_model=[[0.5], [0.4]])
    ppo = PolicySamples(prompts, [[" Sure! 2 plus 2 is 4."], [" 3 plus 3 is 7."]], [[True], [False]], [[6], [8]],
                        reward_model=[[0.9], [0.8]])
    write_stage_samples(run / "samples.jsonl", {"sft": (sft, [[2.9], [2.9]]), "ppo": (ppo, [[3.3], [-2.1]])})
    rows = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["gold"], r["reward_model"]) for r in rows] == [
        ("sft", [2.9], [0.5]), ("sft", [2.9], [0.4]), ("ppo", [3.3], [0.9]), ("ppo", [-2.1], [0.8])]
    md = Path(write_report(run)).with_suffix(".md").read_text()
    # Stages side by side, each sample with its scores.
    assert "#### What is 3 plus 3?" in md and "| sample 1 | 3 plus 3 is 6.  (gold 2.900, RM 0.400) | 3 plus 3 is 7.  " \
        "(gold -2.100, RM 0.800) |" in md
