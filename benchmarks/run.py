"""Throughput of prefloop's sft, reward, dpo, ppo, grpo and rloo recipes side by side with TRL (see
benchmarks/README.md).

    python benchmarks/run.py                   # full run (about 25-35 minutes on 2 idle cores)
    python benchmarks/run.py --quick           # smoke run: one repetition, a few steps
    python benchmarks/run.py --only sft,reward --size small --repeats 3
    python benchmarks/run.py --quick --only dpo,grpo,rloo

Both frameworks get the same GPT-2 initial weights, tokenizer, data, batch, lengths and number of steps.
Runs alternate between the frameworks, each in its own process; the matmul peak is measured in the same
run. Results: a markdown table on stdout and bench-out/results.json.
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
sys.path.insert(0, str(HERE))

from bench_common import Shape, matmul_peak  # noqa: E402
from bench_report import machine, now, summarise_all, tables, versions  # noqa: E402
from bench_setup import DataMissing, prepare  # noqa: E402

TASKS = ("sft", "reward", "dpo", "ppo", "grpo", "rloo")
# (steps, warm-up steps) per task: full and --quick
STEPS = {"sft": (8, 2), "reward": (10, 2), "dpo": (8, 2), "ppo": (4, 1), "grpo": (4, 1), "rloo": (4, 1)}
QUICK_STEPS = {"sft": (3, 1), "reward": (3, 1), "dpo": (3, 1), "ppo": (2, 1), "grpo": (2, 1), "rloo": (2, 1)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="one repetition of a few steps (a smoke test)")
    p.add_argument("--only", default=",".join(TASKS), help=f"comma-separated tasks among {','.join(TASKS)}")
    p.add_argument("--size", default="tiny", choices=["tiny", "small"], help="model size (benchmarks/README.md)")
    p.add_argument("--repeats", type=int, default=None, help="repetitions per framework (default 2, quick 1)")
    p.add_argument("--steps", type=int, default=None, help="steps per run, warm-up included (default per task)")
    p.add_argument("--warmup", type=int, default=None, help="leading steps left out of the timing")
    p.add_argument("--trl-no-ckpt", action="store_true",
                   help="also run TRL with gradient checkpointing off (its default is on)")
    p.add_argument("--no-trl", action="store_true", help="prefloop only (e.g. where TRL is not installed)")
    p.add_argument("--out", type=Path, default=HERE.parent / "bench-out", help="output folder (git-ignored)")
    return p.parse_args(argv)


def frameworks(args) -> list[tuple[str, dict]]:
    fws = [("prefloop", {"framework": "prefloop"})]
    if args.no_trl:
        return fws
    try:
        import trl  # noqa: F401
    except ImportError:
        print("trl is not installed: prefloop only (pip install -e '.[bench]' in a separate venv)", file=sys.stderr)
        return fws
    fws.append(("trl", {"framework": "trl", "grad_ckpt": True}))
    if args.trl_no_ckpt:
        fws.append(("trl (no grad ckpt)", {"framework": "trl", "grad_ckpt": False}))
    return fws


def run_one(spec: dict, work: Path, name: str) -> dict:
    """One run in a fresh interpreter; its log goes to work/NAME.log."""
    spec_path, result_path, log_path = work / f"{name}.spec.json", work / f"{name}.result.json", work / f"{name}.log"
    spec_path.write_text(json.dumps(spec))
    result_path.unlink(missing_ok=True)
    load_before = os.getloadavg()[0]
    with log_path.open("w") as log:
        proc = subprocess.run([sys.executable, str(HERE / "bench_worker.py"), str(spec_path), str(result_path)],
                              stdout=log, stderr=subprocess.STDOUT, cwd=HERE.parent)
    if result_path.exists():
        result = json.loads(result_path.read_text())
    else:
        result = {"ok": False, "error": f"worker exited with {proc.returncode} (see {log_path})"}
    result["load_before"], result["load_after"] = load_before, os.getloadavg()[0]
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    tasks = [t.strip() for t in args.only.split(",") if t.strip()]
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        print(f"error: unknown task(s) {', '.join(bad)} (choose among {', '.join(TASKS)})", file=sys.stderr)
        return 2
    repeats = args.repeats or (1 if args.quick else 2)
    out: Path = args.out
    work = out / "runs"
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    try:
        setup_dir = out / f"setup-{args.size}"
        info = prepare(setup_dir, args.size, max_length=256, new_tokens=48)
    except DataMissing as e:
        print(f"skipped: {e}")
        return 0
    print(f"setup: {info['pairs_fitting']} pairs fit in 256 tokens (of {info['rows']} rows, "
          f"{info['skipped_no_shared_prefix']} skipped), {info['rl_prompts']} RL prompts; GPT-2 {args.size}: "
          f"{info['params_lm_total'] / 1e6:.2f}M parameters, matmul weights {info['matmul_params_lm'] / 1e6:.2f}M "
          f"(LM) / {info['matmul_params_rm'] / 1e6:.2f}M (reward model)", flush=True)

    peaks = [matmul_peak()]
    print(f"fp32 matmul peak: {peaks[0]['gflops']:.0f} GFLOP/s; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores", flush=True)
    fws = frameworks(args)
    runs = []
    for rep in range(repeats):
        for task in tasks:
            steps, warm = (QUICK_STEPS if args.quick else STEPS)[task]
            steps = args.steps or steps
            warm = args.warmup if args.warmup is not None else min(warm, steps - 1)
            shape = Shape(steps=steps, warmup=warm)
            order = fws if rep % 2 == 0 else fws[::-1]  # alternate who goes first
            for label, fw in order:
                name = f"{task}-{label.split()[0]}{'-nockpt' if fw.get('grad_ckpt') is False else ''}-{rep}"
                spec = {**fw, "task": task, "setup": str(setup_dir), "out": str(work / name),
                        "shape": shape.to_json()}
                t = time.perf_counter()
                result = run_one(spec, work, name)
                status = "ok" if result.get("ok") else f"FAILED: {result.get('error')}"
                print(f"[{rep + 1}/{repeats}] {task:6s} {label:20s} {time.perf_counter() - t:6.1f} s  {status}",
                      flush=True)
                runs.append({"task": task, "label": label, "rep": rep, "shape": shape.to_json(), "result": result})
    peaks.append(matmul_peak())
    peak = max(p["gflops"] for p in peaks)
    loads = [r["result"][k] for r in runs for k in ("load_before", "load_after")]
    print(f"fp32 matmul peak at the end: {peaks[-1]['gflops']:.0f} GFLOP/s; load average over the runs "
          f"{min(loads):.1f}-{max(loads):.1f}", flush=True)

    summary = summarise_all(runs, peak)
    table = tables(summary, peak)
    print()
    print(table)
    record = {
        "date": now(), "command": " ".join([Path(sys.executable).name, "benchmarks/run.py", *sys.argv[1:]]),
        "machine": machine(), "versions": versions(), "size": args.size, "setup": info,
        "matmul_peak": peaks, "peak_gflops": peak, "summary": summary, "table_markdown": table, "runs": runs,
        "wall_s": time.perf_counter() - t_start,
    }
    (out / "results.json").write_text(json.dumps(record, indent=1))
    print(f"\nwrote {out / 'results.json'} ({record['wall_s'] / 60:.1f} min)")
    failed = [r for r in runs if not r["result"].get("ok")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
