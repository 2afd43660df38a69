"""The memory planner (`prefloop plan`) against measured peak memory, on the CPU, at small sizes.

    python benchmarks/memory_plan.py --out runs/memory-plan            # every run below, ~3-5 minutes on 2 cores
    python benchmarks/memory_plan.py --out D --only sft,sft-ckpt       # some of them

A Qwen2-shaped model initialised at random (benchmarks/gpu/gpu_check.py's setup: "small" is 4 blocks,
d=512, 8 heads / 2 KV heads, MLP 1408, an 8192-token vocabulary, ~16M parameters) trains for two steps
(two RL updates) with sft, dpo, grpo and ppo, full and LoRA, with and without gradient checkpointing, in fp32
on the CPU, each run in a fresh process.

What is measured: the rise of the process's peak resident memory (VmHWM in /proc/self/status) over its
resident memory once torch, transformers and prefloop are imported. The peak is reset (`5` written to
/proc/self/clear_refs) at that point, so import-time peaks do not count. torch's CPU allocator has no
peak-memory statistics of its own, and it returns large blocks to the system when they are freed, so the
resident peak follows the tensors alive at the worst moment, plus what the planner leaves out: the data,
the tokenizer, Python objects, allocator slack and the transient of loading a checkpoint. The prediction is
the planner's peak for the same options with --precision fp32 (frozen models fp32, fp32 activations) and
the batch's real padded length (sft, dpo) or the longest prompt + the new tokens (RL).
Results: a markdown table on stdout and OUT/memory_plan.md, everything in OUT/memory_plan.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "gpu"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

MAX_LENGTH, NEW_TOKENS = 192, 64
# glibc serves blocks above this size from mmap and unmaps them when freed (a fixed threshold turns off its
# dynamic one, which would move freed tensors into the heap, where they stay resident): the resident peak
# then follows the tensors alive rather than the heap's high-water mark.
MALLOC_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072"}
# name: (task, batch, options given to the recipe)
RUNS = {
    "sft": ("sft", 8, {}),
    "sft-ckpt": ("sft", 8, {"gradient_checkpointing": True}),
    "sft-lora": ("sft", 8, {"lora_r": 16}),
    "dpo": ("dpo", 4, {}),
    "dpo-lora": ("dpo", 4, {"lora_r": 16}),
    "grpo": ("grpo", 8, {}),
    "ppo": ("ppo", 8, {}),
    "ppo-lora-ckpt": ("ppo", 8, {"lora_r": 16, "gradient_checkpointing": True}),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="output folder (setup, runs, results)")
    p.add_argument("--only", default=",".join(RUNS), help=f"comma-separated runs among {','.join(RUNS)}")
    p.add_argument("--size", default="small", help="model size from gpu_check.SIZES (small; tiny for a smoke run)")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # internal: one run, in this process
    return p.parse_args(argv)


def _status(key: str) -> int:
    """A VmRSS / VmHWM line of /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status (the measurement needs Linux)")


def worker(spec_path: Path) -> int:
    """One run: import everything, reset the resident peak, train, write the rise of the peak."""
    import torch

    import bench_prefloop
    from bench_common import Shape

    spec = json.loads(spec_path.read_text())
    torch.set_num_threads(1)  # one thread: no per-thread buffers, and the machine is shared
    _warm_up()
    bench_prefloop.PRECISION = "fp32"
    bench_prefloop.OVERRIDES = {**spec["options"], "overwrite": True}  # a rerun replaces the run's own folder
    shape, setup = Shape(**spec["shape"]), Path(spec["setup"])
    info = json.loads((setup / "setup.json").read_text())
    baseline = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS from here on
    result = bench_prefloop.RUNNERS[spec["task"]](setup, Path(spec["out"]), shape, info)
    peak = _status("VmHWM")
    out = {"baseline_bytes": baseline, "peak_bytes": peak, "rise_bytes": peak - baseline,
           "padded_tokens": result.get("padded_tokens"), "step_times": result["step_times"]}
    Path(spec["result"]).write_text(json.dumps(out))
    return 0


def _warm_up() -> None:
    """Import what a run imports lazily (the model classes, accelerate, peft, the recipes) and run one tiny
    forward and backward, so that the modules and the kernels' one-time buffers are in the baseline."""
    import importlib

    import torch

    for name in ("accelerate", "peft", "transformers.models.qwen2.modeling_qwen2", "prefloop.recipes.sft",
                 "prefloop.recipes.dpo", "prefloop.recipes.grpo", "prefloop.recipes.ppo", "prefloop.models.lora"):
        importlib.import_module(name)
    x = torch.randn(8, 64, requires_grad=True)
    torch.nn.functional.scaled_dot_product_attention(x[None, None], x[None, None], x[None, None]).sum().backward()


def effective_length(task: str, setup: Path, batch: int, result: dict) -> int:
    """The longest padded length the run trained on: what the planner's --max-length stands for."""
    if task in ("sft", "dpo"):
        per_row = batch * (2 if task == "dpo" else 1)
        return max(p // per_row for p in result["padded_tokens"])
    from prefloop.data import encode_prompt, read_prompts, render_prompt
    from prefloop.models import load_tokenizer

    tok = load_tokenizer(str(setup / "lm"))
    longest = max(len(encode_prompt(tok, render_prompt(tok, p.prompt))) for p in read_prompts(setup / "prompts.jsonl"))
    return longest + NEW_TOKENS


def predict(task: str, batch: int, options: dict, length: int, setup: Path):
    from prefloop.plan import Setup, load_shape, plan

    # bench_prefloop's GRPO runs with kl_coef 0 (TRL's default): no reference model
    s = Setup(recipe=task, precision="fp32", batch_size=batch, max_length=length, max_new_tokens=NEW_TOKENS,
              rollout_batch_size=batch, kl_coef=0.0 if task == "grpo" else 0.05, critic="reward",
              lora_r=options.get("lora_r", 0), gradient_checkpointing=options.get("gradient_checkpointing", False))
    return plan(load_shape(str(setup / "lm")), s)


def run(name: str, setup: Path, work: Path) -> dict:
    from bench_common import Shape

    task, batch, options = RUNS[name]
    shape = Shape(steps=2, warmup=0, batch=batch, max_length=MAX_LENGTH, new_tokens=NEW_TOKENS)
    spec = {"task": task, "setup": str(setup), "out": str(work / name), "options": options,
            "shape": shape.to_json(), "result": str(work / f"{name}.result.json")}
    spec_path = work / f"{name}.spec.json"
    spec_path.write_text(json.dumps(spec))
    with (work / f"{name}.log").open("w") as log:
        proc = subprocess.run([sys.executable, __file__, "--out", str(work), "--worker", str(spec_path)],
                              stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, timeout=900, env=MALLOC_ENV)
    if proc.returncode != 0:
        tail = (work / f"{name}.log").read_text().strip().splitlines()[-1:]
        return {"name": name, "ok": False, "error": " ".join(tail)[:300]}
    result = json.loads(Path(spec["result"]).read_text())
    length = effective_length(task, setup, batch, result)
    p = predict(task, batch, options, length, setup)
    return {"name": name, "ok": True, "task": task, "batch": batch, "options": options, "length": length,
            "measured_bytes": result["rise_bytes"], "predicted_bytes": p.peak, "predicted_phase": p.peak_phase,
            "terms": {t.name + ("" if t.phase == "always" else f" ({t.phase})"): t.bytes for t in p.terms},
            "ratio": result["rise_bytes"] / p.peak}


def report(record: dict) -> str:
    lines = [f"## Memory plan against measured peak memory, {record['date']}", "",
             f"CPU, fp32, 1 thread per run; model: {record['model']}; load average before: {record['load']}.", "",
             "| run | padded length | predicted MiB | measured MiB | measured / predicted | measured - predicted MiB |",
             "|---|---|---|---|---|---|"]
    for r in record["runs"]:
        if not r["ok"]:
            lines.append(f"| {r['name']} | | | | | FAILED: {r['error'][:120]} |")
            continue
        lines.append(f"| {r['name']} | {r['length']} | {r['predicted_bytes'] / 2**20:.0f} | "
                     f"{r['measured_bytes'] / 2**20:.0f} | {r['ratio']:.2f} | "
                     f"{(r['measured_bytes'] - r['predicted_bytes']) / 2**20:+.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args.worker)
    import datetime

    from gpu_check import prepare

    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        print(f"error: --only: unknown run {unknown[0]!r} (runs: {', '.join(RUNS)})", file=sys.stderr)
        return 2
    work = args.out / "runs"
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    info = prepare(args.out / f"setup-{args.size}", args.size, MAX_LENGTH, NEW_TOKENS, "bf16")
    setup = args.out / f"setup-{args.size}"
    record = {"date": datetime.datetime.now().astimezone().isoformat(timespec="minutes"), "load": f"{load:.1f}",
              "model": f"Qwen2-shaped {args.size}, {info['params_lm_total'] / 1e6:.1f}M parameters", "runs": []}
    for name in names:
        t = time.perf_counter()
        r = run(name, setup, work)
        print(f"{name:14s} {time.perf_counter() - t:6.1f} s  " + (f"ratio {r['ratio']:.2f}" if r["ok"] else
                                                                      f"FAILED {r['error']}"), flush=True)
        record["runs"].append(r)
    (args.out / "memory_plan.json").write_text(json.dumps(record, indent=1))
    text = report(record)
    (args.out / "memory_plan.md").write_text(text + "\n")
    print("\n" + text)
    return 0 if all(r["ok"] for r in record["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
