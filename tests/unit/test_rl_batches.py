"""prefloop.rl.batches: typed containers, select (minibatches) and to (devices)."""

import pytest
import torch

from prefloop.rl import PairLogprobs, PreferenceBatch, RolloutBatch, SFTBatch


def rollout(B=4, P=3, R=5, **extra):
    ar = torch.arange(B)
    return RolloutBatch(
        query_ids=ar[:, None].repeat(1, P), query_mask=torch.ones(B, P, dtype=torch.long),
        response_ids=ar[:, None].repeat(1, R) * 10, response_mask=torch.ones(B, R, dtype=torch.long),
        logprobs=ar[:, None].float().repeat(1, R), scores=ar.float(), **extra)


def test_select_slices_every_tensor_in_order_and_skips_none():
    b = rollout()
    sub = b.select(torch.tensor([2, 0]))
    assert sub.query_ids[:, 0].tolist() == [2, 0]
    assert sub.response_ids[:, 0].tolist() == [20, 0]
    assert sub.logprobs[:, 0].tolist() == [2.0, 0.0]
    assert sub.scores.tolist() == [2.0, 0.0]
    assert sub.values is None and sub.advantages is None
    assert len(sub) == 2 and len(b) == 4
    assert b.select([3]).scores.tolist() == [3.0]  # a list of ints works too
    assert b.scores.tolist() == [0.0, 1.0, 2.0, 3.0]  # the original is untouched


def test_to_moves_every_tensor():
    moved = rollout().to("meta")
    assert moved.query_ids.device.type == "meta" and moved.scores.device.type == "meta"
    assert moved.values is None


def test_shape_checks():
    with pytest.raises(ValueError, match="batch size"):
        rollout(values=torch.zeros(3, 5))
    with pytest.raises(ValueError, match="values"):
        rollout(values=torch.zeros(4, 6))


def test_preference_and_sft_batches():
    ids = torch.arange(12).reshape(3, 4)
    pb = PreferenceBatch(ids, torch.ones(3, 4), ids + 100, torch.ones(3, 4))
    sub = pb.select(torch.tensor([1]))
    assert sub.chosen_ids.tolist() == [[4, 5, 6, 7]] and sub.rejected_ids.tolist() == [[104, 105, 106, 107]]
    assert sub.margin is None
    pb = PreferenceBatch(ids, torch.ones(3, 4), ids, torch.ones(3, 4), margin=torch.tensor([0.0, 1.0, 2.0]))
    assert pb.select(torch.tensor([2, 1])).margin.tolist() == [2.0, 1.0]
    labels = ids.clone()
    labels[:, :2] = -100
    sft = SFTBatch(ids, torch.ones(3, 4, dtype=torch.long), labels).select(torch.tensor([0, 2]))
    assert sft.labels.tolist() == [[-100, -100, 2, 3], [-100, -100, 10, 11]]
    with pytest.raises(ValueError):
        SFTBatch(ids, torch.ones(2, 4), labels)


def test_pair_logprobs_split_select_concatenate_and_average():
    # (2B,) rows of a PreferenceBatch forward: chosen rows first. Named fields replace column indices.
    sums, counts = torch.tensor([-4.0, -1.0, -9.0, -2.0]), torch.tensor([2.0, 1.0, 3.0, 0.0])
    lp = PairLogprobs.from_rows(sums, counts)
    assert lp.chosen.tolist() == [-4.0, -1.0] and lp.rejected.tolist() == [-9.0, -2.0]
    assert lp.chosen_tokens.tolist() == [2.0, 1.0] and lp.rejected_tokens.tolist() == [3.0, 0.0]
    assert [t.tolist() for t in lp.sequence_logps()] == [[-4.0, -1.0], [-9.0, -2.0]]  # sums (DPO)
    # Per-token averages (IPO); an empty response divides by 1, not 0.
    assert [t.tolist() for t in lp.sequence_logps(per_token=True)] == [[-2.0, -1.0], [-3.0, -2.0]]
    both = PairLogprobs.cat([lp, lp.select([1])])
    assert both.chosen.tolist() == [-4.0, -1.0, -1.0] and both.rejected_tokens.tolist() == [3.0, 0.0, 0.0]
    assert len(PairLogprobs.cat([])) == 0
