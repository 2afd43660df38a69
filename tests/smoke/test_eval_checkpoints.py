"""`prefloop eval checkpoints`: gold and proxy reward against KL over a list of policy directories (an RL run's
checkpoints), the reference as the point KL = 0, the Gao et al. RL fit, and the report section."""

from __future__ import annotations

import json
import shutil

import torch

from prefloop.eval.cli import main


def perturbed_copies(policy, tmp_path, scales):
    """Copies of the policy with Gaussian noise of growing scale on every weight: further and further from it,
    like the checkpoints of a run drifting from its reference. Layouts: a model dir, a recipe output (model/),
    and a resumable checkpoint (checkpoint/policy/)."""
    from prefloop.models import load_causal_lm, load_tokenizer

    tok = load_tokenizer(str(policy))
    dirs = []
    for i, s in enumerate(scales):
        model = load_causal_lm(str(policy), tok)
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * s)
        root = tmp_path / f"step{i + 1}"
        d = [root, root / "model", root / "checkpoint" / "policy"][i % 3]
        model.save_pretrained(d)
        tok.save_pretrained(d)
        dirs.append(root)
    return dirs


def test_checkpoints_kl_grows_and_report_plots_it(world_and_policy, reward_dir, tmp_path):
    world, policy = world_and_policy
    dirs = perturbed_copies(policy, tmp_path, [0.01, 0.05, 0.2])
    out = tmp_path / "eval"
    rc = main(["checkpoints", "--policies", *map(str, dirs), "--reference", str(policy), "--reference-name", "sft",
               "--reward-model", str(reward_dir), "--world", str(world), "--prompts",
               str(world / "prompts_heldout.jsonl"), "--num-prompts", "12", "--k", "2", "--max-new-tokens", "8",
               "--out", str(out)])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["kind"] == "eval-checkpoints"
    pts = m["checkpoints"]["points"]
    assert [p["label"] for p in pts] == ["sft", "step1", "step2", "step3"]
    assert pts[0]["kl"] == 0.0 and all(p["gold"] is not None and p["proxy"] is not None for p in pts)
    kl3 = [p["kl_k3"] for p in pts]
    assert kl3[3] > kl3[1] > 0  # more noise, further from the reference
    fit = m["checkpoints"]["fit_gold"]
    assert fit["form"] == "rl" and abs(fit["r0"] - pts[0]["gold"]) < 1e-12  # anchored at the reference
    assert m["checkpoints"]["peak_gold"]["gold"] == max(p["gold"] for p in pts)
    html = (out / "report.html").read_text()
    assert "RL over-optimisation over checkpoints" in html and "data:image/png;base64," in html
    assert (out / "checkpoints_overoptimisation.png").stat().st_size > 1000
    assert "| step3 |" in (out / "report.md").read_text()


def test_checkpoints_bad_directory_is_one_line(world_and_policy, tmp_path, capsys):
    world, policy = world_and_policy
    empty = tmp_path / "empty"
    empty.mkdir()
    for target, msg in ((tmp_path / "missing", "not found"), (empty, "no config.json")):
        rc = main(["checkpoints", "--policies", str(target), "--reference", str(policy), "--reward-model",
                   str(policy), "--prompts", str(world / "prompts_heldout.jsonl"), "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: ") and str(target) in err and msg in err, err
    shutil.copytree(policy, tmp_path / "a")
    rc = main(["checkpoints", "--policies", str(tmp_path / "a"), str(policy), "--labels", "only-one", "--reference",
               str(policy), "--reward-model", str(policy), "--prompts", str(world / "prompts_heldout.jsonl"),
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "--labels" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
