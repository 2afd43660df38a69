"""Where prefloop's time goes: torch.profiler over steps of every trainer on the benchmark setup.

    python benchmarks/profile_steps.py                        # after benchmarks/run.py has written bench-out/setup-tiny
    python benchmarks/profile_steps.py --only reward,ppo --rows 25
    python benchmarks/profile_steps.py --threads 1            # steadier on a shared machine

Each task runs the recipe itself, as the benchmark does (`bench_prefloop.RUNNERS`, the same configuration), and
profiles the steps after the warm-up (sft, reward, dpo: steps 3-4; ppo, grpo, rloo: update 2). Printed per task:
the operators with the most self CPU time, then the step's phases as profiler ranges (forward/backward of the
trained models, the optimizer step, metrics and logging; for RL also sample / score / update) and the share of
self time in matmuls, in elementwise and normalisation kernels, and in attention. Nothing in prefloop is changed:
the ranges are added by wrapping its functions for the duration of the run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_common import THREADS, Shape  # noqa: E402

TASKS = ("sft", "reward", "dpo", "ppo", "grpo", "rloo")
# (steps run, first profiled step, profiled steps): the warm-up steps are left out as in the benchmark.
PLAN = {"sft": (4, 3, 2), "reward": (4, 3, 2), "dpo": (4, 3, 2), "ppo": (2, 2, 1), "grpo": (2, 2, 1),
        "rloo": (2, 2, 1)}
KINDS = {"matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear"),
         "attention": ("scaled_dot_product", "attention")}


def _wrap(stack: contextlib.ExitStack, owner, attr: str, label: str, after=None, before=None) -> None:
    """Run `owner.attr` inside a profiler range (and call `before` / `after` around it) until the stack closes."""
    real = getattr(owner, attr)

    def call(*args, **kw):
        if before:
            before(*args, **kw)
        with record_function(label):
            result = real(*args, **kw)
        if after:
            after(*args, **kw)
        return result

    stack.callback(setattr, owner, attr, real)
    setattr(owner, attr, call)


def profile_task(task: str, setup: Path, out: Path, rows: int) -> None:
    import bench_prefloop
    from prefloop.recipes import context, grpo, ppo

    steps, first, count = PLAN[task]
    info = json.loads((setup / "setup.json").read_text())
    prof = profile(activities=[ProfilerActivity.CPU])
    logged = [0]

    def start_stop(self, step, *args, **kw):
        # RunContext.log is called once per step, at its end: start before step `first`, stop after the last.
        logged[0] += 1
        if logged[0] == first - 1:
            prof.start()
        if logged[0] == first + count - 1:
            prof.stop()

    with contextlib.ExitStack() as stack:
        _wrap(stack, context.RunContext, "log", f"{task}/log+progress", after=start_stop)
        _wrap(stack, context.RunContext, "step", f"{task}/clip+optimizer")
        if task in ("ppo", "grpo", "rloo"):
            mod = ppo if task == "ppo" else grpo
            for attr, name in (("rollout", "sample"), ("score_rollout", "score"), ("optimise", "update")):
                _wrap(stack, mod, attr, f"{task}/{name}")
        shutil.rmtree(out / task, ignore_errors=True)  # the previous profile's run directory
        bench_prefloop.RUNNERS[task](setup, out / task, Shape(steps=steps, warmup=first - 1), info)
    label = "updates" if task in ("ppo", "grpo", "rloo") else "steps"
    print(f"## prefloop {task}: {count} {label} (batch 16, tiny)\n")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))
    _summary(prof, f"{task}/")


def _summary(prof, prefix: str) -> None:
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1
    for e in events:
        if e.key.startswith(prefix):
            print(f"{e.key:28s} {e.cpu_time_total / 1e6:7.2f} s")
    shares = {k: sum(e.self_cpu_time_total for e in events if any(n in e.key for n in names)) / total
              for k, names in KINDS.items()}
    print(f"{'self time':28s} {total / 1e6:7.2f} s: matmul {shares['matmul']:.0%}, attention "
          f"{shares['attention']:.0%}, the rest (elementwise, normalisation, copies, Python) "
          f"{1 - sum(shares.values()):.0%}\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--setup", type=Path, default=HERE.parent / "bench-out" / "setup-tiny")
    p.add_argument("--rows", type=int, default=20)
    p.add_argument("--only", default=",".join(TASKS), help=f"comma-separated tasks among {','.join(TASKS)}")
    p.add_argument("--threads", type=int, default=THREADS)
    args = p.parse_args()
    if not (args.setup / "setup.json").exists():
        sys.exit(f"{args.setup} not found: run `python benchmarks/run.py --quick` first")
    unknown = [t for t in args.only.split(",") if t not in TASKS]
    if unknown:
        sys.exit(f"--only: unknown task {unknown[0]!r} (choose from {', '.join(TASKS)})")
    torch.set_num_threads(args.threads)
    for task in args.only.split(","):
        profile_task(task, args.setup, args.setup.parent / "runs" / "profile", args.rows)


if __name__ == "__main__":
    main()
