"""Models layer: rewards at the last real token, head initialisation, dropout off, clear load errors."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from prefloop.errors import ModelLoadError
from prefloop.models import (
    CriticForward,
    ValueHead,
    gpt2_config,
    init_score_head,
    last_token_index,
    llama_config,
    load_causal_lm,
    load_reward_model,
    sequence_scores,
)


@pytest.mark.parametrize("make", [llama_config, gpt2_config])
def test_reward_read_at_last_real_token_with_any_padding(make):
    """docs/ppo.md item 8: the same sequence scores the same alone, left padded and right padded."""
    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_config(make(50, "micro", num_labels=1, pad_token_id=0)).eval()
    seq = torch.tensor([[5, 6, 7, 8]])
    alone = sequence_scores(rm, seq, torch.ones_like(seq))
    ids = torch.tensor([[0, 0, 5, 6, 7, 8, 0], [5, 6, 7, 8, 0, 0, 0]])
    mask = (torch.arange(7) >= 2).long().unsqueeze(0).repeat(2, 1)
    mask[0] = torch.tensor([0, 0, 1, 1, 1, 1, 0])
    mask[1] = torch.tensor([1, 1, 1, 1, 0, 0, 0])
    both = sequence_scores(rm, ids, mask)
    torch.testing.assert_close(both, alone.repeat(2), atol=1e-5, rtol=1e-4)
    assert last_token_index(mask).tolist() == [5, 3]
    vals = CriticForward(rm)(ids, mask, 6)  # V(s_t) at positions 0..5, as a critic initialised from it reads
    assert vals.shape == (2, 6)
    torch.testing.assert_close(vals[0, 5], alone[0], atol=1e-5, rtol=1e-4)


def test_reward_head_init_and_value_head_zero():
    """docs/ppo.md item 9: reward head ~ N(0, 1/sqrt(d+1)); a value head starts at zero."""
    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_config(llama_config(50, "small", num_labels=1, pad_token_id=0))
    init_score_head(rm)
    d = rm.score.weight.shape[1]
    assert abs(rm.score.weight.std().item() - 1 / math.sqrt(d + 1)) < 0.15 / math.sqrt(d + 1)
    vh = ValueHead(16)
    assert vh(torch.randn(2, 3, 16)).abs().max().item() == 0.0


def test_dropout_disabled_on_load(tmp_path):
    """docs/ppo.md item 12: dropout off, so two forwards in train mode agree."""
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_config(gpt2_config(50, "micro", resid_pdrop=0.3, embd_pdrop=0.3, attn_pdrop=0.3))
    m.save_pretrained(tmp_path)
    loaded = load_causal_lm(str(tmp_path)).train()
    x = torch.randint(0, 50, (2, 6))
    torch.testing.assert_close(loaded(x).logits, loaded(x).logits)


def test_unknown_model_paths_name_the_path(tmp_path):
    with pytest.raises(ModelLoadError, match="does/not/exist: causal language model directory does not exist"):
        load_causal_lm("./does/not/exist")
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(ModelLoadError, match="is a file"):
        load_reward_model(str(f))
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_causal_lm(str(tmp_path))
    with pytest.raises(ModelLoadError, match="no-such-org/no-such-model"):
        load_causal_lm("no-such-org/no-such-model")
