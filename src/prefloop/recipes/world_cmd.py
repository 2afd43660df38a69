"""`prefloop world --out DIR`: write the synthetic assistant world's files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from prefloop.runtime import console

from .options import ConfigFileOption


@dataclass(kw_only=True)
class WorldCommand(ConfigFileOption):
    out: Path = Path("runs/world")
    """Directory for corpus.jsonl, demonstrations.jsonl, prompts_*.jsonl, comparisons.jsonl, world.json."""
    preset: Literal["default", "tiny"] = "default"
    """Size of the world."""
    seed: int = 0
    """Random seed: the same preset and seed write the same world."""


def run_world_command(cfg: WorldCommand) -> Path:
    from prefloop.world import WorldConfig, build_world, write_world

    world = build_world(WorldConfig.preset(cfg.preset, seed=cfg.seed))
    write_world(world, cfg.out)
    console.print(f"world written to {cfg.out}: {len(world.corpus)} corpus documents, "
                  f"{len(world.demonstrations)} demonstrations, {len(world.train_prompts)} train / "
                  f"{len(world.heldout_prompts)} held-out prompts")
    return Path(cfg.out)
