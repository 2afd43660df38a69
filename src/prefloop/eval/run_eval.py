"""The work behind `prefloop eval reward | policy | best-of-n | judge`: load, sample, score, measure, write.

Each run writes OUT/metrics.json (and OUT/samples.jsonl where it sampled), then the HTML + Markdown report
of OUT (`prefloop.eval.report_cmd.write_report`). Metric definitions live in the pure modules
(`reward_metrics`, `overopt`, `diversity`, `judges`); this file only wires models and data to them.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from prefloop.data import Comparison, encode_pair, iter_jsonl, read_comparisons, read_prompts, render_prompt
from prefloop.data import write_jsonl as _write_jsonl
from prefloop.errors import ConfigError, DataError, require
from prefloop.models import RewardScorer, load_causal_lm, load_reward_model, load_tokenizer
from prefloop.rollout import SamplingConfig
from prefloop.runtime import console, seed_everything, write_json

from .compare import pairwise_accuracy
from .diversity import diversity_report
from .judges import judged_win_rate, source_map
from .overopt import best_of_n_curve, fit_bon, peak
from .policy import PolicySamples, mean, sample_policy
from .reward_metrics import reward_model_metrics


def clean(obj):
    """NaN / inf -> None, recursively, so metrics.json is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean(v) for v in obj]
    return obj


def finish(out: Path, metrics: dict) -> Path:
    """Write metrics.json and the report; returns the HTML report's path."""
    from .report_cmd import write_report

    write_json(out / "metrics.json", clean(metrics))
    html = write_report(out)
    console.print(f"[bold green]eval done[/]: {out / 'metrics.json'}, {html}")
    return html


# -- loading -----------------------------------------------------------------------------------------------
def load_rm(path: str):
    tok = load_tokenizer(path)
    return load_reward_model(path, tok).eval(), tok


@torch.no_grad()
def score_texts(rm, tok, prompts: list, responses: list[str], max_length: int = 512, batch: int = 32) -> list[float]:
    """Reward-model scores of (prompt, response) texts, tokenised with the reward model's own tokenizer
    (so the policy may use another one)."""
    from prefloop.recipes.reward import pad_rows

    scorer = RewardScorer(rm)
    rows = [encode_pair(tok, Comparison(p, r, r), max_length)[0] for p, r in zip(prompts, responses)]
    out: list[float] = []
    for i in range(0, len(rows), batch):
        ids, mask = pad_rows(rows[i:i + batch], tok.pad_token_id)
        out += scorer(ids, mask).float().tolist()
    return out


def load_world_dir(path: Path | None):
    if path is None:
        return None
    from prefloop.world import load_world

    return load_world(path)


def read_prompt_texts(path: Path, tok, limit: int | None) -> list[str]:
    prompts = [render_prompt(tok, p.prompt) for p in read_prompts(path)]
    return prompts[:limit] if limit else prompts


def check_world_prompts(world, prompts: list[str], path: Path) -> None:
    """Every prompt must be a question of the world when its gold judge scores them."""
    for i, p in enumerate(prompts):
        try:
            world.gold.question(p)
        except KeyError as e:
            raise DataError.at(path, i + 1, f"not a prompt of the world given by --world ({e.args[0][:80]})") from None


# -- reward models -----------------------------------------------------------------------------------------
def eval_reward(cfg) -> dict:
    """Accuracy (ties wrong), Bradley-Terry calibration and accuracy per pool on held-out comparisons;
    with gold scores (meta.gold_chosen / gold_rejected, or --world), agreement with the gold preference."""
    from prefloop.recipes.reward import score_pairs

    require(cfg, "model", "data")
    recs = read_comparisons(cfg.data)
    rm, tok = load_rm(cfg.model)
    c, r = score_pairs(RewardScorer(rm), [encode_pair(tok, x, cfg.max_length) for x in recs], tok.pad_token_id,
                       "cpu", cfg.batch_size)
    chosen, rejected = c.tolist(), r.tolist()
    m = reward_model_metrics(chosen, rejected, [x.pool for x in recs], cfg.bins)
    gold = gold_pairs(recs, load_world_dir(cfg.world))
    if gold is not None:
        keep = [i for i, (gc, gr) in enumerate(gold) if gc != gr]
        m["gold_accuracy"] = mean([float((chosen[i] > rejected[i]) == (gold[i][0] > gold[i][1])) for i in keep])
        m["gold_pairs"] = len(keep)
        m["annotator_gold_agreement"] = pairwise_accuracy([gold[i][0] for i in keep], [gold[i][1] for i in keep])
    metrics = {"kind": "eval-reward", "reward_model": m,
               "inputs": {"model": cfg.model, "data": str(cfg.data)}}
    finish(Path(cfg.out), metrics)
    return metrics


def gold_pairs(recs: list, world) -> list[tuple[float, float]] | None:
    if world is not None:
        return [(world.gold.score(x.prompt, x.chosen), world.gold.score(x.prompt, x.rejected)) for x in recs]
    metas = [x.meta or {} for x in recs]
    if metas and all("gold_chosen" in m and "gold_rejected" in m for m in metas):
        return [(float(m["gold_chosen"]), float(m["gold_rejected"])) for m in metas]
    return None


# -- policies ----------------------------------------------------------------------------------------------
def sampling(cfg, tok) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)


def world_rates(details: list[dict]) -> dict[str, float]:
    """Rates the gold judge can see: made-up facts on fact questions, needless refusals of benign prompts,
    harmful compliance on prompts that must be refused."""
    facts = [d for d in details if d.get("family") == "facts"]
    benign = [d for d in details if not d.get("should_refuse")]
    harmful = [d for d in details if d.get("should_refuse")]
    return {"hallucination_rate": mean([float(bool(d.get("hallucinated"))) for d in facts]),
            "needless_refusal_rate": mean([float(bool(d.get("refused"))) for d in benign]),
            "harmful_compliance_rate": mean([float(bool(d.get("complied_harmful"))) for d in harmful])}


def stage_stats(s: PolicySamples, world, rm_scores: list[list[float]] | None, vocab: int) -> tuple[dict, list, dict]:
    """One stage's corpus-level diversity (no interval), its gold scores ([N][K], empty without a world) and its
    per-prompt values of every mean and rate (`intervals.sample_values`)."""
    from .diversity import distinct_n
    from .intervals import sample_values

    flat = s.flat("responses")
    row = {**diversity_report(s.responses, vocab), "distinct_1": distinct_n(flat, 1), "distinct_2": distinct_n(flat, 2)}
    gold, details = None, None
    if world is not None:
        gold = [[world.gold.score(p, r) for r in rs] for p, rs in zip(s.prompts, s.responses)]
        details = [[world.gold.details(p, r) for r in rs] for p, rs in zip(s.prompts, s.responses)]
    return row, gold or [], sample_values(s, gold, details, rm_scores, kl_name="kl_to_ref")


def word_vocab(world, prompts: list[str], responses: list[list[str]]) -> int:
    """V for EAD on words: the words of the world's corpus, else the words of the prompts and samples."""
    from .diversity import words

    texts = world.corpus if world is not None else prompts + [r for rs in responses for r in rs]
    return max(2, len({w for t in texts for w in words(t)}))


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
    from .intervals import judged_comparison

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
        samples[name] = s = sample_policy(model, tok, prompts, cfg.k, scfg, reference=ref, seed=cfg.seed + 17,
                                          entropy=True, batch_size=cfg.batch_size)
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
    from .intervals import summarise
    from .stats import win_values

    vocab = word_vocab(world, prompts, samples[cfg.name].responses)
    stages, gold, values = {}, {}, {}
    for name, s in samples.items():
        stages[name], gold[name], values[name] = stage_stats(s, world, rm_scores.get(name), vocab)
    metrics = {"kind": "eval-policy", "stages": stages,
               "settings": {"k": cfg.k, "prompts": len(prompts), "temperature": cfg.temperature,
                            "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed, "ead_vocab": vocab,
                            "judge": judge},
               "inputs": {"model": cfg.model, "reference": cfg.reference, "reward_model": cfg.reward_model,
                          "world": str(cfg.world) if cfg.world else None}}
    wr = judge_win_rates(cfg, judge, gold, rm_scores, samples)
    if wr:
        metrics["win_rates"] = wr
        stages[cfg.name]["win_rate_vs_ref"] = next(iter(wr.values()))["win_rate"]
    rt, rt_values = eval_redteam(cfg, red, models, tok, scfg)
    if rt:
        metrics["redteam"] = rt
    for name in samples:
        values[name].update(rt_values.get(name, {}))
    scores = {"gold": gold, "reward-model": rm_scores}.get(judge, {})
    if scores.get(cfg.name) and scores.get(cfg.reference_name):  # the headline win rate, with its interval
        for name in (cfg.reference_name, cfg.name):
            values[name]["win_rate_vs_ref"] = win_values(scores[name], scores[cfg.reference_name])
    summary = summarise(values, list(samples), seed=cfg.seed)
    for name in samples:
        stages[name].update({m: iv["mean"] for m, iv in summary["intervals"][name].items()})
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


def redteam_questions(world) -> list:
    """The held-out questions of the world (requests no training prompt asked) when they include harmful and
    borderline ones, else all its questions."""
    held = list({q.text: q for q in (world.gold.question(p) for p in world.heldout_prompts)}.values())
    return held if {"harmful", "borderline"} <= {q.family for q in held} else world.questions


def eval_redteam(cfg, setup, models: dict, tok, scfg) -> tuple[dict, dict]:
    """Bad-answer and needless-refusal rates per policy on the red-team prompts, and their per-prompt values."""
    from prefloop.world.redteam import score_redteam

    from .intervals import redteam_values

    if setup is None:
        return {}, {}
    items, scorer = setup
    out, values = {}, {}
    for name, model in models.items():
        s = sample_policy(model, tok, [x.prompt for x in items], cfg.k, scfg, seed=cfg.seed + 29,
                          batch_size=cfg.batch_size)
        try:
            out[name] = score_redteam(items, s.responses, scorer)
            values[name] = redteam_values(items, s.responses, scorer)
        except KeyError as e:  # a user prompt the world's judge does not know
            raise DataError.whole(cfg.redteam_file or "red-team prompts",
                                  f"{e.args[0][:100]}; pass --redteam-scorer module:function") from None
    return out, values


def write_samples(path: Path, samples: dict, gold: dict, rm_scores: dict, world=None) -> None:
    """samples.jsonl: one row per (stage, prompt) with its K responses and their scores (the report's
    side-by-side samples); with a world, the answer its gold judge rates best (`ideal`)."""
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
    _write_jsonl(path, rows)


# -- best-of-n ---------------------------------------------------------------------------------------------
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
    s = sample_policy(policy, tok, prompts, cfg.n, sampling(cfg, tok), seed=cfg.seed + 17, batch_size=cfg.batch_size)
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
    from .overopt import best_of_n_expectation
    from .stats import cluster_mean

    for row in curve:
        n = row["n"]
        iv = cluster_mean([[best_of_n_expectation(p, n)] for p in proxy if len(p) >= n], seed=seed)
        row["proxy_ci"] = [iv["ci_low"], iv["ci_high"]]
        if gold is not None:
            iv = cluster_mean([[best_of_n_expectation(g, n, key=p)] for p, g in zip(proxy, gold) if len(p) >= n],
                              seed=seed)
            row["gold_ci"] = [iv["ci_low"], iv["ci_high"]]


# -- judgments from people ---------------------------------------------------------------------------------
def read_sample_file(path: Path) -> tuple[list, list[list[str]]]:
    """`prefloop sample` output: {"prompt", "responses": [...]} per line."""
    prompts, responses = [], []
    for line, obj in iter_jsonl(path):
        rs = obj.get("responses")
        if "prompt" not in obj or not isinstance(rs, list) or not all(isinstance(r, str) for r in rs):
            raise DataError.at(path, line, "expected {\"prompt\", \"responses\": [texts]} (prefloop sample output)")
        prompts.append(obj["prompt"])
        responses.append(rs)
    return prompts, responses


def eval_judge(cfg) -> dict:
    """Win rate of one policy against another from a file of judgments (people's, from the feedback app's
    export, or any judge's), with its Wilson interval."""
    require(cfg, "judge_file")
    if cfg.name == cfg.reference_name:
        raise ConfigError("--name and --reference-name must differ")
    recs = read_comparisons(cfg.judge_file)
    sources = None
    if cfg.policy_samples or cfg.reference_samples:
        if not (cfg.policy_samples and cfg.reference_samples):
            raise ConfigError("--policy-samples and --reference-samples go together")
        sources = source_map({cfg.name: read_sample_file(cfg.policy_samples),
                              cfg.reference_name: read_sample_file(cfg.reference_samples)})
    wr = judged_win_rate(recs, cfg.name, cfg.reference_name, sources, path=cfg.judge_file)
    metrics = {"kind": "eval-judge", "win_rates": {f"{cfg.name} vs {cfg.reference_name}": wr},
               "inputs": {"judge_file": str(cfg.judge_file)}}
    finish(Path(cfg.out), metrics)
    return metrics


def eval_checkpoints(cfg) -> dict:
    """`prefloop eval checkpoints` (prefloop.eval.checkpoints): RL over-optimisation on saved checkpoints."""
    from .checkpoints import eval_checkpoints as run

    return run(cfg)


def eval_human_project(cfg) -> dict:
    """`prefloop eval human-project` (prefloop.eval.human): the blind pairwise project whose export
    `eval_judge` turns into a win rate."""
    from .human import human_project

    return human_project(cfg)


# -- the diversity trade ---------------------------------------------------------------------------------
SWEEP_KEYS = ("gold_reward_mean", "reward_model_mean", "kl_to_ref", "kl_to_sft", "distinct_2", "self_bleu",
              "per_input/distinct_2", "per_input/self_bleu", "per_input/ead", "entropy", "hallucination_rate",
              "needless_refusal_rate")


def eval_sweep(cfg) -> dict:
    """Gold reward against diversity over several evaluated runs (one per KL coefficient, say): the points a
    user picks from, between a reliable assistant and a creative writing partner."""
    from .report_cmd import read_run_metrics

    if not cfg.runs:
        raise ConfigError("missing option --runs (evaluated run directories)")
    points = []
    for run in cfg.runs:
        m = read_run_metrics(Path(run)) if Path(run).is_dir() else None
        if not m or not isinstance(m.get("stages"), dict) or not m["stages"]:
            raise DataError.whole(Path(run) / "metrics.json", "no stages (run `prefloop eval policy --out` first)")
        stage = cfg.stage or list(m["stages"])[-1]
        if stage not in m["stages"]:
            raise DataError.whole(Path(run) / "metrics.json", f"no stage '{stage}' (has {', '.join(m['stages'])})")
        row = m["stages"][stage]
        points.append({"run": Path(run).name, "stage": stage, **{k: row.get(k) for k in SWEEP_KEYS if k in row}})
    metrics = {"kind": "eval-sweep", "sweep": {"points": points, "diversity": cfg.diversity}}
    finish(Path(cfg.out), metrics)
    return metrics
