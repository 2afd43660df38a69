"""`prefloop eval policy`: a policy (and a reference) on the same prompts, under a named judge, with red teaming."""

from __future__ import annotations

from pathlib import Path

from prefloop.data import read_comparisons
from prefloop.errors import ConfigError, DataError, require
from prefloop.models import load_causal_lm, load_tokenizer
from prefloop.models.scoring import score_texts
from prefloop.runtime import console, seed_everything
from prefloop.runtime.seeding import EVAL_SEED_OFFSET, SECOND_EVAL_SEED_OFFSET

from ..intervals import judged_comparison, redteam_values
from ..judges import judged_win_rate, source_map
from ..sampling import sample_policy
from ..stages import redteam_questions, stage_means, stage_stats, word_vocab, write_samples
from ..stats import win_values
from .common import check_world_prompts, finish, load_rm, load_world_dir, read_prompt_texts, sampling

JUDGE_NAMES = {"gold": "gold", "reward-model": "reward model", "file": "file"}


def choose_judge(cfg) -> str:
    """--judge, or the best judge there is: the world's gold judge, else the reward model, else the judgments
    file; said in the output."""
    if cfg.judge is not None:
        return cfg.judge
    judge = "gold" if cfg.world else "reward-model" if cfg.reward_model else "file" if cfg.judge_file else None
    if judge is None:
        if cfg.reference is not None:
            raise ConfigError("--reference needs a judge: --world (gold), --reward-model or --judge-file")
        return "gold"
    console.print(f"judge: {judge} (the best available; --judge chooses another)")
    return judge


def judge_win_rates(cfg, judge: str, gold: dict, rm: dict, samples: dict) -> dict:
    """Win rate of the policy against the reference, raw and length-controlled, with intervals over prompts:
    under the chosen judge (key "POLICY vs REFERENCE") and under every other judge the run has."""
    name, ref = cfg.name, cfg.reference_name
    key = f"{name} vs {ref}"
    out = {}
    if judge == "file" or cfg.judge_file:  # judgments of earlier samples (meta labels), or of these samples (texts)
        recs = read_comparisons(cfg.judge_file)
        src = source_map({k: (s.prompts, s.responses) for k, s in samples.items()})
        out[key if judge == "file" else f"{key}, file"] = judged_win_rate(recs, name, ref, src, path=cfg.judge_file)
    if ref not in samples:
        return out
    for j, scores in (("gold", gold), ("reward-model", rm)):
        if scores.get(name) and scores.get(ref):
            wr = judged_comparison(scores[name], scores[ref], samples[name].responses, samples[ref].responses,
                                   j, seed=cfg.seed)
            out[key if j == judge else f"{key}, {JUDGE_NAMES[j]}"] = wr
    return dict(sorted(out.items(), key=lambda kv: kv[0] != key))


def check_policy_cfg(cfg) -> str:
    """Checks the options; returns the judge."""
    require(cfg, "model", "prompts")
    judge = choose_judge(cfg)
    needs = {"gold": ("world", "--world"), "reward-model": ("reward_model", "--reward-model"),
             "file": ("judge_file", "--judge-file")}
    attr, opt = needs[judge]
    if getattr(cfg, attr) is None and (cfg.reference is not None or judge == "file"):
        raise ConfigError(f"--judge {judge} needs {opt}")
    if cfg.name == cfg.reference_name:
        raise ConfigError("--name and --reference-name must differ")
    if cfg.k < 1 or cfg.max_new_tokens < 1:
        raise ConfigError("--k and --max-new-tokens must be >= 1")
    if cfg.redteam_scorer and not cfg.redteam_file:
        raise ConfigError("--redteam-scorer needs --redteam-file")
    return judge


def eval_policy(cfg) -> dict:
    judge = check_policy_cfg(cfg)
    seed_everything(cfg.seed)
    tok = load_tokenizer(cfg.model)
    policy = load_causal_lm(cfg.model, tok).eval()
    models = {cfg.name: policy}
    if cfg.reference:
        models = {cfg.reference_name: load_causal_lm(cfg.reference, tok).eval(), **models}
        if models[cfg.reference_name].get_input_embeddings().weight.shape != \
                policy.get_input_embeddings().weight.shape:
            raise ConfigError("--reference must use the policy's tokenizer (vocabulary sizes differ)")
    world = load_world_dir(cfg.world)
    prompts = read_prompt_texts(cfg.prompts, tok, cfg.num_prompts)
    if world is not None:
        check_world_prompts(world, prompts, cfg.prompts)
    if cfg.judge_file:
        read_comparisons(cfg.judge_file)  # bad judgments fail before any sampling
    red = redteam_setup(cfg, world)
    rm = load_rm(cfg.reward_model) if cfg.reward_model else None
    scfg = sampling(cfg, tok)
    samples, rm_scores = {}, {}
    for name, model in models.items():
        ref = models.get(cfg.reference_name) if name != cfg.reference_name else None
        samples[name] = s = sample_policy(model, tok, prompts, cfg.k, scfg, reference=ref,
                                          seed=cfg.seed + EVAL_SEED_OFFSET, entropy=True, batch_size=cfg.batch_size)
        if rm is not None:
            flat = score_texts(rm[0], rm[1], [p for p in prompts for _ in range(cfg.k)], s.flat("responses"))
            rm_scores[name] = [flat[i * cfg.k:(i + 1) * cfg.k] for i in range(len(prompts))]
    metrics = policy_metrics(cfg, judge, world, red, models, tok, scfg, samples, rm_scores, prompts)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_samples(out / "samples.jsonl", samples, metrics.pop("_gold"), rm_scores, world)
    finish(out, metrics)
    return metrics


def policy_metrics(cfg, judge, world, red, models, tok, scfg, samples, rm_scores, prompts) -> dict:
    """metrics.json of `eval policy`: every stage's means with intervals over prompts, the paired difference
    policy - reference, regressions, win rates under each judge, red-team rates."""
    vocab = word_vocab(world, prompts, samples[cfg.name].responses)
    rows, gold, values = {}, {}, {}
    for name, s in samples.items():
        rows[name], gold[name], values[name] = stage_stats(s, world, rm_scores.get(name), vocab,
                                                           reference=name == cfg.reference_name)
    metrics = {"kind": "eval-policy", "stages": {},
               "settings": {"k": cfg.k, "prompts": len(prompts), "temperature": cfg.temperature,
                            "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed, "ead_vocab": vocab,
                            "judge": judge},
               "inputs": {"model": cfg.model, "reference": cfg.reference, "reward_model": cfg.reward_model,
                          "world": str(cfg.world) if cfg.world else None}}
    wr = judge_win_rates(cfg, judge, gold, rm_scores, samples)
    if wr:
        metrics["win_rates"] = wr
        rows[cfg.name]["win_rate_vs_ref"] = next(iter(wr.values()))["win_rate"]
    rt, rt_values = eval_redteam(cfg, red, models, tok, scfg)
    if rt:
        metrics["redteam"] = rt
    for name in samples:
        values[name].update(rt_values.get(name, {}))
    scores = {"gold": gold, "reward-model": rm_scores}.get(judge, {})
    if scores.get(cfg.name) and scores.get(cfg.reference_name):  # the headline win rate, with its interval
        for name in (cfg.reference_name, cfg.name):
            values[name]["win_rate_vs_ref"] = win_values(scores[name], scores[cfg.reference_name])
    metrics["stages"], summary = stage_means(rows, values, seed=cfg.seed)
    metrics.update(summary)
    metrics["evaluation"] = {"prompts": len(prompts), "samples_per_prompt": cfg.k, "level": 0.95,
                             "redteam_prompts": len(red[0]) if red else 0}
    metrics["_gold"] = gold
    return metrics


def redteam_setup(cfg, world):
    """The red-team prompts and their scorer: a user file (with a user scoring function, else the world's
    judge, else refusal keywords), or the world's own family; None when there is neither."""
    from prefloop.world.redteam import RedTeamScorer, keyword_refusal, load_scorer, make_redteam, read_redteam

    if cfg.redteam_file:
        items = read_redteam(cfg.redteam_file)
        if cfg.redteam_scorer:
            try:
                return items, load_scorer(cfg.redteam_scorer)
            except ValueError as e:
                raise ConfigError(f"--redteam-scorer: {e}") from None
        return items, (RedTeamScorer(world.gold) if world is not None else keyword_refusal)
    if world is not None and cfg.redteam_prompts > 0:
        return make_redteam(redteam_questions(world), cfg.redteam_prompts, cfg.redteam_prompts, seed=cfg.seed), \
            RedTeamScorer(world.gold)
    return None


def eval_redteam(cfg, setup, models: dict, tok, scfg) -> tuple[dict, dict]:
    """Bad-answer and needless-refusal rates per policy on the red-team prompts, and their per-prompt values."""
    from prefloop.world.redteam import score_redteam

    if setup is None:
        return {}, {}
    items, scorer = setup
    out, values = {}, {}
    for name, model in models.items():
        s = sample_policy(model, tok, [x.prompt for x in items], cfg.k, scfg, seed=cfg.seed + SECOND_EVAL_SEED_OFFSET,
                          batch_size=cfg.batch_size)
        try:
            out[name] = score_redteam(items, s.responses, scorer)
            values[name] = redteam_values(items, s.responses, scorer)
        except KeyError as e:  # a user prompt the world's judge does not know
            raise DataError.whole(cfg.redteam_file or "red-team prompts",
                                  f"{e.args[0][:100]}; pass --redteam-scorer module:function") from None
    return out, values
