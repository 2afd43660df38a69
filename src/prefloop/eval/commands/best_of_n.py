"""`prefloop eval best-of-n`: best-of-n over-optimisation curves against the exact KL, with the Gao et al. fit."""

from __future__ import annotations

from pathlib import Path

from prefloop.errors import ConfigError, require
from prefloop.models import load_causal_lm, load_tokenizer
from prefloop.models.scoring import score_texts
from prefloop.runtime import seed_everything
from prefloop.runtime.seeding import EVAL_SEED_OFFSET

from ..overopt import best_of_n_curve, best_of_n_expectation, fit_bon, peak
from ..sampling import sample_policy
from ..stages import write_samples
from ..stats import cluster_mean
from .common import check_world_prompts, finish, load_rm, load_world_dir, read_prompt_texts, sampling


def eval_best_of_n(cfg) -> dict:
    """Best-of-n under the reward model for n = 1..N from N samples per prompt (unbiased estimator), proxy
    and gold reward against KL_bon = log n - (n - 1)/n, the Gao et al. fit and the observed gold peak."""
    require(cfg, "model", "prompts", "reward_model")
    if cfg.n < 2:
        raise ConfigError("--n must be >= 2")
    seed_everything(cfg.seed)
    tok = load_tokenizer(cfg.model)
    policy = load_causal_lm(cfg.model, tok).eval()
    world = load_world_dir(cfg.world)
    prompts = read_prompt_texts(cfg.prompts, tok, cfg.num_prompts)
    if world is not None:
        check_world_prompts(world, prompts, cfg.prompts)
    rm, rm_tok = load_rm(cfg.reward_model)
    s = sample_policy(policy, tok, prompts, cfg.n, sampling(cfg, tok), seed=cfg.seed + EVAL_SEED_OFFSET,
                      batch_size=cfg.batch_size)
    flat = score_texts(rm, rm_tok, [p for p in prompts for _ in range(cfg.n)], s.flat("responses"))
    proxy = [flat[i * cfg.n:(i + 1) * cfg.n] for i in range(len(prompts))]
    gold = ([[world.gold.score(p, r) for r in rs] for p, rs in zip(prompts, s.responses)]
            if world is not None else None)
    curve = best_of_n_curve(proxy, gold)
    add_curve_intervals(curve, proxy, gold, cfg.seed)
    d = [r["d"] for r in curve]
    bon = {"curve": curve, "n_max": cfg.n, "prompts": len(prompts),
           "fit_proxy": fit_bon(d, [r["proxy"] for r in curve])}
    if gold is not None:
        bon["fit_gold"] = fit_bon(d, [r["gold"] for r in curve])
        pk = peak([r["kl"] for r in curve], [r["gold"] for r in curve])
        bon["peak_gold"] = {"n": curve[pk["index"]]["n"], "kl": pk["x"], "gold": pk["y"]}
    metrics = {"kind": "eval-best-of-n", "best_of_n": bon,
               "settings": {"n": cfg.n, "temperature": cfg.temperature, "max_new_tokens": cfg.max_new_tokens,
                            "seed": cfg.seed},
               "inputs": {"model": cfg.model, "reward_model": cfg.reward_model,
                          "world": str(cfg.world) if cfg.world else None}}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_samples(out / "samples.jsonl", {"policy": s}, {"policy": gold or []}, {"policy": proxy})
    finish(out, metrics)
    return metrics


def add_curve_intervals(curve: list[dict], proxy: list[list[float]], gold: list[list[float]] | None,
                        seed: int = 0) -> None:
    """A 95% interval over prompts on every point of a best-of-n curve ("proxy_ci", "gold_ci")."""
    for row in curve:
        n = row["n"]
        iv = cluster_mean([[best_of_n_expectation(p, n)] for p in proxy if len(p) >= n], seed=seed)
        row["proxy_ci"] = [iv["ci_low"], iv["ci_high"]]
        if gold is not None:
            iv = cluster_mean([[best_of_n_expectation(g, n, key=p)] for p, g in zip(proxy, gold) if len(p) >= n],
                              seed=seed)
            row["gold_ci"] = [iv["ci_low"], iv["ci_high"]]
