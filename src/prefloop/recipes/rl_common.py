"""What the RL recipes (ppo, grpo and rloo) share around their loops: prompts and their order, sampling a
rollout, minibatch plans, random streams for a resume, and the rollout metrics every one of them logs. Each
recipe's file keeps its loop and its algorithm; the tensor math is in prefloop.rl."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from prefloop.data import encode_prompt, left_pad, read_prompts, render_prompt
from prefloop.errors import ConfigError
from prefloop.rl.batches import GROUP_OVERHEAD_TOKENS, GROUP_OVERHEAD_TOKENS_GPU, length_groups
from prefloop.rollout import LocalEngine
from prefloop.runtime.seeding import PROMPT_ORDER_STRIDE

from .common import GoldFn, decode_responses

# What the progress bar shows and prefloop.json keeps of the last update.
SHOW = ("rollout/score_mean", "kl/k1", "gold/mean")
FINAL = ("rollout/score_mean", "kl/k1", "kl/coef", "gold/mean")


def read_rl_prompts(cfg, tok) -> tuple[list[str], list[list[int]]]:
    """The prompts as rendered text and as token ids, cut from the left to leave room for the response."""
    max_prompt = cfg.max_length - cfg.max_new_tokens
    if max_prompt < 1:
        raise ConfigError("--max-length must exceed --max-new-tokens")
    texts = [render_prompt(tok, p.prompt) for p in read_prompts(cfg.prompts)]
    return texts, [encode_prompt(tok, t)[-max_prompt:] for t in texts]


def prompt_indices(n_prompts: int, per_update: int, update: int, start: int, count: int, seed: int) -> list[int]:
    """Prompt indices `start .. start + count` of update `update`, when each update takes `per_update`
    prompts from a seeded permutation per pass over the data (the same on every process)."""
    out = []
    for k in range(update * per_update + start, update * per_update + start + count):
        epoch, i = divmod(k, n_prompts)
        perm = torch.randperm(n_prompts, generator=torch.Generator().manual_seed(seed * PROMPT_ORDER_STRIDE + epoch))
        out.append(int(perm[i]))
    return out


def rollout(ctx, policy_fwd, prompt_ids: list[list[int]], tok, sampling, generator, micro_batch_size=None):
    """Samples of the current policy for these (unpadded) prompts, one row each (docs/ppo.md items 1-4),
    `micro_batch_size` rows at a time (all at once when None)."""
    policy = ctx.acc.unwrap_model(policy_fwd).lm
    policy.eval()
    q_ids, q_mask = left_pad(prompt_ids, tok.pad_token_id)
    with ctx.gathered(policy_fwd):  # the sampler calls the model's parts itself: whole weights under FSDP2
        return LocalEngine(policy, micro_batch_size).generate(q_ids.to(ctx.device), q_mask.to(ctx.device),
                                                              sampling, generator)


def minibatches(n_local: int, size: int, epochs: int, generator: torch.Generator) -> Iterator[list[int]]:
    """Rows of this process's rollout, `size` at a time, in a fresh random order every epoch (docs/ppo.md
    item 17): one optimizer step each."""
    for _ in range(epochs):
        perm = torch.randperm(n_local, generator=generator)
        for start in range(0, n_local, size):
            yield perm[start:start + size].tolist()


class RowLengths:
    """Prompt and response tokens of every row of a rollout (left-padded prompts, right-padded responses), read
    to the host once per update, so that grouping and cropping micro-batches needs no device transfer."""

    def __init__(self, query_mask: torch.Tensor, response_mask: torch.Tensor):
        self.width = query_mask.shape[1]
        self.overhead = GROUP_OVERHEAD_TOKENS if query_mask.device.type == "cpu" else GROUP_OVERHEAD_TOKENS_GPU
        self.query, self.response = torch.stack([query_mask.sum(1), response_mask.sum(1)]).cpu().tolist()

    def groups(self, ctx, rows, micro_batch_size: int | None) -> list[list[int]]:
        """`rows` as micro-batches of rows of similar length (fewer padding positions), at most
        `micro_batch_size` rows each; with several processes, as many micro-batches on each."""
        rows = list(rows)
        cut = length_groups([self.query[i] + self.response[i] for i in rows], micro_batch_size, self.overhead,
                            equal_count=ctx.world > 1)
        return [[rows[k] for k in g] for g in cut]

    def columns(self, rows: list[int]) -> tuple[int, int]:
        """(first prompt column, response columns) that these rows use: `RolloutBatch.crop`'s arguments. One
        prompt column stays even for empty prompts, so the first response token keeps a state to predict it."""
        return self.width - min(self.width, max(1, max(self.query[i] for i in rows))), \
            max(self.response[i] for i in rows)

    def tokens(self, rows) -> int:
        return sum(self.response[i] for i in rows)


def add_stats(sums: dict[str, float], stats: dict, weight: float = 1.0) -> None:
    """Add one micro-batch's statistics times its share of the minibatch (the weight of its loss), so that
    the sums over a minibatch are its means however it was cut; a nan (an empty micro-batch's ratio, say)
    counts as 0."""
    for k, v in stats.items():
        sums[k] = sums.get(k, 0.0) + (v * weight if v == v else 0.0)


def generator_states(ctx, *generators: torch.Generator) -> list:
    """Every process's random streams (gathered: each process draws its own), for the checkpoint."""
    return ctx.gather_object(tuple(g.get_state() for g in generators))


def restore_generators(saved: list, ctx, *generators: torch.Generator) -> None:
    mine = saved[ctx.rank]
    if torch.is_tensor(mine):  # checkpoints of earlier versions hold one stream's state per process
        mine = (mine,) * len(generators)
    for g, s in zip(generators, mine):
        g.set_state(s)


def global_mean(ctx, x: torch.Tensor, n: int) -> float:
    """Mean over the rollout of all processes (n rows in all) of this process's per-row values."""
    return ctx.all_sum(float(x.float().sum())) / n


def rollout_metrics(ctx, n: int, out, raw: torch.Tensor, scores: torch.Tensor) -> dict:
    """Metrics of a scored rollout of n rows (all processes): the score the policy is trained on, the reward
    before normalisation and the no-EOS penalty, response lengths and the share of responses without an end."""
    m = {"rollout/score_mean": global_mean(ctx, scores, n), "rollout/reward_raw": global_mean(ctx, raw, n),
         "rollout/response_length": global_mean(ctx, out.response_mask.sum(1), n),
         "rollout/no_eos_fraction": global_mean(ctx, ~out.ended, n)}
    m["rollout/score_std"] = max(0.0, ctx.all_sum(float((scores.float() ** 2).sum())) / n
                                 - m["rollout/score_mean"] ** 2) ** 0.5
    return m


def gold_mean(ctx, n: int, gold_fn: GoldFn, tok, out, prompts: list[str]) -> float:
    """Mean gold score of the rollout (the synthetic world's judge, or any scoring function)."""
    responses = decode_responses(tok, out.response_ids, out.response_mask)
    return global_mean(ctx, torch.tensor(gold_fn(prompts, responses)), n)


def final_metrics(ctx, timer) -> dict:
    last = ctx.logger.history[-1] if ctx.logger.history else {}
    return {**{k: last.get(k) for k in FINAL}, "time_split": dict(timer.totals)}
