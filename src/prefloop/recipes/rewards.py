"""The reward of the critic-free recipes (grpo, rloo), of best-of-n sampling and of rejection sampling:
`RewardSource`, a reward model directory (`--reward DIR`: one model, an ensemble directory or a comma list) or
a Python function (`--reward-fn package.module:function`, called as fn(prompts, responses) -> list of floats;
`world:DIR` scores with a synthetic world's gold judge).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from prefloop.data import iter_jsonl
from prefloop.errors import ConfigError, DataError
from prefloop.models import score_in_batches
from prefloop.models.ensemble import EnsembleMode, load_reward_scorer
from prefloop.rollout import SampleOutput

RewardFn = Callable[[list[str], list[str]], Sequence[float]]


def reward_model_scorer(spec: str, tokenizer, mode: EnsembleMode = "mean", lam: float = 1.0) -> torch.nn.Module:
    """A frozen module whose forward(input_ids, attention_mask) returns (B,) scores: one reward model
    directory, an ensemble directory or a comma list of directories, combined by `mode` (mean, min,
    mean-std with `lam`)."""
    return load_reward_scorer(spec, tokenizer, mode, lam)


def _import_reward_fn(spec: str) -> RewardFn:
    module_name, _, fn_name = spec.partition(":")
    if not module_name or not fn_name:
        raise ConfigError(f"--reward-fn {spec}: expected package.module:function or world:DIR")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"--reward-fn {spec}: cannot import module '{module_name}' ({e})") from None
    fn = getattr(module, fn_name, None)
    if fn is None:
        raise ConfigError(f"--reward-fn {spec}: module '{module_name}' has no attribute '{fn_name}'")
    if not callable(fn):
        raise ConfigError(f"--reward-fn {spec}: '{fn_name}' is not callable")
    return fn


def _world_reward_fn(directory: str) -> tuple[RewardFn, Callable[[str], object]]:
    from prefloop.world import load_world

    gold = load_world(directory).gold

    def score(prompts: list[str], responses: list[str]) -> list[float]:
        return [gold.score(p, r) for p, r in zip(prompts, responses)]

    return score, gold.question


@dataclass
class RewardSource:
    """Scores sampled responses: a reward model on the token ids, or a Python function on the texts."""

    name: str
    """The option it came from, for messages and prefloop.json."""
    scorer: torch.nn.Module | None = None
    fn: RewardFn | None = None
    lookup: Callable[[str], object] | None = field(default=None, repr=False)
    """world:DIR only: raises KeyError for a prompt that is not a question of the world."""

    def to(self, device) -> RewardSource:
        if self.scorer is not None:
            self.scorer.to(device)
        return self

    def check(self, prompt_texts: list[str], path: Path) -> None:
        """Fail before any work: a world prompt the gold judge does not know (naming its line in `path`), or
        a scoring function that does not return one number per response (tried on two empty responses)."""
        if self.lookup is not None:
            lines = [n for n, _ in iter_jsonl(path)]
            for line, text in zip(lines, prompt_texts):
                try:
                    self.lookup(text)
                except KeyError:
                    raise DataError.at(path, line, f"prompt is not a question of the world of {self.name}") from None
        if self.fn is not None:
            probe = prompt_texts[:2]
            self._checked(self.fn(probe, [""] * len(probe)), len(probe))

    def _checked(self, values, n: int) -> list[float]:
        try:
            scores = [float(v) for v in values]
        except (TypeError, ValueError):
            raise ConfigError(f"{self.name}: returned something other than a list of numbers") from None
        if len(scores) != n:
            raise ConfigError(f"{self.name}: returned {len(scores)} scores for {n} responses")
        if not all(math.isfinite(s) for s in scores):
            raise ConfigError(f"{self.name}: returned a score that is not finite")
        return scores

    @torch.no_grad()
    def __call__(self, prompts: list[str], responses: list[str], out: SampleOutput, batch: int = 64) -> torch.Tensor:
        """(B,) float scores of a sampled batch: `prompts` and `responses` are its texts, `out` its tokens."""
        if self.scorer is not None:
            ids = torch.cat([out.query_ids, out.response_ids], 1)
            mask = torch.cat([out.query_mask, out.response_mask], 1)
            return score_in_batches(self.scorer, ids, mask, batch).float().cpu()
        scores = self._checked(self.fn(prompts, responses), len(responses))
        return torch.tensor(scores, dtype=torch.float32)


def load_reward_source(reward: str | None, reward_fn: str | None, tokenizer, ensemble_mode: EnsembleMode = "mean",
                       ensemble_lambda: float = 1.0) -> RewardSource:
    """The reward of `--reward DIR` (a reward model or an ensemble) or `--reward-fn SPEC` (exactly one)."""
    if reward and reward_fn:
        raise ConfigError("give either --reward or --reward-fn, not both")
    if reward:
        return RewardSource(f"--reward {reward}", scorer=reward_model_scorer(reward, tokenizer, ensemble_mode,
                                                                                 ensemble_lambda))
    if not reward_fn:
        raise ConfigError("missing option --reward (a reward model directory) or --reward-fn (module:function)")
    if reward_fn.startswith("world:"):
        fn, lookup = _world_reward_fn(reward_fn[len("world:"):])
        return RewardSource(f"--reward-fn {reward_fn}", fn=fn, lookup=lookup)
    return RewardSource(f"--reward-fn {reward_fn}", fn=_import_reward_fn(reward_fn))
