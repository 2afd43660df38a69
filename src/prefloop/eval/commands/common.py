"""What the `prefloop eval` subcommands share: loading a reward model, a world and prompts, the sampling
settings, reading `prefloop sample` output, and writing metrics.json with the report of OUT."""

from __future__ import annotations

import math
from pathlib import Path

from prefloop.data import iter_jsonl, read_prompts, render_prompt
from prefloop.errors import DataError
from prefloop.models import load_reward_model, load_tokenizer
from prefloop.rollout import SamplingConfig
from prefloop.runtime import console, write_json

from ..report_run import write_report


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
    write_json(out / "metrics.json", clean(metrics))
    html = write_report(out)
    console.print(f"[bold green]eval done[/]: {out / 'metrics.json'}, {html}")
    return html


def load_rm(path: str):
    """(reward model in eval mode, its tokenizer)."""
    tok = load_tokenizer(path)
    return load_reward_model(path, tok).eval(), tok


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


def sampling(cfg, tok) -> SamplingConfig:
    """The SamplingConfig of a subcommand's sampling options."""
    return SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                          top_k=cfg.top_k, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)


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
