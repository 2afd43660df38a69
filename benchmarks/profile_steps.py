"""Where prefloop's time goes: torch.profiler over one SFT step and one PPO update on the benchmark setup.

    python benchmarks/profile_steps.py            # after benchmarks/run.py has written bench-out/setup-tiny
    python benchmarks/profile_steps.py --rows 25

Prints the operators with the most self CPU time; the PPO update is also split into its phases (sample,
score, update) with profiler ranges. Replicates the recipes' inner loops with prefloop's own functions
(the SFT step is the body of run_sft's loop), so nothing in prefloop is changed.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_common import THREADS  # noqa: E402


def sft_step_profile(setup: Path, rows: int) -> None:
    from prefloop.data import collate_sft
    from prefloop.models import CausalLMLoss, load_causal_lm, load_tokenizer
    from prefloop.recipes.common import BatchPlan, CommonConfig, make_optimizer
    from prefloop.recipes.sft import encode_demonstrations

    tok = load_tokenizer(str(setup / "lm"))
    ex = encode_demonstrations(tok, setup / "sft.jsonl", 256)
    plan = BatchPlan([len(e.input_ids) for e in ex], 16, 0)
    model = CausalLMLoss(load_causal_lm(str(setup / "lm"), tok)).train()
    opt = make_optimizer(model.parameters(), CommonConfig(lr=1e-4))

    def step(s: int) -> None:
        b = collate_sft([ex[i] for i in plan.batch(s)], tok.pad_token_id)
        with record_function("sft/forward"):
            loss = model(b.input_ids, b.attention_mask, b.labels)
        with record_function("sft/backward"):
            (loss / 1000).backward()
        with record_function("sft/clip+optimizer"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

    for s in range(3):  # warm-up
        step(s)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(3)
        step(4)
    print("## prefloop SFT: 2 steps (batch 16, tiny)\n")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))
    _phases(prof, "sft/")


def ppo_update_profile(setup: Path, out: Path, rows: int) -> None:
    """The second update of a two-update run_ppo (the first warms up), its phases as profiler ranges."""
    from prefloop.recipes import ppo

    cfg = ppo.PPOConfig(policy=str(setup / "lm"), reward=str(setup / "rm"), prompts=setup / "prompts.jsonl",
                        out=out, max_steps=2, rollout_batch_size=16, batch_size=16, max_new_tokens=48,
                        stop_at_eos=False, no_eos_penalty=None, temperature=1.0, precision="fp32", overwrite=True)
    prof = profile(activities=[ProfilerActivity.CPU])
    optimised = [0]

    def ranged(name, fn, after=None):
        def call(*args, **kw):
            # calibrate_reward samples once before update 1; update 2 starts with the 3rd rollout
            if name == "sample" and calls.count("sample") == 2:
                prof.start()
            calls.append(name)
            with record_function(f"ppo/{name}"):
                result = fn(*args, **kw)
            if after:
                after()
            return result
        return call

    def stop_after_second_update():
        optimised[0] += 1
        if optimised[0] == 2:
            prof.stop()

    calls: list[str] = []
    with contextlib.ExitStack() as stack:
        for attr, name in (("rollout", "sample"), ("score_rollout", "score"), ("optimise", "update")):
            real = getattr(ppo, attr)
            stack.callback(setattr, ppo, attr, real)
            setattr(ppo, attr, ranged(name, real, stop_after_second_update if name == "update" else None))
        ppo.run_ppo(cfg)
    print("## prefloop PPO: 1 update (16 completions x 48 tokens, 4 epochs, critic from the reward model)\n")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))
    _phases(prof, "ppo/")


def _phases(prof, prefix: str) -> None:
    for e in prof.key_averages():
        if e.key.startswith(prefix):
            print(f"{e.key:24s} {e.cpu_time_total / 1e6:7.2f} s")
    print()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--setup", type=Path, default=HERE.parent / "bench-out" / "setup-tiny")
    p.add_argument("--rows", type=int, default=20)
    p.add_argument("--only", default="sft,ppo")
    args = p.parse_args()
    if not (args.setup / "setup.json").exists():
        sys.exit(f"{args.setup} not found: run `python benchmarks/run.py --quick` first")
    torch.set_num_threads(THREADS)
    if "sft" in args.only:
        sft_step_profile(args.setup, args.rows)
    if "ppo" in args.only:
        ppo_update_profile(args.setup, args.setup.parent / "runs" / "profile-ppo", args.rows)


if __name__ == "__main__":
    main()
