"""Pretraining from scratch: train a byte-level BPE tokenizer and a small causal LM on a text corpus.

This is how the demo gets its base model P(x): the "internet" of the synthetic world, good and bad
answers together. Documents are joined with EOS and cut into fixed blocks (packing), so no compute
is spent on padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from prefloop.data import file_sha256, iter_jsonl, pack_texts
from prefloop.errors import DataError, require
from prefloop.models import CausalLMLoss, gpt2_config, llama_config, load_causal_lm, load_tokenizer
from prefloop.runtime.seeding import EPOCH_SEED_STRIDE

from .common import CommonConfig, micro_batches, shard, total_steps
from .context import RunContext
from .memory import MemoryOptions, built_model_options
from .options import EpochsOption, required


@dataclass(kw_only=True)
class PretrainConfig(EpochsOption, CommonConfig, MemoryOptions):
    data: Path | None = required()
    """Corpus: .jsonl with a "text" field per document, or .txt with one document per line."""
    tokenizer: str | None = None
    """Use this tokenizer instead of training one (a local directory or hub id)."""
    vocab_size: int = 1024
    """Vocabulary size of the trained BPE tokenizer (special tokens included)."""
    arch: Literal["llama", "gpt2"] = "llama"
    """Architecture of the new model."""
    size: Literal["micro", "demo-tiny", "demo", "tiny", "small"] = "demo"
    """Model size preset (see prefloop.models.SIZES)."""
    max_length: int = 128
    """Block length of the packed training sequences."""
    lr: float = 2e-3
    warmup_ratio: float = 0.05
    schedule: Literal["linear", "cosine", "constant"] = "cosine"
    batch_size: int = 32
    """Packed sequences of --max-length tokens per optimizer step (global)."""


def read_corpus(path: Path) -> list[str]:
    """Documents of a .jsonl corpus (a string field "text" per record, through the checked JSONL reader)
    or of a .txt file (one per non-blank line)."""
    path = Path(path)
    if path.suffix == ".jsonl" or path.name.endswith(".jsonl.gz"):
        texts = []
        for line, rec in iter_jsonl(path, nul=False):
            if not isinstance(rec.get("text"), str) or not rec["text"].strip():
                raise DataError.at(path, line, "expected a non-empty string field 'text'")
            texts.append(rec["text"])
        return texts
    if not path.is_file():
        raise DataError.whole(path, "file not found" if not path.exists() else "is not a file")
    texts = []
    for i, line in enumerate(path.read_bytes().splitlines(), 1):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError.at(path, i, "not valid UTF-8") from None
        if line.strip():
            texts.append(line)
    if not texts:
        raise DataError.whole(path, "no documents")
    return texts


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE (any text is encodable), EOS `<|endoftext|>` and a distinct pad `<|pad|>`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from prefloop.data import DEFAULT_CHAT_TEMPLATE

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", pad_token="<|pad|>")
    tok.chat_template = DEFAULT_CHAT_TEMPLATE
    return tok


def new_model(tok, arch: str, size: str, max_positions: int):
    from transformers import AutoModelForCausalLM

    make = llama_config if arch == "llama" else gpt2_config
    cfg = make(len(tok), size, max_positions=max_positions, pad_token_id=tok.pad_token_id,
               eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    return AutoModelForCausalLM.from_config(cfg)


def run_pretrain(cfg: PretrainConfig) -> dict:
    require(cfg, "data")
    ctx = RunContext("pretrain", cfg)
    texts = read_corpus(cfg.data)
    if ctx.resuming:
        tok = load_tokenizer(ctx.init_path("model", ""))
    elif cfg.tokenizer:
        tok = load_tokenizer(cfg.tokenizer)
    else:
        tok = train_tokenizer(texts, cfg.vocab_size)
    blocks = pack_texts(tok, texts, cfg.max_length)
    if blocks.shape[0] == 0:
        raise DataError(f"{cfg.data}: corpus is shorter than one block of {cfg.max_length} tokens")

    lm = load_causal_lm(ctx.init_path("model", ""), tok) if ctx.resuming else new_model(
        tok, cfg.arch, cfg.size, max(512, cfg.max_length))
    model = CausalLMLoss(built_model_options(lm, cfg))
    model.train()
    n_blocks = blocks.shape[0]
    batch = min(cfg.batch_size, n_blocks)
    steps_per_epoch = n_blocks // batch
    steps = total_steps(cfg, steps_per_epoch, cfg.epochs)
    state = ctx.resume_state()
    opt, sched = ctx.optimizer(model.parameters(), steps, state)
    model, opt = ctx.prepare(model, opt)

    step = ctx.start(steps, state)
    denom = batch * (cfg.max_length - 1) / ctx.world
    while step < steps:
        epoch, i = divmod(step, steps_per_epoch)
        perm = torch.randperm(n_blocks, generator=torch.Generator().manual_seed(cfg.seed * EPOCH_SEED_STRIDE + epoch))
        idx = perm[i * batch:(i + 1) * batch].tolist()
        local_sum = 0.0
        for mb in ctx.accumulate(micro_batches(shard(idx, ctx.rank, ctx.world), cfg.micro_batch_size), model):
            ids = blocks[mb].to(ctx.device)
            with ctx.acc.autocast():
                loss_sum = model(ids, torch.ones_like(ids), ids)
            ctx.acc.backward(loss_sum / denom)
            local_sum += loss_sum.item()
        grad_norm = ctx.step(opt, sched)
        step += 1
        loss = ctx.all_sum(local_sum) / (denom * ctx.world)
        ctx.log(step, {"loss/lm": loss, "lr": sched.get_last_lr()[0], "grad_norm": grad_norm}, show=("loss/lm",))
        ctx.maybe_checkpoint(step, steps, {"model": ctx.acc.unwrap_model(model).lm}, tok, opt, sched)

    metrics = {"loss/lm": ctx.logger.history[-1]["loss/lm"] if ctx.logger.history else None, "steps": steps,
               "blocks": n_blocks, "parameters": sum(p.numel() for p in lm.parameters()), "vocab_size": len(tok)}
    return ctx.finish(ctx.acc.unwrap_model(model).lm, tok, metrics, {"data": file_sha256(cfg.data)})
