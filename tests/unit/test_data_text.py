"""Chat templates, tokenisation, truncation, padding, packing and length-grouped batches."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from prefloop.data import (
    DEFAULT_CHAT_TEMPLATE,
    Comparison,
    collate_pairs,
    collate_sft,
    encode_completion,
    encode_example,
    encode_pair,
    encode_prompt,
    ensure_pad_token,
    left_pad,
    length_grouped_order,
    pack_texts,
    render_completion,
    render_prompt,
)

SENTENCES = ["User: What is 3 plus 4?\nAssistant: 7.", "User: Tell me about the moon.\nAssistant: It is far.",
             "System: Be brief.\nUser: hello there\nAssistant: Hello! How can I help?"] * 3
Q = "User: What is 3 plus 4?\nAssistant:"
USER = [{"role": "user", "content": "What is 3 plus 4?"}]


def make_tokenizer(bos: bool = False, append_eos: bool = False, pad: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on a few sentences: special tokens <eos>=0, <pad>=1, <bos>=2."""
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(SENTENCES, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<eos>", "<pad>", "<bos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    single = ("<bos> " if bos else "") + "$A" + (" <eos>" if append_eos else "")
    tk.post_processor = processors.TemplateProcessing(single=single,
                                                      special_tokens=[("<eos>", 0), ("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<pad>" if pad else None,
                                   bos_token="<bos>" if bos else None)


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


# -- templates ----------------------------------------------------------------------------------------

def test_default_template_matches_standard_form(tok):
    assert tok.chat_template is None
    assert render_prompt(tok, USER) == Q
    assert render_completion(tok, USER, "7.") == " 7."
    assert render_completion(tok, USER, [{"role": "assistant", "content": "7."}]) == " 7."
    # text prompts and completions pass through
    assert render_prompt(tok, Q) == Q and render_completion(tok, Q, " 7.") == " 7."
    # the same tokens whichever form the data came in
    standard = encode_pair(tok, Comparison(Q, " 7.", " 8."), 64)
    conversational = encode_pair(tok, Comparison(USER, [{"role": "assistant", "content": "7."}], "8."), 64)
    assert standard == conversational


def test_default_template_multi_turn(tok):
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "What is 3 plus 4?"}]
    assert render_prompt(tok, conv) == ("System: Be brief.\nUser: hello there\nAssistant: Hello!\n"
                                        "User: What is 3 plus 4?\nAssistant:")
    assert tok.apply_chat_template(conv, chat_template=DEFAULT_CHAT_TEMPLATE, tokenize=False).endswith("4?\n")


def test_tokenizer_own_chat_template_is_used():
    tok = make_tokenizer()
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<eos>{{ '\\n' }}"
                         "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    assert render_prompt(tok, USER) == "<|user|>What is 3 plus 4?<eos>\n<|assistant|>"
    # the turn's "<eos>\n" is cut: the EOS token is appended at tokenisation instead
    assert render_completion(tok, USER, "7.") == "7."


def test_template_that_is_not_prefix_consistent_is_refused():
    tok = make_tokenizer()
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ '\\n' }}{% endfor %}"
                         "{% if add_generation_prompt %}Bot:{% endif %}")
    with pytest.raises(ValueError, match="not prefix-consistent"):
        render_completion(tok, USER, "7.")


# -- token ids and truncation -------------------------------------------------------------------------

@pytest.mark.parametrize("bos", [False, True])
def test_prompt_masking(bos):
    tok = make_tokenizer(bos=bos)
    e = encode_example(tok, Q, " 7.", max_length=64)
    p, c = encode_prompt(tok, Q), encode_completion(tok, " 7.")
    assert e.input_ids == p + c and not e.truncated
    assert e.prompt_len == len(p)
    assert e.labels[:len(p)] == [-100] * len(p)
    assert e.labels[len(p):] == c and -100 not in c
    assert e.input_ids[-1] == e.labels[-1] == tok.eos_token_id
    assert (e.input_ids[0] == tok.bos_token_id) == bos
    assert tok.decode(c[:-1]) == " 7."


def test_prompt_never_ends_with_eos_and_bos_is_not_doubled():
    tok = make_tokenizer(bos=True, append_eos=True)
    assert tok("hi")["input_ids"][-1] == tok.eos_token_id
    ids = encode_prompt(tok, Q)
    assert ids[0] == tok.bos_token_id and ids[-1] != tok.eos_token_id
    assert encode_prompt(tok, "<bos>" + Q) == ids  # a template that writes the BOS itself


def test_truncation_keeps_the_end_of_the_prompt():
    tok = make_tokenizer(bos=True)
    long_prompt = "User: " + "tell me about the moon " * 20 + "\nAssistant:"
    p, c = encode_prompt(tok, long_prompt), encode_completion(tok, " 7.")
    e = encode_example(tok, long_prompt, " 7.", max_length=24)
    assert e.truncated and len(e.input_ids) == 24
    # BOS stays, then the end of the prompt; the short completion is whole, EOS included
    assert e.input_ids[:e.prompt_len] == [tok.bos_token_id] + p[len(p) - e.prompt_len + 1:]
    assert e.input_ids[e.prompt_len:] == c and e.input_ids[-1] == tok.eos_token_id
    assert tok.decode(e.input_ids[e.prompt_len - 3:e.prompt_len]).endswith("Assistant:")


def test_truncation_of_a_long_completion(tok):
    long_prompt = "User: " + "tell me about the moon " * 20 + "\nAssistant:"
    long_completion = " It is far." * 30
    e = encode_example(tok, long_prompt, long_completion, max_length=20)
    # the prompt gets max_length // 2 tokens, the completion the rest, cut from the right without EOS
    assert e.truncated and e.prompt_len == 10 and len(e.input_ids) == 20
    assert e.input_ids[10:] == encode_completion(tok, long_completion)[:10]
    assert tok.eos_token_id not in e.input_ids


def test_pair_truncation_keeps_one_prompt(tok):
    long_prompt = "User: " + "tell me about the moon " * 10 + "\nAssistant:"
    chosen, rejected = encode_pair(tok, Comparison(long_prompt, " 7.", " It is far." * 3), max_length=20)
    assert len(chosen) <= 20 and len(rejected) <= 20
    n_prompt = len(chosen) - len(encode_completion(tok, " 7."))
    assert chosen[:n_prompt] == rejected[:n_prompt]
    assert chosen[-1] == tok.eos_token_id


# -- pad token and batches ----------------------------------------------------------------------------

def test_ensure_pad_token():
    tok = make_tokenizer(pad=False)
    n = len(tok)
    assert ensure_pad_token(tok) is True
    assert tok.pad_token == "<|pad|>" and tok.pad_token_id != tok.eos_token_id and len(tok) == n + 1
    assert ensure_pad_token(tok) is False and len(tok) == n + 1
    same = make_tokenizer(pad=False)
    same.pad_token = same.eos_token
    assert ensure_pad_token(same) is True and same.pad_token_id != same.eos_token_id
    assert ensure_pad_token(make_tokenizer()) is False  # already a distinct pad


def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [8], []], pad_id=1)
    assert ids.tolist() == [[5, 6, 7], [1, 1, 8], [1, 1, 1]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    assert ids.dtype == mask.dtype == torch.long
    assert left_pad([], 1)[0].shape == (0, 0)


def test_collate_sft_and_pairs(tok):
    a = encode_example(tok, Q, " 7.", 64)
    b = encode_example(tok, "User: hello there\nAssistant:", " Hello! How can I help?", 64)
    batch = collate_sft([a, b], tok.pad_token_id)
    T = max(len(a.input_ids), len(b.input_ids))
    assert batch.input_ids.shape == batch.attention_mask.shape == batch.labels.shape == (2, T)
    for row, e in enumerate([a, b]):
        n = len(e.input_ids)
        assert batch.input_ids[row, :n].tolist() == e.input_ids
        assert batch.attention_mask[row].tolist() == [1] * n + [0] * (T - n)
        assert batch.labels[row].tolist() == e.labels + [-100] * (T - n)
        assert batch.input_ids[row, n:].eq(tok.pad_token_id).all()
    pairs = collate_pairs([([3, 4, 5], [3, 4]), ([6], [6, 7, 8, 9])], pad_id=1, margins=[1.0, 0.5])
    assert pairs.chosen_ids.shape == pairs.rejected_ids.shape == (2, 4)
    assert pairs.chosen_ids.tolist() == [[3, 4, 5, 1], [6, 1, 1, 1]]
    assert pairs.rejected_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert pairs.margin.dtype == torch.float32 and pairs.margin.tolist() == [1.0, 0.5]
    assert collate_pairs([([1], [2])], 0).margin is None
    # With prompt lengths (DPO): response masks, and rows() stacks chosen rows over rejected rows, (2B, T).
    dpo = collate_pairs([([3, 4, 5], [3, 4]), ([6, 7], [6, 7, 8, 9])], pad_id=1, prompt_lens=[1, 2])
    ids, mask, response = dpo.rows()
    assert ids.tolist() == [[3, 4, 5, 1], [6, 7, 1, 1], [3, 4, 1, 1], [6, 7, 8, 9]]
    assert mask.tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    assert response.tolist() == [[0, 1, 1, 0], [0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1]]
    assert pairs.rows()[2] is None


def test_pack_texts(tok):
    texts = ["hello there", "What is 3 plus 4?", "It is far.", "the moon"] * 3
    per_text = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    flat = [i for ids in per_text for i in [*ids, tok.eos_token_id]]
    blocks = pack_texts(tok, texts, block_size=8)
    assert blocks.shape == (len(flat) // 8, 8) and blocks.dtype == torch.long
    assert blocks.flatten().tolist() == flat[:blocks.numel()]  # the tail is dropped
    assert (blocks == tok.eos_token_id).sum() == flat[:blocks.numel()].count(tok.eos_token_id) > 0
    assert pack_texts(tok, ["hi"], block_size=64).shape == (0, 64)


def _padding(batches, lengths):
    return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)


def test_length_grouped_order():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 200, (1000,), generator=g).tolist()
    batches = length_grouped_order(lengths, 8, torch.Generator().manual_seed(1))
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert sum(len(b) != 8 for b in batches) == 0  # 1000 = 125 * 8
    perm = torch.randperm(1000, generator=torch.Generator().manual_seed(1)).tolist()
    random_batches = [perm[i:i + 8] for i in range(0, 1000, 8)]
    assert _padding(batches, lengths) < 0.2 * _padding(random_batches, lengths)
    # deterministic for a seed, different across seeds
    assert batches == length_grouped_order(lengths, 8, torch.Generator().manual_seed(1))
    assert batches != length_grouped_order(lengths, 8, torch.Generator().manual_seed(2))
    short = length_grouped_order([3, 1, 2], 2, torch.Generator().manual_seed(0))
    assert sorted(len(b) for b in short) == [1, 2] and sorted(sum(short, [])) == [0, 1, 2]
