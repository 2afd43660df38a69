"""Shared pieces of the benchmark: the run shape, FLOP counts, the matmul peak, summaries.

FLOP convention (benchmarks/README.md): a matmul weight costs 2 FLOPs per token forward and 4 backward, so a
training token costs 6 N and a forward-only token 2 N, where N counts the weights that multiply
activations (the transformer blocks plus the output head; embedding lookups cost no matmul). Attention
score FLOPs (about 12 * layers * d * T per token) are left out, as in the usual 6 N convention. Only real
(non-pad) tokens count, so padding, recomputation (gradient checkpointing) and any other overhead show up
as lost utilisation.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

THREADS = 2


@dataclass(frozen=True)
class Shape:
    """What one benchmark run does; identical for both frameworks."""

    steps: int  # optimizer steps (sft, reward, dpo) or RL updates (ppo, grpo, rloo), warm-up included
    warmup: int  # leading steps left out of the timing
    batch: int = 16  # sequences (sft), pairs (reward, dpo), completions per update (rl)
    max_length: int = 256
    new_tokens: int = 48  # rl: tokens sampled per completion
    samples_per_prompt: int = 4  # grpo / rloo (and TRL's side of ppo): completions per prompt

    def to_json(self) -> dict:
        return asdict(self)


def train_flops(n_params: int, tokens: int) -> float:
    return 6.0 * n_params * tokens


def rl_flops_ppo(n_lm: int, n_rm: int, tokens: int, epochs: int) -> float:
    """One prefloop PPO update over `tokens` real prompt + response tokens:
    sampling 2 N_lm (prefill + decode), scoring 2 N_lm (policy) + 2 N_lm (reference) + 2 N_rm (critic)
    + 2 N_rm (reward model), update `epochs` x (6 N_lm policy + 6 N_rm critic)."""
    return tokens * (2 * n_lm + 4 * n_lm + 4 * n_rm + epochs * 6 * (n_lm + n_rm))


def rl_flops_group(n_lm: int, n_rm: int, tokens: int, ref: bool, old: bool) -> float:
    """One critic-free update (GRPO / RLOO, one optimizer step per rollout) over `tokens` real prompt +
    response tokens: sampling 2 N_lm, scoring 2 N_rm (reward model) + 2 N_lm (reference, when the KL
    coefficient is not 0) + 2 N_lm (old log-probs, when a side computes them with a separate forward instead
    of taking them from the sampler or the differentiated forward), update 6 N_lm (no critic)."""
    return tokens * (2 * n_lm + (2 * n_lm if old else 0) + (2 * n_lm if ref else 0) + 2 * n_rm + 6 * n_lm)


def rl_flops_rloo(n_lm: int, n_rm: int, tokens: int, ref: bool = True) -> float:
    """One TRL RLOO step (num_iterations=1): TRL always computes the old log-probs with a separate forward."""
    return rl_flops_group(n_lm, n_rm, tokens, ref=ref, old=True)


def dpo_flops(n_lm: int, tokens: int) -> float:
    """One DPO step over `tokens` real chosen + rejected tokens: the reference forward (2 N, precomputed or
    not, it is done once per pair) plus the policy's training step (6 N)."""
    return 8.0 * n_lm * tokens


def matmul_peak(sizes=(256, 512, 1024, 1536, 2048), budget_s: float = 1.5) -> dict:
    """Best fp32 GFLOP/s of torch.matmul on square matrices, with THREADS threads."""
    import torch

    torch.set_num_threads(THREADS)
    by_size = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.matmul(a, b)  # warm-up
        best, t_end = float("inf"), time.perf_counter() + budget_s
        reps = 0
        while time.perf_counter() < t_end or reps < 3:
            t = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - t)
            reps += 1
        by_size[n] = 2 * n ** 3 / best / 1e9
    return {"gflops": max(by_size.values()), "by_size": by_size}


def summarise(run: dict, warmup: int) -> dict:
    """Timed-step summary of one run: median step time, throughput and FLOP/s over the timed steps."""
    times = run["step_times"][warmup:]
    n = len(times)
    if n == 0:
        raise ValueError("no timed steps: raise --steps above the warm-up")
    total = sum(times)
    out = {
        "timed_steps": n,
        "median_step_s": statistics.median(times),
        "samples_per_s": sum(run["samples"][warmup:warmup + n]) / total,
        "tokens_per_s": sum(run["tokens"][warmup:warmup + n]) / total,
        "flops_per_s": sum(run["flops"][warmup:warmup + n]) / total,
    }
    if run.get("padded_tokens"):
        out["pad_fraction"] = 1 - sum(run["tokens"][warmup:warmup + n]) / sum(run["padded_tokens"][warmup:warmup + n])
    if run.get("split"):
        split = run["split"][warmup:warmup + n]
        out["split_s"] = {k: statistics.median(s[k] for s in split) for k in split[0]}
    if run.get("train_step_times"):  # dpo: the steps alone, without the precomputed reference's share
        train = sum(run["train_step_times"][warmup:warmup + n])
        out["train_only_samples_per_s"] = sum(run["samples"][warmup:warmup + n]) / train
        out["reference_s"] = run["reference_s"]
    if run.get("generated_tokens"):
        out["sample_tokens_per_s"] = sum(run["generated_tokens"][warmup:warmup + n]) / sum(
            s["sample"] for s in run["split"][warmup:warmup + n])
    return out


def median_of(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
