"""The GPU check: one script that exercises prefloop on a CUDA GPU in a few minutes and prints every figure.

    python benchmarks/gpu/gpu_check.py --out OUT          # on a GPU machine (see benchmarks/gpu/run.sh)
    python benchmarks/gpu/gpu_check.py --dry-run --out D  # here, on the CPU: tiny model, fp32, 2 steps each

What it does, in order, each step guarded so a failure is reported and the check goes on:
  1. versions, the device, and the bf16 matmul peak measured in the same run (the MFU denominator);
  2. the test suite's CUDA-marked tests (`pytest -m cuda`);
  3. sft, dpo, grpo and ppo for a few steps on a randomly initialised Qwen2-shaped model of ~0.5B parameters
     (the shape of Qwen2.5-0.5B: 24 layers, d=896, 14 heads / 2 KV heads, vocabulary 151,936) saved in bf16
     as real checkpoints are, trained with `--precision bf16`; with LoRA too where the recipes offer it;
     each run in its own process, with tokens/s, samples/s, peak GPU memory and MFU, and beside the peak
     the memory planner's prediction for the same options (`prefloop plan`; peak / plan checks the model);
  4. TRL's SFTTrainer, DPOTrainer and GRPOTrainer on the same data, model, batches and steps, when TRL is
     importable (bf16, gradient checkpointing off like prefloop);
  5. prefloop's sampler against `model.generate` at batch 64 and 256.
Data: HH-RLHF harmless-base pairs (as benchmarks/run.py uses) when the file is found, else pairs from the
synthetic world. A time budget stops starting new runs once spent, so the check always ends with its table.
Results: a markdown report on stdout and OUT/gpu_check.md, everything in OUT/gpu_check.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from bench_common import Shape, summarise  # noqa: E402

# name: (layers, hidden, heads, kv heads, intermediate, vocabulary or None for the tokenizer's size)
SIZES = {
    "0.5b": (24, 896, 14, 2, 4864, 151936),  # Qwen2.5-0.5B's shape
    "tiny": (2, 64, 4, 2, 128, None),        # the CPU dry run
    "small": (4, 512, 8, 2, 1408, None),     # benchmarks/memory_plan.py: the planner against the CPU's peak
}
HH_CANDIDATES = [ROOT / ".gpu-data" / "harmless-base-test.jsonl.gz",
                 ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"]
# (steps, warm-up steps) per task on the GPU and in the dry run
STEPS = {"sft": (6, 2), "dpo": (6, 2), "grpo": (4, 1), "ppo": (3, 1)}
DRY_STEPS = {"sft": (2, 1), "dpo": (2, 1), "grpo": (2, 1), "ppo": (2, 1)}
TRL_TASKS = ("sft", "dpo", "grpo")
BF16_PEAK_REFERENCE = 790e12  # H200 dense bf16 matmul, measured on the lent machine (8192^3, torch)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="output folder (results, logs, the model setup)")
    p.add_argument("--dry-run", action="store_true",
                   help="on the CPU: a tiny model, fp32, 2 steps per task, no CUDA tests (keeps the script tested)")
    p.add_argument("--only", default="sft,dpo,grpo,ppo", help="comma-separated tasks among sft,dpo,grpo,ppo")
    p.add_argument("--no-tests", action="store_true", help="skip the CUDA-marked tests")
    p.add_argument("--no-trl", action="store_true", help="prefloop only")
    p.add_argument("--no-sampler", action="store_true", help="skip the sampler-against-generate step")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="start no new training run once this many seconds have passed")
    p.add_argument("--batch", type=int, default=16, help="sequences / pairs / completions per step")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------- setup
def _data(max_length: int, seed: int) -> tuple[list[dict], str]:
    """Comparison pairs {"prompt", "chosen", "rejected"} and where they came from."""
    from bench_setup import read_hh

    for path in HH_CANDIDATES:
        if path.exists():
            pairs, _ = read_hh(path)
            return pairs, f"HH-RLHF harmless-base ({path.name})"
    from prefloop.world import WorldConfig, build_world

    world = build_world(WorldConfig.preset("tiny", seed=seed))
    rows = world.persona_comparisons(1200, seed=seed)
    pairs = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows
             if r["chosen"] != r["rejected"]]
    return pairs, "synthetic world comparisons (HH-RLHF file not found)"


def matmul_params(model) -> int:
    """Weights that multiply activations: 2-D weights of the transformer layers plus the output head."""
    from prefloop.models.heads import trunk

    layers = trunk(model).layers
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head = head if head is not None else model.score
    return sum(p.numel() for p in layers.parameters() if p.dim() == 2) + head.weight.numel()


def prepare(out: Path, size: str, max_length: int, new_tokens: int, dtype: str, seed: int = 0) -> dict:
    """The layout benchmarks/run.py's runners read: lm/, rm/, sft.jsonl, pairs.jsonl, prompts.jsonl, setup.json."""
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, Qwen2Config

    from bench_setup import VOCAB, _fits, _write_jsonl
    from prefloop.models import init_score_head
    from prefloop.recipes.pretrain import train_tokenizer

    stamp = out / "setup.json"
    want = {"size": size, "max_length": max_length, "new_tokens": new_tokens, "dtype": dtype, "seed": seed}
    if stamp.exists() and json.loads(stamp.read_text()).get("config") == want:
        return json.loads(stamp.read_text())
    out.mkdir(parents=True, exist_ok=True)
    pairs, source = _data(max_length, seed)
    tok = train_tokenizer([p["prompt"] + p["chosen"] for p in pairs] + [p["prompt"] + p["rejected"] for p in pairs],
                          VOCAB if size != "tiny" else 1024)
    kept, prompt_lens = _fits(tok, pairs, max_length)
    random.Random(seed).shuffle(kept)
    _write_jsonl(out / "sft.jsonl", [{"prompt": p["prompt"], "completion": p["chosen"]} for p in kept])
    _write_jsonl(out / "pairs.jsonl", kept)
    _, prompt_lens = _fits(tok, kept, max_length)
    rl_prompts = [p["prompt"] for p, n in zip(kept, prompt_lens) if n <= max_length - new_tokens]
    _write_jsonl(out / "prompts.jsonl", [{"prompt": p} for p in rl_prompts])

    layers, hidden, heads, kv, inter, vocab = SIZES[size]
    cfg = Qwen2Config(vocab_size=max(vocab or 0, len(tok)), hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, intermediate_size=inter,
                      max_position_embeddings=4096, tie_word_embeddings=True, rope_theta=1e6,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):  # initialising 0.5B weights is much faster on the GPU
        lm = AutoModelForCausalLM.from_config(cfg)
    save_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    lm.to(save_dtype).save_pretrained(out / "lm")  # saved like a real checkpoint (bf16 on the GPU)
    tok.save_pretrained(out / "lm")
    rm = AutoModelForSequenceClassification.from_pretrained(out / "lm", num_labels=1, dtype=torch.float32)
    rm.config.pad_token_id = tok.pad_token_id
    torch.manual_seed(seed + 1)
    init_score_head(rm)
    rm.to(save_dtype).save_pretrained(out / "rm")
    tok.save_pretrained(out / "rm")
    info = {"config": want, "data": source, "pairs_fitting": len(kept), "rl_prompts": len(rl_prompts),
            "vocab_tokenizer": len(tok), "vocab_model": cfg.vocab_size,
            "params_lm_total": sum(p.numel() for p in lm.parameters()),
            "matmul_params_lm": matmul_params(lm), "matmul_params_rm": matmul_params(rm)}
    stamp.write_text(json.dumps(info, indent=1))
    del lm, rm
    return info


# ---------------------------------------------------------------------------------------------- steps
def environment() -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("transformers", "accelerate", "peft", "trl", "datasets", "tyro"):
        try:
            env[pkg] = version(pkg)
        except PackageNotFoundError:
            env[pkg] = None
    return env


def bf16_peak() -> float:
    """Best bf16 FLOP/s of an 8192^3 matmul on the GPU (the MFU denominator), 0 without a GPU."""
    import torch

    if not torch.cuda.is_available():
        return 0.0
    n = 8192
    a, b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16), torch.randn(n, n, device="cuda",
                                                                                dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(10):
        t = time.perf_counter()
        a @ b
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def cuda_tests(out: Path, timeout: float = 240) -> dict:
    """The suite's CUDA-marked tests (app and browser tests need packages a GPU machine lacks: left out)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "--ignore=tests/app",
           "--ignore=tests/browser", "--continue-on-collection-errors", "-rfEs", "tests"]
    t = time.perf_counter()
    # The CUDA tests append what each measured (gaps, dtypes) to this file (tests/unit/test_cuda.py).
    env = {**os.environ, "PREFLOOP_CUDA_REPORT": str(out / "cuda_report.jsonl")}
    (out / "cuda_report.jsonl").unlink(missing_ok=True)
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
        text, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        text, rc = f"{e.stdout or ''}\ntimed out after {timeout} s", 124
    (out / "cuda_tests.log").write_text(text)
    summary = [ln for ln in text.splitlines() if " passed" in ln or " failed" in ln or " error" in ln
               or "no tests ran" in ln or " skipped" in ln]
    return {"returncode": rc, "summary": summary[-1] if summary else text.strip().splitlines()[-1:],
            "seconds": time.perf_counter() - t, "failures": [ln for ln in text.splitlines()
                                                             if ln.startswith(("FAILED", "ERROR"))][:20]}


def recipe_supports(option: str) -> bool:
    from prefloop.recipes.sft import SFTConfig

    return option in SFTConfig.__dataclass_fields__


def run_one(spec: dict, work: Path, name: str, timeout: float) -> dict:
    spec_path, result_path, log_path = work / f"{name}.spec.json", work / f"{name}.result.json", work / f"{name}.log"
    spec_path.write_text(json.dumps(spec))
    result_path.unlink(missing_ok=True)
    t = time.perf_counter()
    try:
        with log_path.open("w") as log:
            proc = subprocess.run([sys.executable, str(BENCH / "bench_worker.py"), str(spec_path), str(result_path)],
                                  stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = 124
    if result_path.exists():
        result = json.loads(result_path.read_text())
    else:
        tail = log_path.read_text().strip().splitlines()[-1:] if log_path.exists() else []
        result = {"ok": False, "error": f"worker exited with {rc}: {' '.join(tail)[:300]}"}
    result["seconds"] = time.perf_counter() - t
    return result


def _timed(fn, cuda: bool) -> float:
    import torch

    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t


def _sampler_row(model, tok, prompts: list[str], batch: int, new: int, reps: int, device: str) -> dict:
    import statistics

    import torch

    from prefloop.rollout import SamplingConfig, sample

    enc = tok([prompts[i % len(prompts)] for i in range(batch)], return_tensors="pt", padding=True,
              padding_side="left", add_special_tokens=False)
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    cfg = SamplingConfig(max_new_tokens=new, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         stop_at_eos=False)

    def ours():
        sample(model, ids, mask, cfg, generator=torch.Generator(device=device).manual_seed(1))

    def theirs():
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, top_p=1.0,
                           max_new_tokens=new, min_new_tokens=new, pad_token_id=tok.pad_token_id,
                           eos_token_id=tok.eos_token_id)

    cuda = device == "cuda"
    ours(), theirs()  # warm-up
    times = {"prefloop": [], "generate": []}
    for _ in range(reps):  # alternating, medians
        times["prefloop"].append(_timed(ours, cuda))
        times["generate"].append(_timed(theirs, cuda))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"batch": batch, "prefloop_tokens_per_s": batch * new / med["prefloop"],
            "generate_tokens_per_s": batch * new / med["generate"], "ratio": med["generate"] / med["prefloop"]}


def sampler_vs_generate(setup: Path, batches: tuple[int, ...], new: int, reps: int, dtype: str) -> list[dict]:
    """prefloop's sampler against model.generate on the setup's policy: new tokens/s, fixed length."""
    import torch

    from prefloop.models import load_causal_lm, load_tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = load_tokenizer(str(setup / "lm"))
    model = load_causal_lm(str(setup / "lm"), tok, dtype=torch.bfloat16 if dtype == "bf16" else torch.float32)
    model.to(device).eval()
    prompts = [json.loads(ln)["prompt"] for ln in (setup / "prompts.jsonl").read_text().splitlines() if ln.strip()]
    return [_sampler_row(model, tok, prompts, b, new, reps, device) for b in batches]


def planned_peak(spec: dict, setup_dir: Path) -> float | None:
    """The memory planner's peak (bytes) for a prefloop run of the check, with the options bench_prefloop
    gives the recipe (PPO: critic from the reward model; GRPO: no KL, so no reference; DPO: reference
    precomputed); --max-length stands for every batch's padded length, so the plan is an upper bound."""
    if spec["framework"] != "prefloop" or spec["task"] not in ("sft", "dpo", "grpo", "ppo"):
        return None
    from prefloop.plan import Setup, load_shape, plan

    shape, over = spec["shape"], spec.get("overrides", {})
    setup = Setup(recipe=spec["task"], precision=spec["precision"], batch_size=shape["batch"],
                  max_length=shape["max_length"], max_new_tokens=shape["new_tokens"],
                  rollout_batch_size=shape["batch"], kl_coef=0.0 if spec["task"] == "grpo" else 0.05,
                  lora_r=over.get("lora_r", 0), gradient_checkpointing=over.get("gradient_checkpointing", False))
    return plan(load_shape(str(setup_dir / "lm")), setup).peak


# ---------------------------------------------------------------------------------------------- report
def report(record: dict) -> str:
    peak = record.get("bf16_peak_flops") or 0.0
    env = record["environment"]
    lines = [f"## GPU check, {record['date']}", "",
             f"{env['device']}; torch {env['torch']} (CUDA {env['cuda']}), transformers {env['transformers']}, "
             f"accelerate {env['accelerate']}, peft {env['peft']}, trl {env['trl']}; "
             f"{'dry run on the CPU' if record['dry_run'] else 'bf16'}; model: {record['setup'].get('model')}; "
             f"data: {record['setup'].get('data')}; batch {record['batch']}, max length {record['max_length']}, "
             f"{record['new_tokens']} new tokens (RL)."]
    if peak:
        lines.append(f"bf16 matmul peak measured in this run: {peak / 1e12:.0f} TFLOP/s.")
    tests = record.get("cuda_tests")
    if tests:
        lines += ["", f"CUDA-marked tests: {tests['summary']} (exit {tests['returncode']}, {tests['seconds']:.0f} s)"]
        lines += [f"- {f}" for f in tests.get("failures", [])]
    lines += ["", "| task | framework | ok | samples/s | tokens/s | median step s | peak GPU GiB | plan GiB | "
              "peak / plan | MFU | note |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in record["runs"]:
        res = r["result"]
        if res.get("ok"):
            s = summarise(res, r["warmup"])
            mfu = f"{100 * s['flops_per_s'] / peak:.1f}%" if peak else "-"
            mem = f"{res['peak_gpu_bytes'] / 2**30:.1f}" if res.get("peak_gpu_bytes") else "-"
            planned = r.get("planned_bytes")
            ratio = f"{res['peak_gpu_bytes'] / planned:.2f}" if planned and res.get("peak_gpu_bytes") else "-"
            plan_text = f"{planned / 2**30:.3g}" if planned else "-"
            lines.append(f"| {r['task']} | {r['label']} | yes | {s['samples_per_s']:.2f} | {s['tokens_per_s']:.0f} | "
                         f"{s['median_step_s']:.3f} | {mem} | {plan_text} | {ratio} | {mfu} | {r.get('note', '')} |")
        else:
            lines.append(f"| {r['task']} | {r['label']} | NO | | | | | | | | {res.get('error', '')[:160]} |")
    for task in TRL_TASKS:
        ours = [r for r in record["runs"] if r["task"] == task and r["label"] == "prefloop" and r["result"].get("ok")]
        peer = [r for r in record["runs"] if r["task"] == task and r["label"] == "trl" and r["result"].get("ok")]
        if ours and peer:
            a, b = summarise(ours[0]["result"], ours[0]["warmup"]), summarise(peer[0]["result"], peer[0]["warmup"])
            lines.append(f"\n{task}: prefloop / TRL samples/s = {a['samples_per_s'] / b['samples_per_s']:.2f}x")
    if record.get("sampler"):
        lines += ["", "| batch | prefloop `sample` tokens/s | `generate` tokens/s | ratio |", "|---|---|---|---|"]
        for r in record["sampler"]:
            lines.append(f"| {r['batch']} | {r['prefloop_tokens_per_s']:.0f} | {r['generate_tokens_per_s']:.0f} | "
                         f"{r['ratio']:.2f}x |")
    for key, word in (("skipped", "skipped"), ("errors", "error")):
        for s in record.get(key, []):
            lines.append(f"- {word}: {s}")
    lines.append(f"\nwall time {record['wall_s']:.0f} s")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    out: Path = args.out
    work = out / "runs"
    work.mkdir(parents=True, exist_ok=True)
    import datetime

    import torch

    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        print("error: no CUDA GPU is visible; use --dry-run to exercise the script on the CPU", file=sys.stderr)
        return 2
    # The dry run keeps every step but shrinks it: a tiny model, short sequences, small batches.
    dtype, size, max_length, new_tokens, batch = ("bf16", "0.5b", 256, 48, args.batch) if cuda else \
        ("fp32", "tiny", 128, 8, 4)
    record: dict = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                    "dry_run": args.dry_run, "batch": batch, "max_length": max_length, "new_tokens": new_tokens,
                    "environment": environment(), "runs": [], "skipped": [], "errors": []}
    print(json.dumps(record["environment"]), flush=True)
    record["bf16_peak_flops"] = bf16_peak() if cuda else 0.0
    if cuda:
        print(f"bf16 matmul peak: {record['bf16_peak_flops'] / 1e12:.0f} TFLOP/s", flush=True)

    if cuda and not args.no_tests:
        record["cuda_tests"] = cuda_tests(out)
        print(f"cuda tests: {record['cuda_tests']['summary']}", flush=True)

    setup_dir = out / f"setup-{size}"
    try:
        info = prepare(setup_dir, size, max_length, new_tokens, dtype)
    except Exception as e:  # noqa: BLE001 - reported; nothing else can run without a setup
        record["errors"].append(f"setup: {type(e).__name__}: {e}")
        record["wall_s"] = time.perf_counter() - t0
        (out / "gpu_check.json").write_text(json.dumps(record, indent=1))
        print(report({**record, "setup": {}}))
        return 1
    record["setup"] = {**info, "model": f"Qwen2-shaped {size} ({info['params_lm_total'] / 1e6:.2f}M parameters, "
                                        f"saved in {dtype})"}
    print(f"setup: {record['setup']['model']}, {info['pairs_fitting']} pairs, {info['rl_prompts']} prompts "
          f"({info['data']})", flush=True)

    tasks = [t.strip() for t in args.only.split(",") if t.strip()]
    have_trl = not args.no_trl and _importable("trl") and _importable("datasets")
    if not have_trl and not args.no_trl:
        record["skipped"].append("TRL side by side: trl/datasets not importable (carry their wheels)")
    lora = recipe_supports("lora_r") and _importable("peft")
    if not lora:
        why = "peft not importable (carry its wheel)" if recipe_supports("lora_r") else "no --lora-r option"
        record["skipped"].append(f"LoRA runs: {why}")
    plan = []
    for task in tasks:
        steps, warm = (DRY_STEPS if args.dry_run else STEPS)[task]
        shape = Shape(steps=steps, warmup=warm, batch=batch, max_length=max_length, new_tokens=new_tokens)
        base = {"task": task, "setup": str(setup_dir), "shape": shape.to_json(), "precision": dtype,
                "device": "cuda" if cuda else "cpu"}
        plan.append(("prefloop", {**base, "framework": "prefloop"}, ""))
        if lora:
            plan.append(("prefloop LoRA", {**base, "framework": "prefloop", "overrides": {"lora_r": 16}}, "r=16"))
        if have_trl and task in TRL_TASKS:
            plan.append(("trl", {**base, "framework": "trl", "grad_ckpt": False}, "no grad ckpt"))
    for label, spec, note in plan:
        if time.perf_counter() - t0 > args.budget_s:
            record["skipped"].append(f"{spec['task']} {label}: time budget ({args.budget_s:.0f} s) spent")
            continue
        name = f"{spec['task']}-{label.replace(' ', '-')}"
        spec["out"] = str(work / name)
        result = run_one(spec, work, name, timeout=240)
        print(f"{spec['task']:5s} {label:14s} {result['seconds']:6.1f} s  "
              f"{'ok' if result.get('ok') else 'FAILED: ' + str(result.get('error'))}", flush=True)
        record["runs"].append({"task": spec["task"], "label": label, "warmup": spec["shape"]["warmup"],
                               "note": note, "result": result, "planned_bytes": _planned(spec, setup_dir, record)})

    if not args.no_sampler:
        try:
            batches, reps = ((64, 256), 3) if cuda else ((8,), 1)
            record["sampler"] = sampler_vs_generate(setup_dir, batches, 48 if cuda else 8, reps, dtype)
        except Exception as e:  # noqa: BLE001
            record["errors"].append(f"sampler: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")

    record["wall_s"] = time.perf_counter() - t0
    (out / "gpu_check.json").write_text(json.dumps(record, indent=1))
    text = report(record)
    (out / "gpu_check.md").write_text(text + "\n")
    print("\n" + text)
    return 0 if all(r["result"].get("ok") for r in record["runs"]) and not record["errors"] else 1


def _planned(spec: dict, setup_dir: Path, record: dict) -> float | None:
    try:
        return planned_peak(spec, setup_dir)
    except Exception as e:  # noqa: BLE001 - the check goes on without the prediction
        record["errors"].append(f"plan {spec['task']}: {type(e).__name__}: {e}")
        return None


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


if __name__ == "__main__":
    sys.exit(main())
