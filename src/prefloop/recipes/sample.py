"""Sampling K completions per prompt to JSONL: input for annotation, evaluation and comparisons."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from prefloop.data import encode_prompt, left_pad, read_prompts, render_prompt, write_jsonl
from prefloop.models import load_causal_lm, load_tokenizer
from prefloop.rollout import SamplingConfig, sample
from prefloop.runtime import StepProgress, make_accelerator, seed_everything
from prefloop.runtime.accel import Precision

from .common import require


@dataclass(kw_only=True)
class SampleConfig:
    config: Path | None = None
    """YAML file with option values; options given on the command line override it."""
    model: str | None = None
    """Policy to sample from: a local Hugging Face directory or a hub id."""
    prompts: Path | None = None
    """Prompts JSONL: {"prompt": text or messages}."""
    out: Path = Path("samples.jsonl")
    """Output JSONL: one {"prompt", "responses": [K texts], "ended": [K bools], "model"} per prompt."""
    num_samples: int = 4
    """Completions per prompt (K)."""
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


@torch.no_grad()
def sample_texts(model, tok, prompt_texts: list[str], k: int, scfg: SamplingConfig, batch_size: int,
                 generator: torch.Generator, max_prompt: int, device="cpu", progress: bool = False):
    """K samples for each prompt: returns (responses[i][j], ended[i][j], token count[i][j])."""
    model.eval()
    rows = [(i, j) for i in range(len(prompt_texts)) for j in range(k)]
    enc = [encode_prompt(tok, t)[-max_prompt:] for t in prompt_texts]
    responses = [[""] * k for _ in prompt_texts]
    ended = [[False] * k for _ in prompt_texts]
    lengths = [[0] * k for _ in prompt_texts]
    bar = StepProgress("sample", total=len(rows), enabled=progress)
    for s in range(0, len(rows), batch_size):
        chunk = rows[s:s + batch_size]
        q, qm = left_pad([enc[i] for i, _ in chunk], tok.pad_token_id)
        out = sample(model, q.to(device), qm.to(device), scfg, generator=generator)
        for r, (i, j) in enumerate(chunk):
            m = out.response_mask[r].bool()
            toks = out.response_ids[r][m].tolist()
            responses[i][j] = tok.decode(toks, skip_special_tokens=True)
            ended[i][j] = bool(out.ended[r])
            lengths[i][j] = len(toks)
        bar.update(len(chunk))
    bar.close()
    return responses, ended, lengths


def run_sample(cfg: SampleConfig) -> Path:
    require(cfg, "model", "prompts")
    acc = make_accelerator(cfg.precision)
    seed_everything(cfg.seed, acc.process_index)
    tok = load_tokenizer(cfg.model)
    prompts = read_prompts(cfg.prompts)
    model = load_causal_lm(cfg.model, tok).to(acc.device)
    scfg = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                          top_k=cfg.top_k, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    texts = [render_prompt(tok, p.prompt) for p in prompts]
    gen = torch.Generator().manual_seed(cfg.seed)
    responses, ended, _ = sample_texts(model, tok, texts, cfg.num_samples, scfg, cfg.batch_size, gen,
                                       max(1, cfg.max_length - cfg.max_new_tokens), acc.device, progress=True)
    write_jsonl(cfg.out, [{"prompt": p.prompt, "responses": r, "ended": e, "model": str(cfg.model)}
                          for p, r, e in zip(prompts, responses, ended)])
    return cfg.out
