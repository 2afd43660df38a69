"""Run several prefloop commands one after another inside ONE distributed launch (one torch import per
process instead of one per command), recording what the tests compare with a one-process run:

    torchrun --standalone --nproc_per_node 2 tests/smoke/ddp_jobs.py JOBS.json

JOBS.json: {"out": DIR, "jobs": [[command, option, ...], ...]}. Each job runs through `prefloop.cli.main`
(or, for ["eval-sampling", POLICY, PROMPTS, OUT], the evaluation's sampler). Each process writes
DIR/rank<r>.json (rank, world size, pid, each job's exit code), DIR/shares-rank<r>.json (how many prompts
each of its sampling calls drew) and, for the RL recipes, OUT/rollout-rank<r>-<n>.pt with the tensors of
its n-th rollout batch."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def _save(out_dir, tensors: dict) -> None:
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)  # a run creates its folder only when it first writes there
    n = len(list(out_dir.glob(f"rollout-rank{rank}-*.pt")))
    torch.save({k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in tensors.items()},
               out_dir / f"rollout-rank{rank}-{n + 1}.pt")


def record_rollouts() -> None:
    """Wrap the RL recipes' optimisation steps so that each rollout batch is saved before it is used."""
    from prefloop.recipes import grpo, ppo

    ppo_optimise = ppo.optimise

    def ppo_recording(cfg, ctx, policy_fwd, critic_fwd, opt, sched, b, generator):
        _save(cfg.out, {"response_mask": b.response_mask, "rewards": b.rewards, "values": b.values,
                        "advantages": b.advantages, "logprobs": b.logprobs, "ref_logprobs": b.ref_logprobs,
                        "scores": b.scores})
        return ppo_optimise(cfg, ctx, policy_fwd, critic_fwd, opt, sched, b, generator)

    ppo.optimise = ppo_recording
    group_optimise = grpo.optimise

    def group_recording(cfg, ctx, policy_fwd, opt, sched, out, old_logp, ref_logp, advantages, generator):
        _save(cfg.out, {"response_mask": out.response_mask, "logprobs": out.logprobs, "ref_logprobs": ref_logp,
                        "advantages": advantages})
        return group_optimise(cfg, ctx, policy_fwd, opt, sched, out, old_logp, ref_logp, advantages, generator)

    grpo.optimise = group_recording


def record_shares(out_dir: Path, rank: int) -> None:
    """Count the prompts each sampling call of this process drew (the share of the prompts it sampled)."""
    from prefloop.eval import sampling
    from prefloop.recipes import sample

    counts: list[int] = []
    path = out_dir / f"shares-rank{rank}.json"
    for module, name in ((sample, "_sample_and_score"), (sampling, "_sample_policy")):
        real = getattr(module, name)

        def counting(model, tok, prompt_texts, *args, _real=real, _name=name, **kw):
            counts.append([_name, len(prompt_texts)])
            path.write_text(json.dumps(counts))
            return _real(model, tok, prompt_texts, *args, **kw)

        setattr(module, name, counting)


def eval_sampling(policy_dir: str, prompts: str, out: str) -> int:
    """`sample_policy` (the evaluation's sampler) on every prompt; each process saves what it got back."""
    import torch.distributed as dist

    from prefloop.data import read_prompts
    from prefloop.eval.sampling import sample_policy
    from prefloop.models import load_causal_lm, load_tokenizer
    from prefloop.rollout import SamplingConfig

    tok = load_tokenizer(policy_dir)
    texts = [p.prompt for p in read_prompts(Path(prompts))]
    scfg = SamplingConfig(max_new_tokens=8, temperature=1.0, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id)
    s = sample_policy(load_causal_lm(policy_dir, tok), tok, texts, 2, scfg, seed=5)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"rank{dist.get_rank()}.json").write_text(json.dumps(s.responses))
    return 0


def main(path: str) -> int:
    spec = json.loads(Path(path).read_text())
    out = Path(spec["out"])
    from prefloop.cli import main as cli
    from prefloop.runtime.distributed import rank_and_world

    rank, world = rank_and_world()
    record_rollouts()
    record_shares(out, rank)
    codes = []
    for job in spec["jobs"]:
        codes.append(eval_sampling(*job[1:]) if job[0] == "eval-sampling" else cli(job))
    (out / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "world": world, "pid": os.getpid(),
                                                       "codes": codes}))
    # Leave the process group explicitly: at interpreter exit gloo's threads were once seen to abort the
    # process ("terminate called without an active exception") after every job had finished.
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return max(codes)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
