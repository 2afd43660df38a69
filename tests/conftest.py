"""Shared fixtures: a tiny tokenizer and models built from configs, small data written in the test."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))

GOOD = ["good", "great", "fine", "nice"]
BAD = ["bad", "awful", "poor", "ugly"]


def question(rng: random.Random) -> str:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    return f"User: What is {a} plus {b}?\nAssistant:"


def answer(rng: random.Random, words: list[str]) -> str:
    return f" It is {rng.choice(words)} {rng.randint(0, 18)}."


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def toy_texts() -> list[str]:
    rng = random.Random(0)
    return [question(rng) + answer(rng, GOOD + BAD) for _ in range(400)]


@pytest.fixture(scope="session")
def tokenizer(toy_texts):
    from prefloop.recipes.pretrain import train_tokenizer

    return train_tokenizer(toy_texts, vocab_size=300)


@pytest.fixture(scope="session")
def policy_dir(tmp_path_factory, tokenizer) -> Path:
    """A micro Llama (random init) saved with its tokenizer, like any HF checkpoint."""
    from prefloop.recipes.pretrain import new_model

    torch.manual_seed(0)
    model = new_model(tokenizer, "llama", "micro", 128)
    d = tmp_path_factory.mktemp("policy")
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory, toy_texts) -> dict[str, Path]:
    """Prompts, demonstrations and comparisons (chosen has a GOOD word, rejected a BAD one)."""
    rng = random.Random(1)
    d = tmp_path_factory.mktemp("data")
    qs = [question(rng) for _ in range(200)]
    return {
        "corpus": write_jsonl(d / "corpus.jsonl", [{"text": t} for t in toy_texts]),
        "prompts": write_jsonl(d / "prompts.jsonl", [{"prompt": q} for q in qs[:64]]),
        "demos": write_jsonl(d / "demos.jsonl", [{"prompt": q, "completion": answer(rng, GOOD)} for q in qs]),
        "pairs": write_jsonl(d / "pairs.jsonl", [{"prompt": q, "chosen": answer(rng, GOOD),
                                                  "rejected": answer(rng, BAD)} for q in qs]),
    }


@pytest.fixture(scope="session")
def reward_dir(tmp_path_factory, policy_dir, toy_data) -> Path:
    """A micro reward model trained to prefer GOOD words (used by the PPO tests)."""
    from prefloop.recipes.reward import RewardConfig, run_reward

    out = tmp_path_factory.mktemp("rm")
    run_reward(RewardConfig(model=str(policy_dir), data=toy_data["pairs"], out=out, epochs=3, lr=3e-3,
                            batch_size=16, eval_fraction=0.2, max_length=64, seed=0))
    return out / "model"


@pytest.fixture(scope="session")
def world_and_policy(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny world written to disk and a micro policy (random init) whose tokenizer was trained on its corpus."""
    from prefloop.recipes.pretrain import new_model, train_tokenizer
    from prefloop.world import WorldConfig, build_world, write_world

    d = tmp_path_factory.mktemp("tinyworld")
    world = build_world(WorldConfig.preset("tiny", seed=0))
    write_world(world, d / "world")
    tok = train_tokenizer(world.corpus[:400], vocab_size=400)
    torch.manual_seed(0)
    model = new_model(tok, "llama", "micro", 128)
    model.save_pretrained(d / "policy")
    tok.save_pretrained(d / "policy")
    return d / "world", d / "policy"


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` need a CUDA GPU: skipped, with the reason shown, where there is none."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
