"""`prefloop eval <subcommand> [options]`: evaluate reward models and policies; each run writes
OUT/metrics.json, plots and the HTML + Markdown report of OUT.

  reward      a reward model on held-out comparisons: accuracy (ties wrong), calibration, accuracy per pool
  policy      a policy (and a reference): gold and reward-model score, win rate under a named judge, KL,
              length, never-ending fraction, diversity, made-up facts, red-team rates
  best-of-n   best-of-n over-optimisation curves against the exact KL, with the Gao et al. fit
  sweep       gold reward against diversity over several evaluated runs (the diversity trade)
  judge       win rate from a file of judgments (`prefloop eval --judge-file FILE ...` is the same)
  checkpoints    gold and proxy reward against KL over the saved checkpoints of an RL run (Gao et al. fit)
  human-project  a blind pairwise project in the feedback app from two policies' samples on the same prompts
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from prefloop.recipes.options import ConfigFileOption, SamplingOptions, required


@dataclass(kw_only=True)
class _Sampling(SamplingOptions):
    # An evaluation samples the way RL trains (cooler than SamplingOptions' defaults), and its KL and entropy
    # estimates use the same tempered distributions.
    max_new_tokens: int = 48
    temperature: float = 0.7
    """Sampling temperature (> 0; the KL and entropy estimates use the same tempered distributions)."""
    num_prompts: int | None = None
    """Use only the first N prompts of --prompts."""
    batch_size: int = 64
    """Sequences sampled together."""
    seed: int = 0
    """Random seed of the sampler (the same seed gives the same samples)."""


@dataclass(kw_only=True)
class EvalRewardConfig(ConfigFileOption):
    model: str | None = required()
    """The reward model (a prefloop reward directory's model/, or any HF sequence classifier with one label)."""
    data: Path | None = required()
    """Held-out comparisons JSONL ({"prompt", "chosen", "rejected"}, optional "pool" and meta.gold_*)."""
    out: Path = Path("runs/eval-reward")
    """Output directory: metrics.json, calibration plot, report.html and report.md."""
    world: Path | None = None
    """A world directory: also measure agreement with its hidden gold judge."""
    bins: int = 5
    """Calibration bins over the model's confidence [0.5, 1]."""
    max_length: int = 512
    """Maximum prompt + response tokens scored; prompts are cut from the left to fit."""
    batch_size: int = 64
    """Comparisons scored together."""


@dataclass(kw_only=True)
class EvalPolicyConfig(_Sampling, ConfigFileOption):
    model: str | None = required()
    """The policy to evaluate (an HF causal LM directory)."""
    prompts: Path | None = required()
    """Evaluation prompts JSONL ({"prompt"}); held-out prompts of the world for the gold judge."""
    out: Path = Path("runs/eval-policy")
    """Output directory: metrics.json, samples.jsonl, plots, report.html and report.md."""
    reference: str | None = None
    """Reference policy (e.g. the SFT model): KL to it, and the win rate against it."""
    reward_model: str | None = None
    """Reward model to score samples with (it may use another tokenizer)."""
    world: Path | None = None
    """World directory: gold reward, made-up facts, refusals, and the world's red-team prompts."""
    judge: Literal["gold", "reward-model", "file"] | None = None
    """Judge of the win rate against --reference: the world's gold judge, the reward model, or --judge-file.
    Default: the best one given (gold with --world, else the reward model, else the file); the output says which."""
    judge_file: Path | None = None
    """Judgments JSONL (comparisons whose chosen/rejected are the two policies' responses)."""
    name: str = "policy"
    """Name of the policy in tables and in judgment files (meta.chosen_policy / rejected_policy)."""
    reference_name: str = "reference"
    """Name of the reference."""
    k: int = 4
    """Samples per prompt (per-input diversity needs K >= 2)."""
    redteam_prompts: int = 32
    """With --world: this many adversarial and this many benign-lookalike red-team prompts (0: none)."""
    redteam_file: Path | None = None
    """Your own red-team prompts JSONL ({"prompt", "should_refuse"}); replaces the world's family."""
    redteam_scorer: str | None = None
    """module:function scoring a (prompt, response) -> {"refused": bool, "complied_harmful": bool}."""


@dataclass(kw_only=True)
class EvalBestOfNConfig(_Sampling, ConfigFileOption):
    model: str | None = required()
    """The policy to draw samples from (the base of best-of-n, usually SFT)."""
    prompts: Path | None = required()
    """Prompts JSONL."""
    reward_model: str | None = required()
    """The proxy reward model that picks the best of n."""
    world: Path | None = None
    """World directory: the gold reward of the picked samples (over-optimisation shows here)."""
    out: Path = Path("runs/eval-best-of-n")
    """Output directory: metrics.json, samples.jsonl, the curve plot, report.html and report.md."""
    n: int = 16
    """Samples per prompt N; curves for n = 1..N."""
    num_prompts: int | None = 64
    """Use only the first N prompts of --prompts."""


@dataclass(kw_only=True)
class EvalCheckpointsConfig(_Sampling, ConfigFileOption):
    policies: list[Path] | None = required()
    """Checkpoints of one RL run in training order (model directories, recipe outputs or checkpoint/)."""
    labels: list[str] | None = None
    """A name per checkpoint (default: the directory names), e.g. the update numbers."""
    reference: str | None = required()
    """The run's KL reference (the SFT model): the point KL = 0, and the KL of every checkpoint to it."""
    reference_name: str = "reference"
    """Name of the reference in tables."""
    reward_model: str | None = required()
    """The proxy reward model the run optimised."""
    world: Path | None = None
    """World directory: the gold reward (over-optimisation shows as gold falling while the proxy rises)."""
    prompts: Path | None = required()
    """Held-out prompts JSONL."""
    num_prompts: int | None = 64
    """Use only the first N prompts of --prompts."""
    k: int = 2
    """Samples per prompt."""
    out: Path = Path("runs/eval-checkpoints")
    """Output directory: metrics.json, samples.jsonl, the curve plot, report.html and report.md."""


@dataclass(kw_only=True)
class EvalJudgeConfig(ConfigFileOption):
    judge_file: Path | None = required()
    """Judgments JSONL (e.g. the feedback app's export): comparisons of two policies' responses."""
    name: str = "policy"
    """The policy whose win rate is reported."""
    reference_name: str = "reference"
    """The policy it is compared with."""
    policy_samples: Path | None = None
    """`prefloop sample` output of the policy (to tell whose response is whose without meta labels)."""
    reference_samples: Path | None = None
    """`prefloop sample` output of the reference."""
    out: Path = Path("runs/eval-judge")
    """Output directory: metrics.json, report.html and report.md."""


@dataclass(kw_only=True)
class EvalHumanProjectConfig(ConfigFileOption):
    policy_samples: Path | None = required()
    """`prefloop sample` output of the policy ({"prompt", "responses"} per line)."""
    reference_samples: Path | None = required()
    """`prefloop sample` output of the reference on the same prompts."""
    name: str = "policy"
    """Name of the policy (kept from annotators; the export's meta.chosen_policy / rejected_policy)."""
    reference_name: str = "reference"
    """Name of the reference."""
    url: str | None = None
    """Base URL of a running feedback app (`prefloop annotate serve`), e.g. http://127.0.0.1:8000."""
    token: str | None = None
    """An admin's API token for --url (`prefloop annotate token`); default: the PREFLOOP_APP_TOKEN environment
    variable (keeps it out of the process list and shell history)."""
    project: str | None = None
    """Name of the new pairwise project (it must not exist yet)."""
    overlap: int = 3
    """Distinct annotators who judge each pair."""
    members: list[str] | None = None
    """Usernames to add to the project as annotators."""
    per_prompt: int = 1
    """Pairs per prompt: sample k of the policy against sample k of the reference, k < per_prompt."""
    items_out: Path | None = None
    """Also (or, without --url, only) write the items JSONL, for `prefloop annotate import` into a database."""
    seed: int = 0
    """Seed of the stored left/right order (the app randomises the shown order per annotator as well)."""


@dataclass(kw_only=True)
class EvalSweepConfig(ConfigFileOption):
    runs: list[Path] | None = None
    """Output directories of `prefloop eval policy` (or demo runs), e.g. one per KL coefficient."""
    stage: str | None = None
    """Stage to take from each run (default: the last one, the evaluated policy)."""
    diversity: Literal["per_input/distinct_2", "per_input/self_bleu", "per_input/ead", "entropy", "distinct_2",
                       "self_bleu"] = "per_input/distinct_2"
    """The diversity measure on the x axis."""
    out: Path = Path("runs/eval-sweep")
    """Output directory: metrics.json, the trade-off plot, report.html and report.md."""


SUBCOMMANDS = {
    "reward": (EvalRewardConfig, "eval_reward", "a reward model on held-out comparisons"),
    "policy": (EvalPolicyConfig, "eval_policy", "a policy against a reference, under a named judge"),
    "best-of-n": (EvalBestOfNConfig, "eval_best_of_n", "best-of-n over-optimisation curves"),
    "sweep": (EvalSweepConfig, "eval_sweep", "gold reward against diversity over several runs (e.g. a KL sweep)"),
    "judge": (EvalJudgeConfig, "eval_judge", "win rate with a confidence interval from a judgments file"),
    "checkpoints": (EvalCheckpointsConfig, "eval_checkpoints",
                    "gold and proxy reward against KL over an RL run's saved checkpoints"),
    "human-project": (EvalHumanProjectConfig, "human_project",
                      "a blind pairwise project in the feedback app from two policies' samples"),
}


def _usage() -> str:
    lines = ["usage: prefloop eval <subcommand> [options]   (prefloop eval <subcommand> --help)", "",
             "subcommands:"]
    lines += [f"  {k:<14} {v[2]}" for k, v in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Entry point of `prefloop eval`; returns the exit code (2 with `error: ...` on bad input)."""
    from prefloop.cli import run_command

    args = list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if args[0].startswith("--judge-file"):
        args = ["judge", *args]
    sub, rest = args[0], args[1:]
    if sub not in SUBCOMMANDS:
        print(f"error: unknown eval subcommand '{sub}'\n\n{_usage()}", file=sys.stderr)
        return 2
    cls, fn_name, description = SUBCOMMANDS[sub]

    def run(cfg):
        # One module per subcommand: prefloop.eval.commands.<subcommand with _ for ->
        module = importlib.import_module(f"prefloop.eval.commands.{sub.replace('-', '_')}")
        getattr(module, fn_name)(cfg)

    return run_command(cls, run, rest, f"prefloop eval {sub}", description)
