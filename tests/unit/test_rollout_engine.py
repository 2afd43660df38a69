"""The rollout engine interface and prefloop's own engine."""

from __future__ import annotations

import torch

from prefloop.rollout import LocalEngine, RolloutEngine, response_logprobs, sample

from .test_rollout_continuous import LENGTHS, assert_same, ends_often
from .test_rollout_sampler import cfg, left_padded


def test_local_engine_is_a_rollout_engine_and_samples_like_sample():
    model = ends_often("llama")
    engine = LocalEngine(model, slots=3)
    assert isinstance(engine, RolloutEngine)
    ids, mask = left_padded(LENGTHS)
    out = engine.generate(ids, mask, cfg(max_new_tokens=8), torch.Generator().manual_seed(4))
    assert_same(out, sample(model, ids, mask, cfg(max_new_tokens=8), generator=torch.Generator().manual_seed(4)))


def test_update_weights_samples_from_the_new_weights():
    """After update_weights the recorded log-probs are the new model's (what PPO's ratio needs), not the old."""
    old, new = ends_often("gpt2"), ends_often("gpt2")
    with torch.no_grad():
        for p in new.parameters():
            p.add_(0.5 * torch.randn_like(p))
    engine = LocalEngine(old, slots=4)
    engine.update_weights(new)
    ids, mask = left_padded(LENGTHS)
    out = engine.generate(ids, mask, cfg(max_new_tokens=6), torch.Generator().manual_seed(0))
    args = (out.query_ids, out.query_mask, out.response_ids, out.response_mask)
    torch.testing.assert_close(out.logprobs, response_logprobs(new, *args), atol=1e-4, rtol=0)
    assert (out.logprobs - response_logprobs(old, *args)).abs().max() > 0.1
