"""RL over-optimisation measured on saved checkpoints: `prefloop eval checkpoints`.

The PPO log already holds the gold and proxy reward of each training batch against the batch KL (the report's
"RL over-optimisation" section). Those are in-training numbers on training prompts. This evaluates a list of
policy directories (checkpoints of one RL run, in training order) on the same held-out prompts instead: for
each, the reward-model (proxy) score, the gold reward (with a world) and the per-sequence KL to the reference
(k1, k3, estimated on the checkpoint's own samples), with the reference itself as the point d = 0. Gold and
proxy are fitted with the RL form of Gao et al. 2022 (eq. 2), R(d) = R(0) + d (alpha - beta log d),
d = sqrt(KL), R(0) the reference's reward, and the observed gold peak is marked.

A directory may be a Hugging Face model directory, a recipe output (its `model/`), or a resumable checkpoint
(`checkpoint/policy/`); PPO's `--save-every N` keeps only the latest checkpoint, so save the ones to compare
(e.g. copy OUT/checkpoint/policy after each save, or run PPO to several --max-steps).
"""

from __future__ import annotations

import math
from pathlib import Path

from prefloop.errors import ConfigError, DataError, require
from prefloop.models import load_causal_lm, load_tokenizer
from prefloop.models.scoring import score_texts
from prefloop.runtime import seed_everything
from prefloop.runtime.seeding import EVAL_SEED_OFFSET

from ..overopt import fit_rl, peak
from ..sampling import mean, sample_policy
from ..stages import stage_means, stage_stats, word_vocab, write_samples
from .common import check_world_prompts, finish, load_rm, load_world_dir, read_prompt_texts, sampling


def resolve_policy_dir(path: Path) -> Path:
    """The model directory inside `path`: itself, `path/model`, or `path/checkpoint/policy`."""
    for cand in (path, path / "model", path / "checkpoint" / "policy"):
        if (cand / "config.json").exists():
            return cand
    if not path.exists():
        raise DataError.whole(path, "not found (expected a policy directory)")
    raise DataError.whole(path, "no config.json here, in model/ or in checkpoint/policy/ (not a policy directory)")


def _labels(paths: list[Path], given: list[str] | None) -> list[str]:
    if given:
        if len(given) != len(paths):
            raise ConfigError(f"--labels needs one label per --policies directory ({len(paths)}), got {len(given)}")
        labels = list(given)
    else:
        labels = [p.parent.name if p.name in ("model", "policy") else p.name for p in paths]
        if len(set(labels)) != len(labels):
            labels = [f"{i + 1}:{x}" for i, x in enumerate(labels)]
    if len(set(labels)) != len(labels):
        raise ConfigError("--labels must be distinct")
    return labels


def fit_points(points: list[dict], key: str) -> dict | None:
    """Gao et al. RL-form fit of points[key] against d = sqrt(KL), anchored at the reference (points[0]);
    None when fewer than two checkpoints or the fit is singular."""
    if len(points) < 3 or any(p.get(key) is None for p in points):
        return None
    d = [math.sqrt(max(0.0, p["kl"])) for p in points]
    try:
        return fit_rl(d, [p[key] for p in points], r0=points[0][key])
    except ValueError:
        return None


def eval_checkpoints(cfg) -> dict:
    """Each checkpoint (and the reference, d = 0) on the same prompts: proxy, gold, KL; the fits and the peak."""
    require(cfg, "policies", "reference", "prompts", "reward_model")
    paths = [resolve_policy_dir(Path(p)) for p in cfg.policies]
    ref_dir = resolve_policy_dir(Path(cfg.reference))
    labels = _labels([Path(p) for p in cfg.policies], cfg.labels)
    if cfg.reference_name in labels:
        raise ConfigError(f"--reference-name {cfg.reference_name!r} is also a checkpoint label")
    seed_everything(cfg.seed)
    tok = load_tokenizer(str(ref_dir))
    reference = load_causal_lm(str(ref_dir), tok).eval()
    world = load_world_dir(cfg.world)
    prompts = read_prompt_texts(cfg.prompts, tok, cfg.num_prompts)
    if world is not None:
        check_world_prompts(world, prompts, cfg.prompts)
    rm, rm_tok = load_rm(cfg.reward_model)
    scfg = sampling(cfg, tok)
    samples, gold, proxy, rows, values, points = {}, {}, {}, {}, {}, []
    vocab = None
    for label, d in [(cfg.reference_name, ref_dir), *zip(labels, paths)]:
        policy = reference if d == ref_dir else load_causal_lm(str(d), tok).eval()
        if policy.get_input_embeddings().weight.shape != reference.get_input_embeddings().weight.shape:
            raise ConfigError(f"{d}: uses another vocabulary than --reference (checkpoints of one run share it)")
        s = sample_policy(policy, tok, prompts, cfg.k, scfg, reference=None if d == ref_dir else reference,
                          seed=cfg.seed + EVAL_SEED_OFFSET, entropy=True, batch_size=cfg.batch_size)
        flat = score_texts(rm, rm_tok, [p for p in prompts for _ in range(cfg.k)], s.flat("responses"))
        proxy[label] = [flat[i * cfg.k:(i + 1) * cfg.k] for i in range(len(prompts))]
        vocab = vocab or word_vocab(world, prompts, s.responses)
        rows[label], gold[label], values[label] = stage_stats(s, world, proxy[label], vocab, reference=d == ref_dir)
        samples[label] = s
        kl = 0.0 if d == ref_dir else mean(s.flat("kl_k1"))
        points.append({"label": label, "path": str(d), "kl": kl,
                       "kl_k3": 0.0 if d == ref_dir else mean(s.flat("kl_k3")),
                       "proxy": mean([x for r in proxy[label] for x in r]),
                       "gold": mean([x for r in gold[label] for x in r]) if world is not None else None})
    stages, summary = stage_means(rows, values, seed=cfg.seed)  # intervals, checkpoint-to-checkpoint differences
    ck = {"points": points, "prompts": len(prompts), "k": cfg.k,
          "fit_proxy": fit_points(points, "proxy"), "fit_gold": fit_points(points, "gold")}
    if world is not None:
        pk = peak([p["kl"] for p in points], [p["gold"] for p in points])
        ck["peak_gold"] = {"label": points[pk["index"]]["label"], "kl": pk["x"], "gold": pk["y"]}
    metrics = {"kind": "eval-checkpoints", "checkpoints": ck, "stages": stages, **summary,
               "evaluation": {"prompts": len(prompts), "samples_per_prompt": cfg.k, "level": 0.95},
               "settings": {"k": cfg.k, "prompts": len(prompts), "temperature": cfg.temperature,
                            "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed},
               "inputs": {"reference": str(ref_dir), "reward_model": cfg.reward_model,
                          "world": str(cfg.world) if cfg.world else None}}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_samples(out / "samples.jsonl", samples, gold, proxy)
    finish(out, metrics)
    return metrics


__all__ = ["eval_checkpoints", "fit_points", "resolve_policy_dir"]
