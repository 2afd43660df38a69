"""Sampling throughput: prefloop.rollout.sample against transformers' model.generate.

Both sample from a randomly initialised tiny Llama (the "tiny" size of benchmarks/README.md: 4 layers, d=256, 8 heads,
vocabulary 8,192), fp32, 2 threads, left-padded prompts of mixed lengths (~64 tokens), the same number of
new tokens per row (fixed length: no early stop), top_k=0, top_p=1. `generate` is asked for tokens only
(no scores or logits: its fastest setting); `sample` also returns the log-prob of every sampled token.
Runs alternate between the two, medians over repetitions.

    python benchmarks/bench_sampling.py            # full run, prints a markdown table
    python benchmarks/bench_sampling.py --quick    # a short check
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import torch
import transformers

from prefloop.rollout import SamplingConfig, sample

PAD, EOS = 0, 2


def tiny_llama(vocab: int) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8,
        max_position_embeddings=512, bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD,
    )
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


def prompts(batch: int, length: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts with lengths uniform in [length / 2, length]."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=g)
    mask = (torch.arange(length)[None] >= length - lengths[:, None]).long()
    ids = torch.randint(3, vocab, (batch, length), generator=g).masked_fill(mask == 0, PAD)
    return ids, mask


def matmul_peak(size: int = 1024, reps: int = 10) -> float:
    """fp32 GFLOP/s of a square matmul, the best of `reps` (the limit in benchmarks/README.md)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * size**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def useful_flops(model: torch.nn.Module, prompt_tokens: int, new_tokens: int) -> float:
    """2 FLOPs per weight per real token through the trunk, plus the LM head for sampled tokens only
    (attention score FLOPs and pad tokens are not counted)."""
    head = model.get_output_embeddings().weight.numel()
    trunk = sum(p.numel() for p in model.parameters()) - head - model.get_input_embeddings().weight.numel()
    return 2 * trunk * (prompt_tokens + new_tokens) + 2 * head * new_tokens


def bench(batch: int, prompt_len: int, new: int, reps: int, vocab: int) -> dict:
    model = tiny_llama(vocab)
    ids, mask = prompts(batch, prompt_len, vocab, seed=batch)
    cfg = SamplingConfig(max_new_tokens=new, eos_token_id=EOS, pad_token_id=PAD, stop_at_eos=False)

    def ours():
        out = sample(model, ids, mask, cfg, generator=torch.Generator().manual_seed(1))
        assert out.response_ids.shape == (batch, new)

    def theirs():
        with torch.no_grad():
            out = model.generate(
                input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, top_p=1.0, max_new_tokens=new,
                min_new_tokens=new, pad_token_id=PAD, eos_token_id=EOS,
            )
        assert out.shape == (batch, prompt_len + new)

    ours(), theirs()  # warm-up
    times = {"prefloop": [], "generate": []}
    for _ in range(reps):
        times["prefloop"].append(_timed(ours))
        times["generate"].append(_timed(theirs))
    tokens = batch * new
    flops = useful_flops(model, int(mask.sum()), tokens)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "batch": batch, "ours_tps": tokens / med["prefloop"], "hf_tps": tokens / med["generate"],
        "ours_gflops": flops / med["prefloop"] / 1e9, "times": times,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 32 only, 2 repetitions, 16 new tokens")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches, reps, new = ([32], 2, 16) if args.quick else ([32, 64], args.reps, 48)
    prompt_len, vocab = 64, 8192

    peak = matmul_peak()
    rows = [bench(b, prompt_len, new, reps, vocab) for b in batches]
    peak = max(peak, matmul_peak())  # measured before and after, the higher of the two

    print(f"\n{datetime.date.today()}, {platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, transformers {transformers.__version__}; "
          f"command: python benchmarks/bench_sampling.py{' --quick' if args.quick else ''}")
    print(f"tiny Llama (4 layers, d=256, 8 heads, vocab {vocab}), fp32, prompts {prompt_len} tokens "
          f"left padded (lengths {prompt_len // 2}-{prompt_len}), {new} new tokens per row, fixed length, "
          f"top_k=0, top_p=1; median of {reps} alternating runs; fp32 matmul peak {peak:.0f} GFLOP/s\n")
    print("| batch | prefloop `sample` (tokens/s) | HF `generate` (tokens/s) | ratio "
          "| prefloop useful GFLOP/s (% of matmul peak) |")
    print("|---|---|---|---|---|")
    for r in rows:
        ratio = r["ours_tps"] / r["hf_tps"]
        print(f"| {r['batch']} | {r['ours_tps']:.0f} | {r['hf_tps']:.0f} | {ratio:.2f}x "
              f"| {r['ours_gflops']:.1f} ({100 * r['ours_gflops'] / peak:.0f}%) |")
    print("\nprefloop also returns the log-prob of every sampled token; generate was asked for tokens only.")
    for r in rows:
        runs = {k: [round(t, 3) for t in v] for k, v in r["times"].items()}
        print(f"batch {r['batch']} seconds per run: {runs}")


if __name__ == "__main__":
    main()
