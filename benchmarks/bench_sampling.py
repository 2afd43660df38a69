"""Sampling throughput: prefloop.rollout.sample against transformers' model.generate.

Both sample from a randomly initialised tiny Llama (the "tiny" size of benchmarks/README.md: 4 layers, d=256, 8 heads,
vocabulary 8,192), fp32, 2 threads, left-padded prompts of mixed lengths (~64 tokens), top_k=0, top_p=1, in two
settings:

- fixed: every row samples exactly `--new` tokens (no early stop), the comparison of the decode step itself;
- eos: responses end at EOS (a bias on the EOS logit gives P(EOS) = 1/24 per step, so lengths are roughly
  geometric, mean ~20, cut at `--new`), where ended rows cost the rectangular sampler and `generate` but leave
  the batch of continuous batching.

Throughput counts real new tokens (up to and including EOS). Contenders: prefloop's default (continuous
batching, all rows in slots at once), prefloop's rectangular path (`continuous=False`), and, at the larger
batch, continuous batching over a quarter of the rows as slots (the KV cache of a quarter). `generate` is asked
for tokens only (no scores or logits: its fastest setting); `sample` also returns the log-prob of every sampled
token. Runs alternate between the contenders; medians over repetitions; the load average is printed.

    python benchmarks/bench_sampling.py            # full run (batch 64 and 256), prints markdown tables
    python benchmarks/bench_sampling.py --quick    # a short check
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import time

import torch
import transformers

from prefloop.rollout import SamplingConfig, sample

PAD, EOS = 0, 2
EOS_RATE = 1 / 24


def tiny_llama(vocab: int, eos_bias: bool = False) -> torch.nn.Module:
    """The tiny Llama; with `eos_bias` its vocabulary projection gets a bias that makes EOS about EOS_RATE
    likely at every step (its random logits are near 0, so the others weigh ~1 each)."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8,
        max_position_embeddings=512, bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD,
    )
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    if eos_bias:
        old = model.get_output_embeddings()
        head = torch.nn.Linear(old.in_features, vocab, bias=True)
        with torch.no_grad():
            head.weight.copy_(old.weight)
            head.bias.zero_()
            head.bias[EOS] = math.log(EOS_RATE / (1 - EOS_RATE) * (vocab - 1))
        model.set_output_embeddings(head)
    return model.eval()


def prompts(batch: int, length: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts with lengths uniform in [length / 2, length]."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=g)
    mask = (torch.arange(length)[None] >= length - lengths[:, None]).long()
    ids = torch.randint(3, vocab, (batch, length), generator=g).masked_fill(mask == 0, PAD)
    return ids, mask


def _timed(fn) -> tuple[float, float, int]:
    """Wall seconds, process CPU seconds (all threads) and new tokens of one call of `fn` (which returns its
    number of new tokens). CPU time is the steadier of the two on a shared machine: time spent waiting for a
    core does not count."""
    start, cpu = time.perf_counter(), time.process_time()
    tokens = fn()
    return time.perf_counter() - start, time.process_time() - cpu, tokens


def generated_tokens(new: torch.Tensor) -> int:
    """Real new tokens of `generate`'s (B, R) output: up to and including the first EOS of each row."""
    is_eos = (new == EOS).long()
    return int(((is_eos.cumsum(-1) - is_eos) == 0).sum())


def contenders(model, ids, mask, new: int, stop: bool) -> dict:
    batch = ids.shape[0]
    cfg = SamplingConfig(max_new_tokens=new, eos_token_id=EOS, pad_token_id=PAD, stop_at_eos=stop)

    def ours(**kw):
        def run() -> int:
            out = sample(model, ids, mask, cfg, generator=torch.Generator().manual_seed(1), **kw)
            return int(out.response_mask.sum())
        return run

    def theirs() -> int:
        with torch.no_grad():
            out = model.generate(
                input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, top_p=1.0, max_new_tokens=new,
                min_new_tokens=None if stop else new, pad_token_id=PAD, eos_token_id=EOS,
            )
        return generated_tokens(out[:, ids.shape[1]:]) if stop else batch * new

    runs = {"prefloop": ours(), "prefloop rectangular": ours(continuous=False), "generate": theirs}
    if stop and batch >= 128:
        runs[f"prefloop {batch // 4} slots"] = ours(micro_batch_size=batch // 4)
    return runs


def bench(batch: int, prompt_len: int, new: int, reps: int, vocab: int, stop: bool) -> dict:
    model = tiny_llama(vocab, eos_bias=stop)
    ids, mask = prompts(batch, prompt_len, vocab, seed=batch)
    runs = contenders(model, ids, mask, new, stop)
    for fn in runs.values():  # warm-up
        fn()
    times, cpu, tokens = ({k: [] for k in runs} for _ in range(3))
    load = [os.getloadavg()[0]]
    for _ in range(reps):
        for k, fn in runs.items():
            t, c, n = _timed(fn)
            times[k].append(t)
            cpu[k].append(c)
            tokens[k].append(n)
        load.append(os.getloadavg()[0])
    # medians of new tokens per second; the token counts differ between contenders only in eos mode
    tps = {k: statistics.median(n / t for n, t in zip(tokens[k], times[k])) for k in runs}
    tpc = {k: statistics.median(n / c for n, c in zip(tokens[k], cpu[k])) for k in runs}
    return {"batch": batch, "stop": stop, "tps": tps, "tpc": tpc, "times": times, "tokens": tokens,
            "load": (min(load), max(load))}


def table(rows: list[dict]) -> None:
    print(flush=True)
    print("| setting | batch | contender | new tokens/s (wall) | vs generate | new tokens per CPU-second "
          "| vs generate | mean response length |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        hf, hf_cpu = r["tps"]["generate"], r["tpc"]["generate"]
        for k, v in r["tps"].items():
            mean_len = statistics.mean(r["tokens"][k]) / r["batch"]
            c = r["tpc"][k]
            print(f"| {'eos' if r['stop'] else 'fixed'} | {r['batch']} | {k} | {v:.0f} | {v / hf:.2f}x "
                  f"| {c:.0f} | {c / hf_cpu:.2f}x | {mean_len:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 32 only, 2 repetitions, 16 new tokens")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new", type=int, default=48, help="new tokens per row (the cap in eos mode)")
    parser.add_argument("--batches", default="64,256", help="comma-separated batch sizes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = [32] if args.quick else [int(b) for b in args.batches.split(",")]
    reps, new = (2, 16) if args.quick else (args.reps, args.new)
    prompt_len, vocab = 64, 8192

    rows = []
    for stop in (False, True):
        for b in batches:
            rows.append(bench(b, prompt_len, new, reps, vocab, stop))
            table(rows[-1:])  # as it comes: a long run on a busy machine still leaves its first rows

    lo, hi = min(r["load"][0] for r in rows), max(r["load"][1] for r in rows)
    print(f"\n{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
          f"{os.cpu_count()} cores, {torch.get_num_threads()} threads, load average {lo:.1f}-{hi:.1f}, "
          f"torch {torch.__version__}, transformers {transformers.__version__}; "
          f"command: python benchmarks/bench_sampling.py{' --quick' if args.quick else ''}")
    print(f"tiny Llama (4 layers, d=256, 8 heads, vocab {vocab}), fp32, prompts {prompt_len} tokens "
          f"left padded (lengths {prompt_len // 2}-{prompt_len}), at most {new} new tokens, top_k=0, top_p=1; "
          f"median of {reps} alternating runs\n")
    table(rows)
    print("\nprefloop also returns the log-prob of every sampled token; generate was asked for tokens only.")
    for r in rows:
        runs = {k: [round(t, 2) for t in v] for k, v in r["times"].items()}
        print(f"{'eos' if r['stop'] else 'fixed'} batch {r['batch']} seconds per run: {runs}")


if __name__ == "__main__":
    main()
