"""`prefloop eval reward`: a reward model on held-out comparisons."""

from __future__ import annotations

from pathlib import Path

from prefloop.data import encode_pair, read_comparisons
from prefloop.errors import require
from prefloop.models import RewardScorer
from prefloop.models.scoring import score_pairs

from ..compare import pairwise_accuracy
from ..reward_metrics import reward_model_metrics
from ..sampling import mean
from .common import finish, load_rm, load_world_dir


def eval_reward(cfg) -> dict:
    """Accuracy (ties wrong), Bradley-Terry calibration and accuracy per pool on held-out comparisons;
    with gold scores (meta.gold_chosen / gold_rejected, or --world), agreement with the gold preference."""
    require(cfg, "model", "data")
    recs = read_comparisons(cfg.data)
    rm, tok = load_rm(cfg.model)
    c, r = score_pairs(RewardScorer(rm), [encode_pair(tok, x, cfg.max_length) for x in recs], tok.pad_token_id,
                       "cpu", cfg.batch_size)
    chosen, rejected = c.tolist(), r.tolist()
    m = reward_model_metrics(chosen, rejected, [x.pool for x in recs], cfg.bins)
    gold = gold_pairs(recs, load_world_dir(cfg.world))
    if gold is not None:
        m.update(gold_agreement(chosen, rejected, gold))
        keep = [g for g in gold if g[0] != g[1]]
        m["annotator_gold_agreement"] = pairwise_accuracy([g[0] for g in keep], [g[1] for g in keep])
    metrics = {"kind": "eval-reward", "reward_model": m,
               "inputs": {"model": cfg.model, "data": str(cfg.data)}}
    finish(Path(cfg.out), metrics)
    return metrics


def gold_pairs(recs: list, world) -> list[tuple[float, float]] | None:
    """(gold of chosen, gold of rejected) per comparison: from the world's judge, else from meta.gold_*."""
    if world is not None:
        return [(world.gold.score(x.prompt, x.chosen), world.gold.score(x.prompt, x.rejected)) for x in recs]
    metas = [x.meta or {} for x in recs]
    if metas and all("gold_chosen" in m and "gold_rejected" in m for m in metas):
        return [(float(m["gold_chosen"]), float(m["gold_rejected"])) for m in metas]
    return None


def gold_agreement(chosen: list[float], rejected: list[float], gold: list[tuple[float, float]]) -> dict:
    """How often the reward model orders a pair as the gold judge does, over the pairs gold does not tie."""
    keep = [i for i, (gc, gr) in enumerate(gold) if gc != gr]
    return {"gold_accuracy": mean([float((chosen[i] > rejected[i]) == (gold[i][0] > gold[i][1])) for i in keep]),
            "gold_pairs": len(keep)}


def evaluate_reward_model(rm_dir: Path, heldout: Path, max_length: int = 512) -> dict:
    """The demo's and the loop's reward-model row: accuracy on held-out annotator labels and, where the
    comparisons carry meta.gold_chosen / gold_rejected, agreement with the gold preference."""
    rm, tok = load_rm(str(rm_dir))
    recs = read_comparisons(heldout)
    c, r = score_pairs(RewardScorer(rm), [encode_pair(tok, x, max_length) for x in recs], tok.pad_token_id, "cpu")
    chosen, rejected = c.tolist(), r.tolist()
    out = {"heldout_accuracy": pairwise_accuracy(chosen, rejected)}
    gold = gold_pairs(recs, None)
    return {**out, **gold_agreement(chosen, rejected, gold)} if gold is not None else out
