"""Sampling K completions per prompt to JSONL (input for annotation, evaluation and comparisons), and
best-of-n: sample N, score them under a reward model or a scoring function, keep the best.

Also home of `RewardSource`, the reward of the critic-free recipes (grpo, rloo) and of rejection sampling:
a reward model directory (`--reward DIR`) or a Python function (`--reward-fn package.module:function`,
called as fn(prompts, responses) -> list of floats; `world:DIR` scores with a synthetic world's gold judge).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from prefloop.data import encode_prompt, iter_jsonl, left_pad, read_prompts, render_prompt, write_jsonl
from prefloop.errors import ConfigError, DataError, require
from prefloop.models import load_causal_lm, load_tokenizer, score_in_batches
from prefloop.models.ensemble import EnsembleMode, load_reward_scorer
from prefloop.rollout import SampleOutput, SamplingConfig, sample
from prefloop.runtime import StepProgress, make_accelerator, seed_everything
from prefloop.runtime.accel import Precision
from prefloop.runtime.distributed import gather_shares, my_share, rank_and_world

RewardFn = Callable[[list[str], list[str]], Sequence[float]]


# -- rewards -------------------------------------------------------------------------------------------------


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


# -- sampling ------------------------------------------------------------------------------------------------


def device_generator(device, seed: int) -> torch.Generator:
    """A seeded generator on the device the sampler draws on (torch.rand refuses a CPU generator for
    CUDA tensors)."""
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


@dataclass
class Samples:
    """K samples for each of P prompts; every field is indexed [prompt][sample]."""

    responses: list[list[str]]
    ended: list[list[bool]]
    lengths: list[list[int]]
    scores: list[list[float]] | None = None
    """Only when a reward source was given."""

    def best(self) -> list[int]:
        """Per prompt, the index of the top-scored sample (the first of equal maxima)."""
        return [max(range(len(row)), key=row.__getitem__) for row in self.scores]


def sample_and_score(model, tok, prompt_texts: list[str], k: int, scfg: SamplingConfig, batch_size: int,
                     generator: torch.Generator, max_prompt: int, device="cpu", reward: RewardSource | None = None,
                     progress: bool = False, distributed: bool = False) -> Samples:
    """K samples per prompt with our KV-cache sampler, scored batch by batch when `reward` is given.

    distributed: in a run of several processes, each samples its share of the prompts (prompt i on process
    i mod world) and every process returns all of them in prompt order; `generator` must then be seeded per
    process (`process_seed`), or the processes would repeat each other's draws."""
    rank, world = rank_and_world() if distributed else (0, 1)
    mine = my_share(prompt_texts, rank, world)
    s = _sample_and_score(model, tok, mine, k, scfg, batch_size, generator, max_prompt, device, reward,
                          progress and rank == 0)
    if world == 1:
        return s
    rows = gather_shares(list(zip(s.responses, s.ended, s.lengths, s.scores or [None] * len(mine))), world)
    return Samples([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                   [r[3] for r in rows] if reward is not None else None)


@torch.no_grad()
def _sample_and_score(model, tok, prompt_texts: list[str], k: int, scfg: SamplingConfig, batch_size: int,
                      generator: torch.Generator, max_prompt: int, device, reward: RewardSource | None,
                      progress: bool) -> Samples:
    model.eval()
    rows = [(i, j) for i in range(len(prompt_texts)) for j in range(k)]
    enc = [encode_prompt(tok, t)[-max_prompt:] for t in prompt_texts]
    res = Samples([[""] * k for _ in prompt_texts], [[False] * k for _ in prompt_texts],
                  [[0] * k for _ in prompt_texts], [[0.0] * k for _ in prompt_texts] if reward else None)
    bar = StepProgress("sample", total=len(rows), enabled=progress)
    for s in range(0, len(rows), batch_size):
        chunk = rows[s:s + batch_size]
        q, qm = left_pad([enc[i] for i, _ in chunk], tok.pad_token_id)
        out = sample(model, q.to(device), qm.to(device), scfg, generator=generator)
        texts = []
        for r, (i, j) in enumerate(chunk):
            toks = out.response_ids[r][out.response_mask[r].bool()].tolist()
            texts.append(tok.decode(toks, skip_special_tokens=True))
            res.responses[i][j], res.ended[i][j], res.lengths[i][j] = texts[-1], bool(out.ended[r]), len(toks)
        if reward is not None:
            scores = reward([prompt_texts[i] for i, _ in chunk], texts, out, batch_size).tolist()
            for (i, j), v in zip(chunk, scores):
                res.scores[i][j] = v
        bar.update(len(chunk))
    bar.close()
    return res


def sample_texts(model, tok, prompt_texts: list[str], k: int, scfg: SamplingConfig, batch_size: int,
                 generator: torch.Generator, max_prompt: int, device="cpu", progress: bool = False):
    """K samples for each prompt: returns (responses[i][j], ended[i][j], token count[i][j])."""
    s = sample_and_score(model, tok, prompt_texts, k, scfg, batch_size, generator, max_prompt, device,
                         progress=progress)
    return s.responses, s.ended, s.lengths


# -- the command ---------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class SampleConfig:
    config: Path | None = None
    """YAML file with option values; options given on the command line override it."""
    model: str | None = None
    """Policy to sample from: a local Hugging Face directory or a hub id."""
    prompts: Path | None = None
    """Prompts JSONL: {"prompt": text or messages}."""
    out: Path = Path("samples.jsonl")
    """Output JSONL: one {"prompt", "responses": [K texts], "ended": [K bools], "model"} per prompt (plus
    "scores" with a reward); with --best-of: {"prompt", "response", "score", "best_index", "model"}."""
    num_samples: int = 4
    """Completions per prompt (K)."""
    best_of: int | None = None
    """Best-of-n: sample N per prompt (instead of --num-samples) and write only the top-scored one under
    --reward or --reward-fn."""
    keep_all: bool = False
    """With --best-of: also write all N responses with their scores ("responses", "scores", "ended")."""
    reward: str | None = None
    """Reward model directory that scores the samples (or an ensemble: a directory with ensemble.json, or
    directories joined by commas)."""
    ensemble_mode: EnsembleMode = "mean"
    """How an ensemble's scores combine: mean, min (worst case) or mean-std (mean - lambda * std)."""
    ensemble_lambda: float = 1.0
    """lambda of --ensemble-mode mean-std."""
    reward_fn: str | None = None
    """Scoring function instead of a reward model: package.module:function, called as
    fn(prompts, responses) and returning one float per response; or world:DIR for a synthetic world's
    gold judge."""
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    batch_size: int = 32
    """Sequences sampled together."""
    max_length: int = 512
    """Prompts are cut from the left to leave room for --max-new-tokens."""
    seed: int = 0
    precision: Precision = "auto"


def _records(cfg: SampleConfig, prompts, s: Samples) -> list[dict]:
    if cfg.best_of is None:
        rows = [{"prompt": p.prompt, "responses": r, "ended": e, "model": str(cfg.model)}
                for p, r, e in zip(prompts, s.responses, s.ended)]
        if s.scores is not None:
            for row, sc in zip(rows, s.scores):
                row["scores"] = sc
        return rows
    rows = []
    for i, (p, b) in enumerate(zip(prompts, s.best())):
        row = {"prompt": p.prompt, "response": s.responses[i][b], "score": s.scores[i][b], "best_index": b,
               "model": str(cfg.model)}
        if cfg.keep_all:
            row.update(responses=s.responses[i], scores=s.scores[i], ended=s.ended[i])
        rows.append(row)
    return rows


def run_sample(cfg: SampleConfig) -> Path:
    require(cfg, "model", "prompts")
    if cfg.best_of is not None and cfg.best_of < 1:
        raise ConfigError(f"--best-of must be >= 1, got {cfg.best_of}")
    if cfg.keep_all and cfg.best_of is None:
        raise ConfigError("--keep-all needs --best-of")
    acc = make_accelerator(cfg.precision)
    seed = seed_everything(cfg.seed, acc.process_index)
    tok = load_tokenizer(cfg.model)
    prompts = read_prompts(cfg.prompts)
    texts = [render_prompt(tok, p.prompt) for p in prompts]
    reward = None
    if cfg.best_of is not None or cfg.reward or cfg.reward_fn:
        reward = load_reward_source(cfg.reward, cfg.reward_fn, tok, cfg.ensemble_mode, cfg.ensemble_lambda)
        reward.to(acc.device)
        reward.check(texts, cfg.prompts)
    model = load_causal_lm(cfg.model, tok).to(acc.device)
    scfg = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                          top_k=cfg.top_k, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    gen = device_generator(acc.device, seed)  # one stream per process: no two processes draw alike
    k = cfg.best_of if cfg.best_of is not None else cfg.num_samples
    s = sample_and_score(model, tok, texts, k, scfg, cfg.batch_size, gen, max(1, cfg.max_length - cfg.max_new_tokens),
                         acc.device, reward=reward, progress=True, distributed=True)
    if acc.is_main_process:
        write_jsonl(cfg.out, _records(cfg, prompts, s))
    acc.wait_for_everyone()
    return cfg.out
