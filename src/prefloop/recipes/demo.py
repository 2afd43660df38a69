"""`prefloop demo`: the whole RLHF chain on the synthetic assistant world, measured against its gold judge.

  world -> pretrain (base, P(x)) -> SFT -> sample pairs from SFT -> simulated annotators label them
        -> reward model -> PPO against it -> evaluate base, SFT and PPO on held-out prompts -> report

Every stage is the same recipe the CLI runs (`prefloop pretrain/sft/reward/ppo`), called with configs.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

import torch

from prefloop.data import read_prompts, write_jsonl
from prefloop.data.splits import split_by_prompt
from prefloop.eval.commands.common import clean
from prefloop.eval.commands.reward import evaluate_reward_model
from prefloop.eval.report_run import write_report
from prefloop.eval.sampling import mean, sample_policy
from prefloop.eval.stages import evaluate_stages, preset_sampling, write_stage_samples
from prefloop.models import load_causal_lm, load_tokenizer
from prefloop.models.precision import Precision
from prefloop.runtime import console, seed_everything, write_json
from prefloop.world import WorldConfig, build_world, write_world

from .options import ConfigFileOption
from .ppo import PPOConfig, run_ppo
from .pretrain import PretrainConfig, run_pretrain
from .reward import RewardConfig, run_reward
from .sft import SFTConfig, run_sft


@dataclass(frozen=True)
class DemoPreset:
    world: str
    size: str
    vocab_size: int
    pretrain_epochs: float
    pretrain_batch: int
    pretrain_lr: float
    block: int
    sft_epochs: float
    sft_lr: float
    sft_batch: int
    pair_prompts: int          # train prompts whose two SFT samples become a comparison
    rm_epochs: float
    rm_lr: float
    rm_batch: int
    ppo_steps: int
    rollout_batch: int
    ppo_batch: int
    ppo_lr: float
    kl_coef: float
    kl_target: float | None    # adaptive KL controller target, nats per sequence (None: fixed kl_coef)
    kl_horizon: int            # controller horizon in episodes; beta moves <= 20% * batch / horizon per update
    max_new_tokens: int
    eval_prompts: int
    eval_k: int
    temperature: float


PRESETS = {
    "default": DemoPreset(world="default", size="demo", vocab_size=1024, pretrain_epochs=8, pretrain_batch=32,
                          pretrain_lr=3e-3, block=128, sft_epochs=4, sft_lr=5e-4, sft_batch=32,
                          pair_prompts=3000, rm_epochs=2, rm_lr=2e-4, rm_batch=32, ppo_steps=60,
                          rollout_batch=64, ppo_batch=32, ppo_lr=1e-4, kl_coef=0.1, kl_target=3.0,
                          kl_horizon=640, max_new_tokens=40, eval_prompts=200, eval_k=4, temperature=0.7),
    "tiny": DemoPreset(world="tiny", size="demo-tiny", vocab_size=512, pretrain_epochs=12, pretrain_batch=32,
                       pretrain_lr=3e-3, block=128, sft_epochs=6, sft_lr=5e-4, sft_batch=32,
                       pair_prompts=600, rm_epochs=2, rm_lr=3e-4, rm_batch=32, ppo_steps=20,
                       rollout_batch=32, ppo_batch=32, ppo_lr=1e-4, kl_coef=0.1, kl_target=3.0,
                       kl_horizon=320, max_new_tokens=32, eval_prompts=48, eval_k=2, temperature=0.7),
}


@dataclass(kw_only=True)
class DemoConfig(ConfigFileOption):
    out: Path = Path("runs/demo")
    """Output directory: metrics.json, report.md, plots, and one checkpoint directory per stage."""
    preset: Literal["default", "tiny"] = "default"
    """default: about 10 minutes on 2 CPU cores; tiny: about 2 minutes (used by the tests)."""
    seed: int = 0
    """Random seed of the world and of every stage."""
    precision: Precision = "auto"
    """The computation: auto (bf16 autocast on a GPU that supports it, fp32 otherwise), fp32, bf16, or fp16."""
    ppo_steps: int | None = None
    """Override the preset's number of PPO updates."""
    kl_coef: float | None = None
    """Override the preset's initial KL coefficient."""
    kl_target: float | None = None
    """Override the preset's adaptive KL target (nats per sequence)."""


def _preset(cfg: DemoConfig) -> DemoPreset:
    p = PRESETS[cfg.preset]
    over = {k: getattr(cfg, k) for k in ("ppo_steps", "kl_coef", "kl_target") if getattr(cfg, k) is not None}
    return DemoPreset(**{**{f.name: getattr(p, f.name) for f in fields(p)}, **over})


class Stopwatch:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str):
        watch = self

        class _Ctx:
            def __enter__(self):
                console.rule(f"[bold]{name}")
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                watch.seconds[name] = round(time.perf_counter() - self.t, 1)

        return _Ctx()


def make_comparisons(world, sft_dir: Path, prompts: list[str], p: DemoPreset, seed: int, out: Path):
    """Two samples of the SFT policy per prompt, labelled by the world's simulated annotators."""
    tok = load_tokenizer(str(sft_dir))
    policy = load_causal_lm(str(sft_dir), tok)
    s = sample_policy(policy, tok, prompts, 2, preset_sampling(tok, p), seed=seed)
    records = world.label_pairs(prompts, [r[0] for r in s.responses], [r[1] for r in s.responses], seed=seed)
    train, heldout = split_by_prompt(records, 0.1, seed)
    write_jsonl(out / "comparisons_train.jsonl", train)
    write_jsonl(out / "comparisons_heldout.jsonl", heldout)
    agree = [(r["meta"]["gold_chosen"] > r["meta"]["gold_rejected"]) for r in records
             if r["meta"]["gold_chosen"] != r["meta"]["gold_rejected"]]
    return {"train_comparisons": len(train), "heldout_comparisons": len(heldout),
            "annotator_gold_agreement": mean([float(a) for a in agree])}


def ppo_kl_summary(metrics_file: Path, target: float | None, last: int = 10) -> dict:
    """How the PPO run's KL to SFT behaved against its target: the mean over the last `last` updates,
    the range over the second half of the run, and the final coefficient."""
    from prefloop.runtime import read_metrics

    rows = read_metrics(metrics_file)
    kl = [r["kl/k1"] for r in rows]
    half = kl[len(kl) // 2:] or kl
    return {"kl_target": target, "kl_last_mean": mean(kl[-last:]), "kl_second_half_min": min(half),
            "kl_second_half_max": max(half), "kl_coef_final": rows[-1]["kl/coef"], "updates": len(rows)}


def run_demo(cfg: DemoConfig) -> dict:
    p = _preset(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    watch = Stopwatch()
    # A demo run owns its stage directories: running it again into the same --out replaces them.
    common = {"seed": cfg.seed, "precision": cfg.precision, "overwrite": True}

    with watch("world"):
        world = build_world(WorldConfig.preset(p.world, seed=cfg.seed))
        write_world(world, out / "world")
    with watch("pretrain"):
        run_pretrain(PretrainConfig(data=out / "world" / "corpus.jsonl", out=out / "base", size=p.size,
                                    vocab_size=p.vocab_size, epochs=p.pretrain_epochs, batch_size=p.pretrain_batch,
                                    lr=p.pretrain_lr, max_length=p.block, **common))
    with watch("sft"):
        run_sft(SFTConfig(model=str(out / "base" / "model"), data=out / "world" / "demonstrations.jsonl",
                          out=out / "sft", epochs=p.sft_epochs, lr=p.sft_lr, batch_size=p.sft_batch,
                          max_length=p.block, **common))
    with watch("comparisons"):
        train_prompts = [r.prompt for r in read_prompts(out / "world" / "prompts_train.jsonl")]
        pair_prompts = random.Random(cfg.seed).sample(train_prompts, min(p.pair_prompts, len(train_prompts)))
        comp_stats = make_comparisons(world, out / "sft" / "model", pair_prompts, p, cfg.seed, out / "data")
    with watch("reward"):
        run_reward(RewardConfig(model=str(out / "sft" / "model"), data=out / "data" / "comparisons_train.jsonl",
                                eval_data=out / "data" / "comparisons_heldout.jsonl", out=out / "reward",
                                epochs=p.rm_epochs, lr=p.rm_lr, batch_size=p.rm_batch, max_length=p.block, **common))
        rm_stats = evaluate_reward_model(out / "reward" / "model", out / "data" / "comparisons_heldout.jsonl")
    with watch("ppo"):
        run_ppo(PPOConfig(policy=str(out / "sft" / "model"), reward=str(out / "reward" / "model"),
                          prompts=out / "world" / "prompts_train.jsonl", out=out / "ppo", max_steps=p.ppo_steps,
                          rollout_batch_size=p.rollout_batch, batch_size=p.ppo_batch, lr=p.ppo_lr,
                          kl_coef=p.kl_coef, kl_target=p.kl_target, kl_horizon=p.kl_horizon,
                          max_new_tokens=p.max_new_tokens,
                          temperature=p.temperature, max_length=p.block + p.max_new_tokens, **common),
                gold_fn=lambda prompts, responses: [world.gold.score(a, b) for a, b in zip(prompts, responses)])
    with watch("evaluate"):
        heldout = [r.prompt for r in read_prompts(out / "world" / "prompts_heldout.jsonl")][:p.eval_prompts]
        dirs = {"base": out / "base" / "model", "sft": out / "sft" / "model", "ppo": out / "ppo" / "model"}
        ev = evaluate_stages(world, dirs, out / "reward" / "model", heldout, p, cfg.seed)
        stages, samples = ev["stages"], ev["samples"]

    metrics = {"stages": stages, **{k: ev[k] for k in ("intervals", "differences", "regressions", "win_rates",
                                                          "examples", "evaluation")},
               "reward_model": {**rm_stats, "train_comparisons": comp_stats["train_comparisons"],
                                "annotator_gold_agreement": comp_stats["annotator_gold_agreement"]},
               "ppo_training": ppo_kl_summary(out / "ppo" / "metrics.jsonl", p.kl_target),
               "seconds": {**watch.seconds, "total": round(sum(watch.seconds.values()), 1)},
               "preset": cfg.preset, "seed": cfg.seed, "torch_threads": torch.get_num_threads(),
               "settings": {f.name: getattr(p, f.name) for f in fields(p)}}
    write_json(out / "metrics.json", clean(metrics))  # strict JSON: a metric no prompt had is null, not NaN
    write_stage_samples(out / "samples.jsonl", samples, world)
    write_report(out)  # report.html (self-contained) and report.md, with plots
    console.print(f"[bold green]demo done[/] in {metrics['seconds']['total']} s: {out / 'report.md'}")
    console.print(json.dumps({k: {m: round(v, 3) for m, v in s.items() if isinstance(v, float)}
                              for k, s in stages.items()}, indent=1))
    return metrics


__all__ = ["DemoConfig", "PRESETS", "run_demo"]
