"""Per-prompt values of every stage metric, and from them the intervals, stage-to-stage differences, win rates
(raw and length-controlled) and regressions that metrics.json and the report carry (statistics in `stats`).

A stage's metrics are collected as {metric: [prompt][values]}: one value per sample for means and rates
(gold reward, KL, made-up facts...), one value per prompt for measures of a prompt's K samples together
(self-BLEU and distinct-2 per prompt). Red-team metrics are indexed by red-team prompt.
"""

from __future__ import annotations

from .diversity import distinct_n, self_bleu, words
from .stats import cluster_mean, find_regressions, length_controlled_win_rate, paired_difference, win_values

# +1: higher is better; -1: lower is better. KL, length and token entropy have no better direction.
BETTER = {"gold_reward_mean": 1, "reward_model_mean": 1, "gold_win_rate_vs_sft": 1, "win_rate_vs_ref": 1,
          "hallucination_rate": -1, "needless_refusal_rate": -1, "harmful_compliance_rate": -1,
          "redteam_bad_answer_rate": -1, "redteam_needless_refusal_rate": -1, "no_eos_fraction": -1,
          "per_input/distinct_2": 1, "per_input/self_bleu": -1}
# Safety first in the regression box: a policy that complies with harmful requests is worse whatever it gains.
FIRST = ("redteam_bad_answer_rate", "harmful_compliance_rate", "hallucination_rate", "gold_reward_mean",
         "gold_win_rate_vs_sft", "win_rate_vs_ref", "redteam_needless_refusal_rate", "needless_refusal_rate")


def sample_values(s, gold: list[list[float]] | None = None, details: list[list[dict]] | None = None,
                  rm_scores: list[list[float]] | None = None) -> dict[str, list]:
    """{metric: [prompt][values]} of one stage's PolicySamples on the evaluation prompts; `gold` and `details`
    ([N][K], from the world's gold judge) and `rm_scores` ([N][K]) where there are such judges. KL to the
    reference policy (SFT in the demo and the loop) is `kl_to_ref` (k1) and `kl_to_ref_k3`."""
    out = {"mean_response_tokens": [[float(x) for x in row] for row in s.lengths],
           "no_eos_fraction": [[float(not e) for e in row] for row in s.ended],
           "per_input/self_bleu": [[self_bleu(row)] if len(row) >= 2 else [] for row in s.responses],
           "per_input/distinct_2": [[distinct_n(row, 2)] if len(row) >= 2 else [] for row in s.responses]}
    if s.entropy:
        out["entropy"] = [list(r) for r in s.entropy]
    if s.kl_k1:
        out["kl_to_ref"] = [list(r) for r in s.kl_k1]
        out["kl_to_ref_k3"] = [list(r) for r in s.kl_k3]
    if rm_scores:
        out["reward_model_mean"] = [list(r) for r in rm_scores]
    if gold is not None:
        out["gold_reward_mean"] = [list(r) for r in gold]
    if details is not None:
        out["hallucination_rate"] = [[float(bool(d.get("hallucinated"))) for d in row if d.get("family") == "facts"]
                                     for row in details]
        out["needless_refusal_rate"] = [[float(bool(d.get("refused"))) for d in row if not d.get("should_refuse")]
                                        for row in details]
        out["harmful_compliance_rate"] = [[float(bool(d.get("complied_harmful"))) for d in row
                                           if d.get("should_refuse")] for row in details]
    return out


def redteam_values(items, responses: list[list[str]], scorer) -> dict[str, list[list[float]]]:
    """Per red-team prompt, whether each response is a bad answer (prompts that must be refused) or a needless
    refusal (benign lookalikes); the other metric has no value there."""
    from prefloop.world.redteam import score_redteam

    bad, needless = [], []
    for item, row in zip(items, responses):
        key = "bad_answer_rate" if item.should_refuse else "needless_refusal_rate"
        vals = [float(score_redteam([item], [[r]], scorer)[key]) for r in row]
        bad.append(vals if item.should_refuse else [])
        needless.append([] if item.should_refuse else vals)
    return {"redteam_bad_answer_rate": bad, "redteam_needless_refusal_rate": needless}


def length_diffs(a_responses: list[list[str]], b_responses: list[list[str]]) -> list[list[float]]:
    """Words of sample k of A minus words of sample k of B, per prompt."""
    return [[float(len(words(x)) - len(words(y))) for x, y in zip(ra, rb)] for ra, rb in zip(a_responses, b_responses)]


def judged_comparison(scores_a, scores_b, a_responses, b_responses, judge: str, seed: int = 0) -> dict:
    """Raw and length-controlled win rate of A over B under a judge's scores, with intervals over prompts."""
    wr = length_controlled_win_rate(win_values(scores_a, scores_b), length_diffs(a_responses, b_responses),
                                    seed=seed)
    return {**wr, "judge": judge, "n": wr["comparisons"], "interval": "bootstrap over prompts"}


def summarise(values: dict[str, dict[str, list[list[float]]]], order: list[str], seed: int = 0) -> dict:
    """Intervals of every stage metric, paired differences of consecutive stages (later - earlier) and the
    regressions among them. values: {stage: {metric: [prompt][values]}} with stages in pipeline order."""
    intervals = {st: {m: cluster_mean(v, seed=seed) for m, v in values[st].items()} for st in order}
    differences = {}
    for prev, cur in zip(order, order[1:]):
        shared = [m for m in values[cur] if m in values[prev]]
        differences[f"{cur} - {prev}"] = {m: paired_difference(values[cur][m], values[prev][m], seed=seed)
                                          for m in shared}
    return {"intervals": intervals, "differences": differences,
            "regressions": find_regressions(differences, BETTER, FIRST)}


def worst_examples(prompts, responses, scores, n: int = 3) -> list[dict]:
    """The n lowest-scoring samples (prompt, response, score) of a stage."""
    flat = [(sc, p, r) for p, rs, ss in zip(prompts, responses, scores) for r, sc in zip(rs, ss)]
    return [{"prompt": p, "response": r, "score": sc} for sc, p, r in sorted(flat, key=lambda t: t[0])[:n]]


def redteam_failures(items, responses: list[list[str]], values: list[list[float]], n: int = 4) -> list[dict]:
    """Up to n responses to must-refuse red-team prompts that were not cleanly refused."""
    out = [{"prompt": item.prompt, "response": r, "frame": item.wrapper or "(none)"}
           for item, row, vals in zip(items, responses, values) for r, v in zip(row, vals) if v > 0]
    return out[:n]
