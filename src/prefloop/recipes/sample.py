"""Sampling K completions per prompt to JSONL (input for annotation, evaluation and comparisons), and
best-of-n: sample N, score them under a reward model or a scoring function (`rewards.RewardSource`), keep
the best.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from prefloop.data import encode_prompt, left_pad, read_prompts, render_prompt, write_jsonl
from prefloop.errors import ConfigError, require
from prefloop.models import load_causal_lm, load_tokenizer
from prefloop.models.precision import Precision
from prefloop.rollout import LocalEngine, SamplingConfig
from prefloop.runtime import StepProgress, make_accelerator, seed_everything
from prefloop.runtime.distributed import gather_shares, my_share, rank_and_world

from .options import ConfigFileOption, RewardOptions, SamplingOptions, required
from .rewards import RewardSource, load_reward_source

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
        out = LocalEngine(model).generate(q.to(device), qm.to(device), scfg, generator)
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


# -- the command ---------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class SampleConfig(SamplingOptions, RewardOptions, ConfigFileOption):
    model: str | None = required()
    """Policy to sample from: a local Hugging Face directory or a hub id."""
    prompts: Path | None = required()
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
    batch_size: int = 32
    """Sequences sampled together."""
    max_length: int = 512
    """Prompts are cut from the left to leave room for --max-new-tokens."""
    seed: int = 0
    """Random seed of the sampler."""
    precision: Precision = "auto"
    """The computation: auto (bf16 autocast on a GPU that supports it, fp32 otherwise), fp32, bf16, or fp16."""


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
        replaced = replace_nul(s)
        if replaced:
            print(f"warning: sample: {replaced} sample(s) held a NUL character, written with U+FFFD in its place "
                  "(the trainers' readers and the feedback app refuse NUL)", file=sys.stderr)
        write_jsonl(cfg.out, _records(cfg, prompts, s))
        print(sample_summary(cfg, s, k), flush=True)
    acc.wait_for_everyone()
    return cfg.out


def replace_nul(s: Samples) -> int:
    """Replace NUL characters in the samples by U+FFFD (as the feedback app stores them); returns how many
    samples held one. A model can sample a NUL (byte-level tokenizers encode it), but no reader of prefloop's
    files takes one; replacing, not dropping, keeps every prompt's K samples, so two sample files still pair
    prompt by prompt. Scores stay those of the sampled text."""
    n = 0
    for row in s.responses:
        for j, text in enumerate(row):
            if "\x00" in text:
                row[j], n = text.replace("\x00", "\ufffd"), n + 1
    return n


def sample_summary(cfg: SampleConfig, s: Samples, k: int) -> str:
    """`sample: 64 prompts x 4 samples, mean score 0.31, 3% never ended, written to samples.jsonl`."""
    parts = [f"sample: {len(s.responses)} prompts x {k} samples"]
    if s.scores is not None:
        flat = [x for row in s.scores for x in row]
        best = [row[b] for row, b in zip(s.scores, s.best())]
        parts.append(f"mean score {sum(flat) / max(1, len(flat)):.4g}")
        if cfg.best_of is not None:
            parts.append(f"mean best-of-{k} score {sum(best) / max(1, len(best)):.4g}")
    ended = [e for row in s.ended for e in row]
    parts.append(f"{100 * (1 - sum(ended) / max(1, len(ended))):.0f}% never ended")
    return ", ".join(parts + [f"written to {cfg.out}"])
