"""One evaluation of policies ("stages") on the same prompts, for everything that evaluates them: `prefloop eval
policy` and `eval checkpoints`, the demo, the loop and the benchmarks.

`stage_stats` turns one stage's samples into its corpus-level diversity, its gold scores and the per-prompt
values of every mean and rate; `stage_means` turns the stages' values into the metric means of metrics.json with
intervals, paired differences and regressions (`intervals.summarise`). KL to the reference policy is always
`kl_to_ref` / `kl_to_ref_k3`; the reference itself spends none (0 by definition: measuring it prints noise).
`evaluate_stages` is the whole evaluation on the synthetic world (gold judge, reward model, red team).
"""

from __future__ import annotations

import os
from pathlib import Path

from prefloop.runtime.seeding import EVAL_SEED_OFFSET, SECOND_EVAL_SEED_OFFSET

from .diversity import distinct_n, diversity_report, words
from .intervals import redteam_failures, redteam_values, sample_values, summarise, worst_examples
from .sampling import PolicySamples, mean, sample_policy

KL_KEYS = ("kl_to_ref", "kl_to_ref_k3")


def world_rates(details: list[dict]) -> dict[str, float]:
    """Rates the gold judge can see: made-up facts on fact questions, needless refusals of benign prompts,
    harmful compliance on prompts that must be refused."""
    facts = [d for d in details if d.get("family") == "facts"]
    benign = [d for d in details if not d.get("should_refuse")]
    harmful = [d for d in details if d.get("should_refuse")]
    return {"hallucination_rate": mean([float(bool(d.get("hallucinated"))) for d in facts]),
            "needless_refusal_rate": mean([float(bool(d.get("refused"))) for d in benign]),
            "harmful_compliance_rate": mean([float(bool(d.get("complied_harmful"))) for d in harmful])}


def word_vocab(world, prompts: list[str], responses: list[list[str]]) -> int:
    """V for EAD on words: the words of the world's corpus, else the words of the prompts and samples."""
    texts = world.corpus if world is not None else prompts + [r for rs in responses for r in rs]
    return max(2, len({w for t in texts for w in words(t)}))


def redteam_questions(world) -> list:
    """The held-out questions of the world (requests no training prompt asked) when they include harmful and
    borderline ones, else all its questions."""
    held = list({q.text: q for q in (world.gold.question(p) for p in world.heldout_prompts)}.values())
    return held if {"harmful", "borderline"} <= {q.family for q in held} else world.questions


def stage_stats(s: PolicySamples, world, rm_scores: list[list[float]] | None, vocab: int | None = None, *,
                reference: bool = False) -> tuple[dict, list, dict]:
    """One stage's corpus-level diversity (no interval), its gold scores ([N][K], empty without a world) and
    its per-prompt values of every mean and rate (`intervals.sample_values`). `reference`: this stage is the
    KL reference, whose KL to itself is 0."""
    flat = s.flat("responses")
    row = {**diversity_report(s.responses, vocab), "distinct_1": distinct_n(flat, 1), "distinct_2": distinct_n(flat, 2)}
    gold, details = None, None
    if world is not None:
        gold = [[world.gold.score(p, r) for r in rs] for p, rs in zip(s.prompts, s.responses)]
        details = [[world.gold.details(p, r) for r in rs] for p, rs in zip(s.prompts, s.responses)]
    values = sample_values(s, gold, details, rm_scores)
    if reference:
        for key in KL_KEYS:
            values[key] = [[0.0] * len(row) for row in s.responses]
    return row, gold or [], values


def stage_means(rows: dict[str, dict], values: dict[str, dict], seed: int = 0) -> tuple[dict, dict]:
    """({stage: {metric: mean}}, summary) from the stages' rows and per-prompt values, stages in pipeline order:
    every mean comes from the per-prompt values (so it matches its interval); `self_bleu` is the per-input one."""
    summary = summarise(values, list(values), seed=seed)
    stages = {}
    for name in values:
        stages[name] = {**rows[name], **{m: iv["mean"] for m, iv in summary["intervals"][name].items()}}
        stages[name]["self_bleu"] = stages[name]["per_input/self_bleu"]
    return stages, summary


def preset_sampling(tok, settings):
    """The SamplingConfig of a preset's evaluation (`max_new_tokens`, `temperature`; the demo's, the loop's)."""
    from prefloop.rollout import SamplingConfig

    return SamplingConfig(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)


def _world_stage(world, policy, sft, tok, rm, prompts, redteam, settings, seed: int, vocab: int | None):
    """One stage on the held-out and red-team prompts: samples, diversity row, gold, per-prompt values, examples."""
    from prefloop.world.redteam import RedTeamScorer

    scfg = preset_sampling(tok, settings)
    s = sample_policy(policy, tok, prompts, settings.eval_k, scfg, reward_model=rm, seed=seed + EVAL_SEED_OFFSET,
                      reference=None if policy is sft else sft)
    # Red team: jailbreak-framed harmful requests (must be refused), benign lookalikes (must be answered).
    rt = sample_policy(policy, tok, [x.prompt for x in redteam], settings.eval_k, scfg,
                       seed=seed + SECOND_EVAL_SEED_OFFSET)
    row, gold, values = stage_stats(s, world, s.reward_model, vocab, reference=policy is sft)
    values.update(redteam_values(redteam, rt.responses, RedTeamScorer(world.gold)))
    examples = {"worst_gold": worst_examples(prompts, s.responses, gold),
                "redteam_failures": redteam_failures(redteam, rt.responses, values["redteam_bad_answer_rate"])}
    return s, row, gold, values, examples


def evaluate_stages(world, dirs: dict[str, Path], rm_dir: Path, prompts: list[str], settings, seed: int) -> dict:
    """The stages in `dirs` (pipeline order; "sft" among them is the KL reference) on the same held-out prompts of
    the world: metric means with bootstrap intervals over prompts, paired differences of consecutive stages,
    regressions, gold and reward-model win rates against SFT (raw and length-controlled), the worst samples.
    `settings` gives eval_k, max_new_tokens and temperature. "samples" holds {stage: (PolicySamples, gold)}."""
    from prefloop.models import load_causal_lm, load_reward_model, load_tokenizer
    from prefloop.world.redteam import make_redteam

    from .intervals import judged_comparison
    from .stats import win_values

    tok = load_tokenizer(str(dirs["sft"]))
    sft = load_causal_lm(str(dirs["sft"]), tok).eval()
    rm = load_reward_model(str(rm_dir), tok).eval()
    redteam = make_redteam(redteam_questions(world), 32, 32, seed=seed)
    samples, rows, values, examples, vocab = {}, {}, {}, {}, None
    for name, d in dirs.items():
        policy = sft if name == "sft" else load_causal_lm(str(d), tok).eval()
        vocab = vocab or word_vocab(world, prompts, [])
        s, rows[name], gold, values[name], examples[name] = _world_stage(world, policy, sft, tok, rm, prompts,
                                                                         redteam, settings, seed, vocab)
        samples[name] = (s, gold)
    win_rates = {}
    ref_s, ref_gold = samples["sft"]
    for name, (s, gold) in samples.items():
        values[name]["gold_win_rate_vs_sft"] = win_values(gold, ref_gold)
        if name == "sft":
            continue
        win_rates[f"{name} vs sft, gold"] = judged_comparison(gold, ref_gold, s.responses, ref_s.responses, "gold")
        win_rates[f"{name} vs sft, reward model"] = judged_comparison(
            s.reward_model, ref_s.reward_model, s.responses, ref_s.responses, "reward model")
    stages, summary = stage_means(rows, values, seed)
    return {"stages": stages, "samples": samples, "win_rates": win_rates, "examples": examples,
            "evaluation": {"prompts": len(prompts), "samples_per_prompt": settings.eval_k,
                           "redteam_prompts": len(redteam), "level": 0.95}, **summary}


def write_samples(path: Path, samples: dict, gold: dict, rm_scores: dict, world=None) -> None:
    """samples.jsonl: one row per (stage, prompt) with its K responses and their scores (the report's
    side-by-side samples); with a world, the answer its gold judge rates best (`ideal`)."""
    from prefloop.data import write_jsonl

    rows = []
    for name, s in samples.items():
        for i, p in enumerate(s.prompts):
            row = {"stage": name, "prompt": p, "responses": s.responses[i], "ended": s.ended[i]}
            if world is not None:
                row["ideal"] = world.gold.ideal_response(p)
            if gold.get(name):
                row["gold"] = gold[name][i]
            if rm_scores.get(name):
                row["reward_model"] = rm_scores[name][i]
            rows.append(row)
    write_jsonl(path, rows)


def write_stage_samples(path: str | os.PathLike, samples: dict, world=None) -> None:
    """samples.jsonl for the report from `evaluate_stages`' {stage: (PolicySamples, gold[N][K])}; with the world,
    each prompt's gold-best answer too."""
    write_samples(Path(path), {k: s for k, (s, _) in samples.items()}, {k: g for k, (_, g) in samples.items()},
                  {k: [list(r) for r in s.reward_model] for k, (s, _) in samples.items() if s.reward_model}, world)
