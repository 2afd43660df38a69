"""`prefloop loop`: iterated RLHF, the loop the RLHF papers run (Stiennon et al. 2020; Bai et al. 2022,
"iterated online RLHF"): collect feedback on the *current* policy's outputs, refit the reward model on all
feedback so far, train the policy further, and go round again.

Each round, top to bottom:
  1. sample     candidate replies to fresh prompts (prompts no earlier round used) from the current policy
                (and, with --pairs anchor, the initial one), one pair of different replies per prompt, and
                the round's share of the labelling budget given to the pairs --select ranks first
                (recipes/loop_select.py; the math in rl/selection.py)
  2. feedback   the world's simulated annotators compare them directly (`--feedback world`), or people do
                through the feedback app (`--feedback app`; `--simulate` lets the simulated annotators act as
                the app's users, through the same API as people)
  3. reward     a reward model refit on all comparisons so far, starting from --reward-init every round
  4. rl         the RL method (PPO by default) from the current policy, with the KL penalty measured against
                the initial policy, so KL adds up over rounds and stays comparable with a single long run
                (--kl-strategy ramp spreads the target over the rounds; reset measures each round's KL
                against the previous round's policy instead)
  5. evaluate   gold reward, reward-model score, gold win rate and KL against the initial policy on held-out
                prompts of the world

`OUT/loop_state.json` records every finished stage; a stopped loop run again with the same options resumes at
the round and stage where it stopped (a stage that was interrupted is run again from its start).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from prefloop.data import read_prompts, write_jsonl
from prefloop.data.splits import split_by_prompt
from prefloop.errors import ConfigError, require
from prefloop.models.precision import Precision
from prefloop.runtime import console, write_json
from prefloop.runtime.seeding import PROMPT_ORDER_STRIDE

from .options import ConfigFileOption, required

STAGES = ("sample", "feedback", "reward", "rl", "evaluate")


@dataclass(kw_only=True)
class LoopConfig(ConfigFileOption):
    out: Path = Path("runs/loop")
    """Output directory: OUT/round-N/{samples,comparisons,reward,rl,eval}, loop.json, report.md."""
    world: Path | None = required()
    """World directory (from `prefloop world`, or a demo run's OUT/world): prompts, simulated annotators and
    the gold judge used for evaluation."""
    policy: str | None = required()
    """Initial policy (usually the SFT checkpoint); also the reference of the KL penalty."""
    reward_init: str | None = None
    """Model every round's reward model is trained from (default: --policy)."""
    rounds: int = 3
    """Number of rounds."""
    comparisons: int = 1800
    """Labelling budget: pairs sent to annotators over all rounds together, an equal share per round unless
    --first-round-share says otherwise."""
    first_round_share: float = 0.0
    """Share of the labelling budget spent in round 1, in [0, 1): the rest is split evenly over the later
    rounds, which then correct the first round's policy with fewer labels (0: an equal share per round)."""
    pool_factor: float = 1.0
    """Candidate prompts per label: each round samples pool_factor x its share of fresh prompts and sends the
    `--select` best of their pairs (1: every prompt whose replies differ is labelled, as plain iterated RLHF)."""
    candidates: int = 2
    """Replies sampled per candidate prompt (and, with --pairs anchor, as many from the initial policy)."""
    pairs: Literal["same", "spread", "uncertain", "anchor"] = "same"
    """Which two replies of a prompt form its pair: same (first two distinct), spread (highest and lowest by the
    last round's reward model), uncertain (closest in its scores), anchor (current vs initial policy)."""
    select: Literal["random", "uncertainty", "disagreement", "bald"] = "random"
    """Which pairs get the round's labels: random, or the last round's reward model(s) ranking them by
    uncertainty (mean prediction near 0.5), disagreement (ensemble spread) or bald (expected information
    gain); the first round has no reward model and selects at random."""
    rm_ensemble: int = 1
    """Reward models trained per round (seeds seed..seed+N-1); RL uses their mean, selection their spread."""
    heldout_fraction: float = 0.1
    """Fraction of each round's comparison prompts held out to measure the reward model."""
    feedback: Literal["world", "app"] = "world"
    """world: the world's simulated annotators label directly; app: through the feedback web app."""
    app_url: str | None = None
    """Feedback app base URL (--feedback app), e.g. http://127.0.0.1:8000."""
    app_token: str | None = None
    """Admin API token of the feedback app (--feedback app); default: the PREFLOOP_APP_TOKEN environment
    variable (which, unlike an option, other users of the machine cannot read in the process list)."""
    overlap: int = 1
    """Annotators per item in the feedback app; comparisons are exported once every item has this many."""
    simulate: bool = False
    """--feedback app: the world's simulated annotators annotate through the app's API as its users."""
    app_refill_below: int = 0
    """--feedback app: import the round's pairs in portions, most useful first, whenever the project has fewer
    than this many items left to hand out, so its queue never runs dry while people work (0: import them all
    at once)."""
    app_refill_portion: int = 100
    """Pairs imported per portion with --app-refill-below."""
    method: Literal["ppo", "grpo", "rloo", "dpo"] = "ppo"
    """Policy update of each round: ppo, grpo or rloo against the round's reward model, or dpo on all
    comparisons so far (online DPO; the reward model is still refit, to evaluate with)."""
    num_generations: int = 4
    """grpo / rloo: samples per prompt."""
    dpo_beta: float = 0.1
    """--method dpo: beta, the strength of DPO's implicit KL regularisation (> 0)."""
    dpo_epochs: float = 1.0
    """--method dpo: passes over all comparisons so far, each round (> 0)."""
    rl_steps: int = 20
    """RL updates per round (per round after the first when --first-round-rl-steps is given)."""
    first_round_rl_steps: int | None = None
    """RL updates of round 1 (None: --rl-steps like every round), e.g. most of the updates in a first round
    with most of the labels, and small corrective rounds after it."""
    rollout_batch_size: int = 64
    """Completions sampled per RL update (ppo, grpo, rloo)."""
    batch_size: int = 32
    """Completions per RL optimizer step (ppo, grpo, rloo), or comparisons per DPO step."""
    rl_lr: float = 1e-4
    """Peak learning rate of the policy update (> 0)."""
    kl_coef: float = 0.1
    """KL coefficient (initial value when --kl-target is given)."""
    kl_target: float | None = None
    """Adaptive KL target in nats per sequence against the initial policy (None: fixed coefficient)."""
    kl_horizon: int = 10000
    """Horizon of the adaptive KL controller, in completions (>= 1): beta moves at most 20% * batch / horizon
    per update."""
    kl_strategy: Literal["total", "ramp", "reset"] = "total"
    """How the KL budget is spread over rounds (PPO, with --kl-target): total (every round's controller aims at
    --kl-target to the initial policy), ramp (round r aims at r/R of it, so early rounds leave room for later
    ones) or reset (the reference is the previous round's policy, each round aims at --kl-target / R; KL to
    the initial policy is still what the evaluation reports)."""
    carry_kl_coef: bool = True
    """PPO rounds after the first start from the coefficient the previous round's controller ended with,
    instead of --kl-coef: the policy they continue from has already spent KL, and a controller that starts
    again at --kl-coef lets the KL to the initial policy overshoot its target."""
    gold_checks: int = 0
    """Pairs with a known answer per round (spent on top of the budget), measuring each annotator's agreement
    with gold as an annotation tool's gold items do: with --feedback world every annotator judges all of them;
    with --feedback app they are the round project's gold items, mixed into assignments at --app-gold-rate."""
    app_gold_rate: float = 0.1
    """--feedback app with --gold-checks: the share of assignments that are gold items, in [0, 1)."""
    min_annotator_agreement: float = 0.0
    """Labels of annotators whose agreement is below this are dropped from the reward model's data (written to
    comparisons_dropped.jsonl): agreement with the gold checks (--feedback world, or the app's gold items) or,
    in the app, with the peers who judged the same items (--overlap 2 or more); 0 keeps every label."""
    screening_ablation: bool = True
    """When --min-annotator-agreement dropped labels, also fit a reward model on every label
    (round-N/reward-unscreened) and report its gold accuracy beside the screened one's: what screening changed."""
    # Sampling here is only candidate generation and RL rollouts, so just these two of SamplingOptions apply.
    max_new_tokens: int = 40
    """Most tokens sampled per response (>= 1), for the candidate pairs, RL and the evaluation."""
    temperature: float = 0.7
    """Sampling temperature (> 0) of the candidate pairs, RL and the evaluation."""
    max_length: int = 168
    """Maximum prompt tokens of RL and the reward model (responses add --max-new-tokens)."""
    rm_epochs: float = 2.0
    """Passes of each round's reward model over the comparisons so far (> 0)."""
    rm_lr: float = 2e-4
    """Peak learning rate of the reward model (> 0)."""
    rm_batch: int = 32
    """Comparisons per reward model optimizer step."""
    eval_prompts: int = 200
    """Held-out prompts of the world evaluated after every round."""
    eval_k: int = 4
    """Samples per held-out prompt."""
    seed: int = 0
    """Random seed of the whole loop (each round and stage derives its own from it)."""
    precision: Precision = "auto"
    """The computation: auto (bf16 autocast on a GPU that supports it, fp32 otherwise), fp32, bf16, or fp16."""


@dataclass
class _EvalSettings:
    """What `prefloop.eval.stages.evaluate_stages` reads from a preset."""

    eval_k: int
    max_new_tokens: int
    temperature: float


class LoopState:
    """Finished stages and per-round results, written atomically after every stage."""

    def __init__(self, path: Path, fingerprint: dict):
        self.path = path
        if path.exists():
            data = json.loads(path.read_text())
            # An option the stored run did not know yet counts as its default (runs of earlier versions resume).
            stored = {**_defaults(), **data.get("fingerprint", {})}
            changed = sorted(k for k in fingerprint if stored.get(k) != fingerprint[k])
            if changed:
                raise ConfigError(f"{path}: this loop was started with other options ({', '.join(changed)}); "
                                  "use another --out or the same options to resume")
            self.done: list[str] = data["done"]
            self.results: dict[str, dict] = data["results"]
        else:
            self.done, self.results = [], {}
        self.fingerprint = fingerprint

    def finished(self, rnd: int, stage: str) -> bool:
        return f"{rnd}/{stage}" in self.done

    def mark(self, rnd: int, stage: str, result: dict | None = None) -> None:
        self.done.append(f"{rnd}/{stage}")
        if result is not None:
            self.results.setdefault(str(rnd), {})[stage] = result
        write_json(self.path, {"fingerprint": self.fingerprint, "done": self.done, "results": self.results})


def _defaults() -> dict:
    return _fingerprint(LoopConfig())


def _fingerprint(cfg: LoopConfig) -> dict:
    """Options that change what a round computes; others (e.g. --out, or when the app's pairs are imported)
    may change between resumes."""
    d = asdict(cfg)
    free = ("config", "out", "app_token", "app_refill_below", "app_refill_portion")
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items() if k not in free}


def split_budget(total: int, rounds: int, first_share: float = 0.0) -> list[int]:
    """Labels per round: round 1 gets round(first_share x total), the later rounds the rest in equal parts
    (0: equal parts for all). The parts sum to `total` (the budget is spent exactly); earlier rounds get the
    remainder of an uneven split."""
    if not 0.0 <= first_share < 1.0:
        raise ConfigError(f"--first-round-share {first_share}: must be in [0, 1)")
    if first_share == 0.0 or rounds == 1:
        first, rest, n = 0, total, rounds
    else:
        first = int(round(first_share * total))
        rest, n = total - first, rounds - 1
    parts = [rest // n + (1 if i < rest % n else 0) for i in range(n)]
    return parts if n == rounds else [first, *parts]


def labels_per_round(cfg: LoopConfig, rnd: int = 1) -> int:
    return split_budget(cfg.comparisons, cfg.rounds, cfg.first_round_share)[rnd - 1]


def rl_steps_of(cfg: LoopConfig, rnd: int) -> int:
    return cfg.first_round_rl_steps if rnd == 1 and cfg.first_round_rl_steps is not None else cfg.rl_steps


def round_prompts(train_prompts: list[str], cfg: LoopConfig) -> list[list[str]]:
    """Disjoint, seeded slices of the world's train prompts: round r draws its candidate pairs from slice r
    only (its labelling share times --pool-factor prompts)."""
    shares = split_budget(cfg.comparisons, cfg.rounds, cfg.first_round_share)
    if min(shares) < 2:
        raise ConfigError(f"--comparisons {cfg.comparisons} gives fewer than 2 prompts in a round ({shares})")
    sizes = [max(s, int(round(cfg.pool_factor * s))) for s in shares]
    prompts = list(train_prompts)
    random.Random(f"loop-{cfg.seed}").shuffle(prompts)
    if sum(sizes) > len(prompts):
        raise ConfigError(f"--comparisons {cfg.comparisons} x --pool-factor {cfg.pool_factor} exceeds the "
                          f"world's {len(prompts)} train prompts")
    starts = [sum(sizes[:r]) for r in range(cfg.rounds)]
    return [prompts[a:a + n] for a, n in zip(starts, sizes)]


def world_feedback(world, items: list[dict], seed: int) -> list[dict]:
    """Comparison records from the world's simulated annotators (one annotator per pair)."""
    return world.label_pairs([it["prompt"] for it in items], [it["responses"][0] for it in items],
                             [it["responses"][1] for it in items], seed=seed)


def kl_plan(cfg: LoopConfig, rnd: int, previous_policy: str) -> tuple[str, float | None]:
    """(reference, KL target) of round `rnd`'s PPO under --kl-strategy (see LoopConfig.kl_strategy)."""
    if cfg.kl_strategy == "reset":
        return previous_policy, None if cfg.kl_target is None else cfg.kl_target / cfg.rounds
    if cfg.kl_strategy == "ramp" and cfg.kl_target is not None:
        return str(cfg.policy), cfg.kl_target * rnd / cfg.rounds
    return str(cfg.policy), cfg.kl_target


def _record_sources(record: dict, items: list[dict]) -> None:
    """meta.chosen_policy / rejected_policy of a world-labelled record (`pair-<i>` is items[i]); the feedback
    app's export sets them itself from the item's meta.policies."""
    meta = record["meta"]
    rid = str(record.get("id", "")).rsplit("pair-", 1)
    if "chosen_policy" in meta or len(rid) != 2 or not rid[1].isdigit() or int(rid[1]) >= len(items):
        return
    item = items[int(rid[1])]
    policies = item.get("meta", {}).get("policies")
    if policies and len(policies) == 2:
        a = 0 if item["responses"][0] == record["chosen"] else 1
        meta["chosen_policy"], meta["rejected_policy"] = policies[a], policies[1 - a]


class Loop:
    """The rounds of `prefloop loop`; `run()` is the explicit loop over rounds and stages."""

    def __init__(self, cfg: LoopConfig, feedback_fn: Callable[[list[dict], int, int], list[dict]] | None = None):
        require(cfg, "world", "policy")
        if cfg.rounds < 1:
            raise ConfigError("--rounds must be at least 1")
        if cfg.candidates < 2 and cfg.pairs != "anchor":
            raise ConfigError(f"--candidates {cfg.candidates}: a pair needs at least 2 replies per prompt")
        if cfg.candidates < 1 or cfg.rm_ensemble < 1 or cfg.pool_factor < 1:
            raise ConfigError("--candidates and --rm-ensemble must be at least 1, --pool-factor at least 1.0")
        if not 0.0 <= cfg.app_gold_rate < 1.0:
            raise ConfigError(f"--app-gold-rate {cfg.app_gold_rate}: must be in [0, 1)")
        if cfg.kl_strategy == "ramp" and cfg.kl_target is None:
            raise ConfigError("--kl-strategy ramp needs --kl-target (the total KL to spread over the rounds)")
        if cfg.select in ("disagreement", "bald") and cfg.rm_ensemble < 2:
            raise ConfigError(f"--select {cfg.select} needs --rm-ensemble 2 or more (members to disagree)")
        if cfg.first_round_rl_steps is not None and cfg.first_round_rl_steps < 1:
            raise ConfigError(f"--first-round-rl-steps {cfg.first_round_rl_steps}: must be at least 1")
        if cfg.app_refill_below < 0 or cfg.app_refill_portion < 1:
            raise ConfigError("--app-refill-below must be at least 0 and --app-refill-portion at least 1")
        if cfg.app_refill_below > 0 and cfg.feedback != "app":
            raise ConfigError("--app-refill-below works with --feedback app (it refills the app's queue)")
        self.app_token = cfg.app_token or os.environ.get("PREFLOOP_APP_TOKEN")
        if cfg.feedback == "app" and feedback_fn is None:
            require(cfg, "app_url")
            if not self.app_token:
                raise ConfigError("missing option --app-token (or the PREFLOOP_APP_TOKEN environment variable)")
        from prefloop.world import load_world

        if not (Path(cfg.world) / "world.json").exists():
            raise ConfigError(f"--world {cfg.world}: no world.json (write one with `prefloop world --out DIR`)")
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.world = load_world(cfg.world)
        self.train_prompts = [p.prompt for p in read_prompts(Path(cfg.world) / "prompts_train.jsonl")]
        self.heldout = [p.prompt for p in read_prompts(Path(cfg.world) / "prompts_heldout.jsonl")][:cfg.eval_prompts]
        self.slices = round_prompts(self.train_prompts, cfg)
        self.feedback_fn = feedback_fn or self._default_feedback()
        self.out.mkdir(parents=True, exist_ok=True)
        self.state = LoopState(self.out / "loop_state.json", _fingerprint(cfg))

    def _default_feedback(self) -> Callable[[list[dict], int, int], list[dict]]:
        if self.cfg.feedback == "world":
            return lambda items, rnd, seed: world_feedback(self.world, items, seed)
        from .loop_app import app_feedback

        return lambda items, rnd, seed: app_feedback(self.cfg, self.app_token, self.world, items, rnd, seed)

    def round_dir(self, rnd: int) -> Path:
        return self.out / f"round-{rnd}"

    def policy_after(self, rnd: int) -> str:
        """The policy that round `rnd` ends with (round 0: the initial policy)."""
        return str(self.cfg.policy) if rnd == 0 else str(self.round_dir(rnd) / "rl" / "model")

    def run(self) -> dict:
        cfg = self.cfg
        stage_fns = {"sample": self.stage_sample, "feedback": self.stage_feedback, "reward": self.stage_reward,
                     "rl": self.stage_rl, "evaluate": self.stage_evaluate}
        for rnd in range(1, cfg.rounds + 1):
            for stage in STAGES:
                if self.state.finished(rnd, stage):
                    continue
                console.rule(f"[bold]round {rnd}/{cfg.rounds}: {stage}")
                self.state.mark(rnd, stage, stage_fns[stage](rnd))
        summary = self.summary()
        write_json(self.out / "loop.json", summary)
        (self.out / "loop.md").write_text(loop_report(summary))
        write_json(self.out / "metrics.json", self.report_metrics())
        from prefloop.eval.report_run import write_report

        write_report(self.out)  # report.html (self-contained) and report.md: every round as a stage
        console.print(f"[bold green]loop done[/]: {self.out / 'report.html'}")
        return summary

    def report_metrics(self) -> dict:
        """metrics.json in the shape `prefloop report` reads: the initial policy and each round as stages."""
        results = self.state.results
        stages = {"initial": results.get("1", {}).get("evaluate", {}).get("initial", {})}
        for rnd in range(1, self.cfg.rounds + 1):
            stages[f"round {rnd}"] = results.get(str(rnd), {}).get("evaluate", {}).get("policy", {})
        last = results.get(str(self.cfg.rounds), {})
        return {"kind": "loop", "stages": stages, "reward_model": last.get("reward", {}),
                "settings": _fingerprint(self.cfg)}

    # -- stages ---------------------------------------------------------------------------------------
    def reward_spec(self, rnd: int) -> str:
        """The reward model(s) round `rnd` trained: one model directory, or an ensemble directory."""
        d = self.round_dir(rnd) / "reward"
        return str(d if self.cfg.rm_ensemble > 1 else d / "model")

    def reward_eval_dir(self, rnd: int) -> Path:
        """The reward model the evaluation reads (the first member of an ensemble)."""
        d = self.round_dir(rnd) / "reward"
        return d / "members" / "0" / "model" if self.cfg.rm_ensemble > 1 else d / "model"

    def stage_sample(self, rnd: int) -> dict:
        from . import loop_select as ls

        cfg, prompts = self.cfg, self.slices[rnd - 1]
        name = "initial" if rnd == 1 else f"round-{rnd - 1}"
        cands = ls.sample_candidates(self.policy_after(rnd - 1), prompts, cfg.candidates, cfg.max_new_tokens,
                                     cfg.temperature, cfg.seed + rnd, name)
        split = None
        if cfg.pairs == "anchor":
            earlier = ls.sample_candidates(str(cfg.policy), prompts, cfg.candidates, cfg.max_new_tokens,
                                           cfg.temperature, cfg.seed + PROMPT_ORDER_STRIDE * rnd, "initial")
            cands, split = ls.merge(cands, earlier), cfg.candidates
        needs_rm = rnd > 1 and (cfg.select != "random" or cfg.pairs in ("spread", "uncertain"))
        scores = ls.member_scores(self.reward_spec(rnd - 1), prompts, cands.replies, cfg.max_length) \
            if needs_rm else None
        items, margins = ls.draw_items(cands, cfg.pairs, scores, split)
        for it in items:
            it["meta"]["round"] = rnd
        chosen = ls.select_items(items, margins, cfg.select, labels_per_round(cfg, rnd), cfg.seed + rnd)
        write_jsonl(self.round_dir(rnd) / "candidates.jsonl", items)
        write_jsonl(self.round_dir(rnd) / "samples.jsonl", chosen)
        return {"prompts": len(prompts), "comparable": len(items), "items": len(chosen),
                "cross_policy": sum(len(set(it["meta"]["policies"])) > 1 for it in chosen)}

    def stage_feedback(self, rnd: int) -> dict:
        from prefloop.data import iter_jsonl

        items = [d for _, d in iter_jsonl(self.round_dir(rnd) / "samples.jsonl")]
        records = self.feedback_fn(items, rnd, self.cfg.seed + 1000 * rnd)
        for r in records:
            r["id"] = f"r{rnd}-{r.get('id', '')}"
            r.setdefault("meta", {})["round"] = rnd
            _record_sources(r, items)
        screen = self.screen_annotators(records, rnd)
        train, held = split_by_prompt(screen.pop("kept"), self.cfg.heldout_fraction, f"heldout-{self.cfg.seed + rnd}")
        write_jsonl(self.round_dir(rnd) / "comparisons_train.jsonl", train)
        write_jsonl(self.round_dir(rnd) / "comparisons_heldout.jsonl", held)
        gold = [float(r["meta"]["gold_chosen"] > r["meta"]["gold_rejected"]) for r in records
                if "gold_chosen" in r.get("meta", {}) and r["meta"]["gold_chosen"] != r["meta"]["gold_rejected"]]
        return {"comparisons": len(records), "annotator_gold_agreement": sum(gold) / len(gold) if gold else None,
                **screen}

    def screen_annotators(self, records: list[dict], rnd: int) -> dict:
        """Drop the labels of annotators below --min-annotator-agreement (on this round's gold checks, or on
        what the feedback app measured); reports how many labels went and how often the dropped ones agreed
        with gold (what dropping changed)."""
        from prefloop.world.annotators import drop_unreliable, gold_check_agreement

        cfg = self.cfg
        if cfg.feedback == "app":
            agreement = {r["annotator"]: r["meta"]["annotator_agreement"] for r in records
                         if r.get("meta", {}).get("annotator_agreement") is not None}
            if cfg.min_annotator_agreement <= 0 or not agreement:
                return {"kept": records, "annotator_check_agreement": agreement or None}
        elif cfg.gold_checks <= 0:
            return {"kept": records}
        else:
            checks = self.world.gold_checks(cfg.gold_checks, seed=cfg.seed + 31 * rnd)
            agreement = gold_check_agreement(self.world.annotators, checks, seed=cfg.seed + rnd)
        kept, dropped = drop_unreliable(records, agreement, cfg.min_annotator_agreement)
        write_jsonl(self.round_dir(rnd) / "comparisons_dropped.jsonl", dropped)
        gold = [float(r["meta"]["gold_chosen"] > r["meta"]["gold_rejected"]) for r in dropped
                if r["meta"].get("gold_chosen") != r["meta"].get("gold_rejected")]
        checked = cfg.gold_checks * len(self.world.annotators) if cfg.feedback == "world" else cfg.gold_checks
        return {"kept": kept, "check_labels": checked,
                "dropped_labels": len(dropped), "dropped_gold_agreement": sum(gold) / len(gold) if gold else None,
                "annotator_check_agreement": agreement}

    def _all_comparisons(self, rnd: int, kind: str) -> Path:
        """All rounds' comparisons up to `rnd` in one file (the reward model is refit on everything so far)."""
        from prefloop.data import iter_jsonl

        files = [self.round_dir(r) / f"comparisons_{kind}.jsonl" for r in range(1, rnd + 1)]
        rows = [d for f in files if f.exists() for _, d in iter_jsonl(f)]  # rounds without screening drop none
        path = self.round_dir(rnd) / f"all_comparisons_{kind}.jsonl"
        write_jsonl(path, rows)
        return path

    def stage_reward(self, rnd: int) -> dict:
        from prefloop.eval.commands.reward import evaluate_reward_model

        from .reward import RewardConfig, run_reward

        cfg, d = self.cfg, self.round_dir(rnd)
        train, held = self._all_comparisons(rnd, "train"), self._all_comparisons(rnd, "heldout")
        shutil.rmtree(d / "reward", ignore_errors=True)
        run_reward(RewardConfig(model=cfg.reward_init or cfg.policy, data=train, eval_data=held, out=d / "reward",
                                epochs=cfg.rm_epochs, lr=cfg.rm_lr, batch_size=cfg.rm_batch,
                                max_length=cfg.max_length, seed=cfg.seed + rnd, precision=cfg.precision,
                                ensemble_size=cfg.rm_ensemble))
        stats = evaluate_reward_model(self.reward_eval_dir(rnd), held)
        dropped = self._all_comparisons(rnd, "dropped")
        n_dropped = sum(1 for _ in open(dropped))
        if cfg.screening_ablation and n_dropped:
            # The same fit on every label, screened-out ones too, measured on the same held-out pairs.
            every = d / "all_comparisons_unscreened.jsonl"
            every.write_text(train.read_text() + dropped.read_text())
            shutil.rmtree(d / "reward-unscreened", ignore_errors=True)
            run_reward(RewardConfig(model=cfg.reward_init or cfg.policy, data=every, out=d / "reward-unscreened",
                                    epochs=cfg.rm_epochs, lr=cfg.rm_lr, batch_size=cfg.rm_batch,
                                    max_length=cfg.max_length, seed=cfg.seed + rnd, precision=cfg.precision))
            other = evaluate_reward_model(d / "reward-unscreened" / "model", held)
            stats["gold_accuracy_unscreened"] = other.get("gold_accuracy")
            stats["heldout_accuracy_unscreened"] = other.get("heldout_accuracy")
        return {**stats, "train_comparisons": sum(1 for _ in open(train)), "dropped_comparisons": n_dropped}

    def stage_rl(self, rnd: int) -> dict:
        cfg, d = self.cfg, self.round_dir(rnd)
        shutil.rmtree(d / "rl", ignore_errors=True)
        gold = self.world.gold

        def gold_fn(prompts, responses):
            return [gold.score(a, b) for a, b in zip(prompts, responses)]

        common = dict(out=d / "rl", seed=cfg.seed + rnd, precision=cfg.precision,
                      max_length=cfg.max_length + cfg.max_new_tokens)
        if cfg.method == "dpo":
            from .dpo import DPOConfig, run_dpo

            meta = run_dpo(DPOConfig(model=self.policy_after(rnd - 1), reference=str(cfg.policy),
                                     data=self._all_comparisons(rnd, "train"),
                                     eval_data=self._all_comparisons(rnd, "heldout"), beta=cfg.dpo_beta,
                                     epochs=cfg.dpo_epochs, lr=cfg.rl_lr, batch_size=cfg.batch_size, **common))
            return {k: v for k, v in meta.get("metrics", {}).items() if isinstance(v, int | float)}
        rl = dict(policy=self.policy_after(rnd - 1), reference=str(cfg.policy), reward=self.reward_spec(rnd),
                  prompts=Path(cfg.world) / "prompts_train.jsonl", max_steps=rl_steps_of(cfg, rnd),
                  rollout_batch_size=cfg.rollout_batch_size, batch_size=cfg.batch_size, lr=cfg.rl_lr,
                  kl_coef=cfg.kl_coef, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, **common)
        if cfg.method in ("grpo", "rloo"):
            from .grpo import GRPOConfig, RLOOConfig, run_grpo, run_rloo

            cls, fn = (GRPOConfig, run_grpo) if cfg.method == "grpo" else (RLOOConfig, run_rloo)
            meta = fn(cls(num_generations=cfg.num_generations, **rl), gold_fn=gold_fn)
        else:
            from .ppo import PPOConfig, run_ppo

            previous = self.state.results.get(str(rnd - 1), {}).get("rl", {}).get("kl/coef")
            if cfg.carry_kl_coef and previous is not None:
                rl["kl_coef"] = previous
            rl["reference"], target = kl_plan(cfg, rnd, self.policy_after(rnd - 1))
            meta = run_ppo(PPOConfig(kl_target=target, kl_horizon=cfg.kl_horizon, **rl), gold_fn=gold_fn)
        return {k: v for k, v in meta.get("metrics", {}).items() if isinstance(v, int | float)}

    def stage_evaluate(self, rnd: int) -> dict:
        from prefloop.eval.stages import evaluate_stages

        cfg = self.cfg
        dirs = {"sft": Path(cfg.policy), "policy": Path(self.policy_after(rnd))}
        settings = _EvalSettings(cfg.eval_k, cfg.max_new_tokens, cfg.temperature)
        stages = evaluate_stages(self.world, dirs, self.reward_eval_dir(rnd), self.heldout,
                                 settings, cfg.seed)["stages"]
        write_json(self.round_dir(rnd) / "eval.json", stages)
        return {"policy": stages["policy"], "initial": stages["sft"]}

    def summary(self) -> dict:
        rounds = []
        for rnd in range(1, self.cfg.rounds + 1):
            r = self.state.results.get(str(rnd), {})
            ev = r.get("evaluate", {}).get("policy", {})
            rounds.append({"round": rnd, "labels": r.get("feedback", {}).get("comparisons"),
                           "comparable_pairs": r.get("sample", {}).get("comparable"),
                           "comparisons_so_far": r.get("reward", {}).get("train_comparisons"),
                           "rm_gold_accuracy": r.get("reward", {}).get("gold_accuracy"),
                           "rm_gold_accuracy_unscreened": r.get("reward", {}).get("gold_accuracy_unscreened"),
                           "dropped_labels": r.get("feedback", {}).get("dropped_labels"),
                           "rm_heldout_accuracy": r.get("reward", {}).get("heldout_accuracy"),
                           "annotator_gold_agreement": r.get("feedback", {}).get("annotator_gold_agreement"),
                           **{k: ev.get(k) for k in ("gold_reward_mean", "gold_win_rate_vs_sft", "kl_to_ref",
                                                     "kl_to_ref_k3", "reward_model_mean", "distinct_2", "self_bleu")}})
        initial = self.state.results.get("1", {}).get("evaluate", {}).get("initial", {})
        return {"config": _fingerprint(self.cfg), "initial": initial, "rounds": rounds}


def loop_report(summary: dict) -> str:
    cols = ["round", "labels", "comparisons_so_far", "annotator_gold_agreement", "rm_gold_accuracy",
            "gold_reward_mean", "gold_win_rate_vs_sft",
            "kl_to_ref", "reward_model_mean", "distinct_2", "self_bleu"]
    # Annotator screening's columns, where it dropped labels: how many, and the reward model fit without it.
    extra = [c for c in ("dropped_labels", "rm_gold_accuracy_unscreened")
             if any(r.get(c) is not None for r in summary["rounds"])]
    cols[5:5] = extra

    def fmt(v):
        return "" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    lines = ["# prefloop loop", "", f"Initial policy: gold reward {fmt(summary['initial'].get('gold_reward_mean'))}, "
             f"distinct-2 {fmt(summary['initial'].get('distinct_2'))}, self-BLEU "
             f"{fmt(summary['initial'].get('self_bleu'))} (held-out prompts of the world).", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in summary["rounds"]]
    lines += ["", "KL and win rate are against the initial policy; gold is the world's hidden judge; the reward "
              "model's gold accuracy is measured on all held-out comparisons so far."]
    return "\n".join(lines) + "\n"


def run_loop(cfg: LoopConfig) -> dict:
    return Loop(cfg).run()


__all__ = ["LoopConfig", "Loop", "run_loop", "round_prompts", "world_feedback"]
