"""Length-grouped, cropped micro-batches: fewer padding positions, the same loss and gradients."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM

from prefloop.models import ResponseForward, gpt2_config
from prefloop.models.fused import fuse_activations
from prefloop.recipes.rl_common import RowLengths
from prefloop.rl import PairLogprobs, RolloutBatch, masked_mean, ppo_policy_loss
from prefloop.rl.batches import length_groups


def _cost(lengths, groups, overhead):
    return sum(len(g) * max(lengths[i] for i in g) + overhead for g in groups)


def _brute_best(lengths, cap, overhead):
    """The cheapest cut of the sorted order into consecutive groups of at most `cap`, by enumeration."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    best = math.inf
    for cuts in itertools.product([0, 1], repeat=len(order) - 1):
        groups, start = [], 0
        for k, c in enumerate(cuts, 1):
            if c:
                groups.append(order[start:k])
                start = k
        groups.append(order[start:])
        if all(len(g) <= cap for g in groups):
            best = min(best, _cost(lengths, groups, overhead))
    return best


@pytest.mark.parametrize("seed", range(4))
def test_length_groups_are_the_cheapest_cut_and_cover_every_row_once(seed):
    g = torch.Generator().manual_seed(seed)
    lengths = (torch.randint(20, 200, (9,), generator=g)).tolist()
    for cap, overhead in ((None, 64), (4, 64), (9, 0), (3, 1000)):
        groups = length_groups(lengths, cap, overhead)
        assert sorted(i for grp in groups for i in grp) == list(range(9))
        assert all(len(grp) <= (cap or 9) for grp in groups)
        assert _cost(lengths, groups, overhead) == _brute_best(lengths, cap or 9, overhead)


def test_length_groups_equal_count_and_limits():
    lengths = [5, 100, 6, 101, 7, 102, 8]
    # A large spread with a small overhead splits; equal_count gives ceil(n / max_rows) groups whatever the lengths.
    assert len(length_groups(lengths, None, 0)) > 1
    assert length_groups(lengths, None, 10_000) == [[0, 2, 4, 6, 1, 3, 5]]
    assert [len(grp) for grp in length_groups(lengths, 3, 0, equal_count=True)] == [3, 3, 1]
    assert length_groups(lengths, None, 0, equal_count=True) == [[0, 2, 4, 6, 1, 3, 5]]
    assert length_groups([], 4) == []


def _rollout(vocab=64):
    """Left-padded prompts of very different lengths, right-padded responses of different lengths."""
    g = torch.Generator().manual_seed(0)
    q_lens, r_lens = [2, 15, 3, 14, 4, 16], [5, 3, 6, 2, 6, 4]
    B, P, R = len(q_lens), max(q_lens), max(r_lens)
    q_ids, q_mask = torch.zeros(B, P, dtype=torch.long), torch.zeros(B, P, dtype=torch.long)
    r_ids, r_mask = torch.zeros(B, R, dtype=torch.long), torch.zeros(B, R, dtype=torch.long)
    for i, (q, r) in enumerate(zip(q_lens, r_lens)):
        q_ids[i, P - q:] = torch.randint(1, vocab, (q,), generator=g)
        q_mask[i, P - q:] = 1
        r_ids[i, :r] = torch.randint(1, vocab, (r,), generator=g)
        r_mask[i, :r] = 1
    old = torch.randn(B, R, generator=g) * 0.1 - 4.0
    adv = torch.randn(B, R, generator=g)
    return RolloutBatch(query_ids=q_ids, query_mask=q_mask, response_ids=r_ids, response_mask=r_mask,
                        logprobs=old * r_mask, advantages=adv * r_mask)


def _loss_and_grads(fwd, batch, groups, crop):
    """Sum over micro-batches of the token-weighted PPO loss, as the PPO update accumulates it."""
    lengths = RowLengths(batch.query_mask, batch.response_mask)
    total_tokens = lengths.tokens(range(len(batch)))
    fwd.zero_grad()
    total = 0.0
    for rows in groups:
        sub = batch.select(rows)
        if crop:
            sub = sub.crop(*lengths.columns(rows))
        ids, attn = torch.cat([sub.query_ids, sub.response_ids], 1), torch.cat([sub.query_mask, sub.response_mask], 1)
        logp, _, _ = fwd(ids, attn, sub.response_ids)
        mask = sub.response_mask.float()
        loss, _ = ppo_policy_loss(logp, sub.logprobs, sub.advantages, mask)
        loss = loss * lengths.tokens(rows) / total_tokens
        loss.backward()
        total += float(loss.detach())
    return total, torch.cat([p.grad.flatten() for p in fwd.parameters()])


def test_grouped_cropped_micro_batches_give_the_loss_and_gradients_of_one_padded_batch():
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(gpt2_config(64, "micro"))
    fuse_activations(lm)
    fwd = ResponseForward(lm).train()
    batch = _rollout()
    lengths = RowLengths(batch.query_mask, batch.response_mask)
    groups = lengths.groups(SimpleNamespace(world=1), range(len(batch)), 2)
    assert len(groups) == 3 and all(len(g) == 2 for g in groups)
    # The grouped micro-batches compute far fewer positions than the padded batch.
    padded = len(batch) * (batch.query_ids.shape[1] + batch.response_ids.shape[1])
    cropped = sum(len(g) * sum(lengths.columns(g)) for g in groups)
    cropped_starts = [lengths.columns(g)[0] for g in groups]
    assert cropped < 0.75 * padded and max(cropped_starts) > 0
    whole_loss, whole_grads = _loss_and_grads(fwd, batch, [list(range(len(batch)))], crop=False)
    loss, grads = _loss_and_grads(fwd, batch, groups, crop=True)
    assert loss == pytest.approx(whole_loss, rel=1e-5, abs=1e-6)
    torch.testing.assert_close(grads, whole_grads, rtol=1e-4, atol=1e-6)


def test_crop_keeps_every_real_token_and_only_drops_padding():
    batch = _rollout()
    lengths = RowLengths(batch.query_mask, batch.response_mask)
    rows = [0, 2]  # prompts of 2 and 3 tokens, responses of 5 and 6
    sub = batch.select(rows).crop(*lengths.columns(rows))
    assert sub.query_ids.shape[1] == 3 and sub.response_ids.shape[1] == 6
    assert int(sub.query_mask.sum()) == 5 and int(sub.response_mask.sum()) == 11
    for name in ("response_ids", "response_mask", "logprobs", "advantages"):
        assert torch.equal(getattr(sub, name), getattr(batch.select(rows), name)[:, :6])
    assert torch.equal(masked_mean(sub.advantages, sub.response_mask),
                       masked_mean(batch.select(rows).advantages, batch.select(rows).response_mask))


def test_dpo_reference_pass_by_length_returns_each_pairs_logprobs_in_the_given_order():
    from prefloop.data.encode_more import PromptedPair
    from prefloop.recipes.dpo import SequenceLogprobs, pair_logprobs

    torch.manual_seed(0)
    fwd = SequenceLogprobs(AutoModelForCausalLM.from_config(gpt2_config(64, "micro"))).eval()
    g = torch.Generator().manual_seed(2)
    pairs = []
    for n in (30, 5, 22, 7, 28, 4, 12):  # lengths out of order, so the pass reorders them
        prompt = torch.randint(1, 64, (3,), generator=g).tolist()
        pairs.append(PromptedPair(prompt + torch.randint(1, 64, (n,), generator=g).tolist(),
                                  prompt + torch.randint(1, 64, (n // 2 + 1,), generator=g).tolist(), 3))
    batched = pair_logprobs(fwd, pairs, 0, "cpu", batch_size=3)
    alone = PairLogprobs.cat([pair_logprobs(fwd, [p], 0, "cpu", 1) for p in pairs])
    for name in ("chosen", "rejected", "chosen_tokens", "rejected_tokens"):
        torch.testing.assert_close(getattr(batched, name), getattr(alone, name), rtol=1e-5, atol=1e-5)
