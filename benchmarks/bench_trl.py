"""The TRL side: SFTTrainer, RewardTrainer, DPOTrainer, GRPOTrainer and RLOOTrainer on the shared setup,
timed by a callback.

TRL runs with its defaults except where the comparison needs the same work: fp32 (bf16=False), the
batch size, max length, number of steps, no saving, logging every step (so the token counts per step
can be read). Gradient checkpointing is TRL's default (on); `gradient_checkpointing=False` is the
variant run.py labels "trl (no grad ckpt)". For sft, reward and dpo the dataset is handed over in the order
of prefloop's batch plan with a sequential sampler, so both frameworks train on identical batches; grpo and
rloo get prefloop's prompts in prefloop's order (`shuffle_dataset=False`).
"""

from __future__ import annotations

import time
from pathlib import Path

from bench_common import Shape, dpo_flops, rl_flops_group, rl_flops_rloo, train_flops


def _timer_callback():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time of each optimizer step (end to end: data, forward, backward, optimizer, logging) and
        the logs of each step."""

        def __init__(self):
            self.ends: list[float] = []
            self.logs: list[dict] = []
            self.t0 = 0.0
            self.phases: list[dict[str, float]] = []
            self._phase: dict[str, float] = {}

        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.ends.append(time.perf_counter())
            self.phases.append(self._phase)
            self._phase = {}

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "num_tokens" in logs:  # the per-step training logs (not the final summary)
                self.logs.append(dict(logs))

        def record(self, name: str, seconds: float) -> None:
            key = name.split(".", 1)[-1]
            self._phase[key] = self._phase.get(key, 0.0) + seconds

        def step_times(self) -> list[float]:
            starts = [self.t0] + self.ends[:-1]
            return [e - s for s, e in zip(starts, self.ends)]

    return StepTimer()


def _record_profiling(timer) -> None:
    """TRL times its phases with ProfilingContext but reports them only to wandb/mlflow/trackio; send
    them to our timer instead (nothing in TRL changes)."""
    from trl.extras import profiling

    profiling.ProfilingContext._log_metrics = lambda self, duration: timer.record(self.name, duration)


# Set by the worker from the run's spec: fp32 on the CPU (the default), bf16 on a GPU (benchmarks/gpu/).
DEVICE_ARGS = {"bf16": False, "fp16": False, "use_cpu": True}


def _base_args(out: Path, shape: Shape, grad_ckpt: bool) -> dict:
    return dict(output_dir=str(out), max_steps=shape.steps, per_device_train_batch_size=shape.batch,
                gradient_accumulation_steps=1, **DEVICE_ARGS, logging_steps=1,
                report_to="none", save_strategy="no", seed=0, disable_tqdm=True, dataloader_num_workers=0,
                gradient_checkpointing=grad_ckpt)


def _ordered_rows(path: Path, order: list[list[tuple]]) -> list[dict]:
    import json

    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    return [rows[x[0]] for batch in order for x in batch]


def _num_tokens(logs: list[dict], steps: int) -> list[int]:
    """Per-step tokens from TRL's cumulative `num_tokens` log (attention-mask sum: real tokens)."""
    cum = [int(r["num_tokens"]) for r in logs if "num_tokens" in r][:steps]
    return [b - a for a, b in zip([0] + cum[:-1], cum)]


def run_sft(setup: Path, out: Path, shape: Shape, info: dict, grad_ckpt: bool = True) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from bench_prefloop import batches, token_counts

    order = batches("sft", setup, shape)
    data = Dataset.from_list(_ordered_rows(setup / "sft.jsonl", order))
    tok = AutoTokenizer.from_pretrained(setup / "lm")
    model = AutoModelForCausalLM.from_pretrained(setup / "lm")
    args = SFTConfig(**_base_args(out, shape, grad_ckpt), learning_rate=1e-4, max_length=shape.max_length,
                     completion_only_loss=True, train_sampling_strategy="sequential")
    timer = _timer_callback()
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok, callbacks=[timer])
    trainer.train()
    tokens = _num_tokens(timer.logs, shape.steps)
    ours, padded = token_counts("sft", setup, shape)
    n = info["matmul_params_lm"]
    return {"step_times": timer.step_times(), "samples": [shape.batch] * shape.steps, "tokens": tokens,
            "padded_tokens": padded, "flops": [train_flops(n, t) for t in tokens], "same_tokens": tokens == ours}


def run_reward(setup: Path, out: Path, shape: Shape, info: dict, grad_ckpt: bool = True) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from bench_prefloop import batches, token_counts

    order = batches("reward", setup, shape)
    data = Dataset.from_list(_ordered_rows(setup / "pairs.jsonl", order))
    tok = AutoTokenizer.from_pretrained(setup / "rm")
    model = AutoModelForSequenceClassification.from_pretrained(setup / "rm", num_labels=1)
    args = RewardConfig(**_base_args(out, shape, grad_ckpt), learning_rate=5e-5, max_length=shape.max_length,
                        train_sampling_strategy="sequential")
    timer = _timer_callback()
    trainer = RewardTrainer(model=model, args=args, train_dataset=data, processing_class=tok, callbacks=[timer])
    trainer.train()
    tokens = _num_tokens(timer.logs, shape.steps)
    ours, padded = token_counts("reward", setup, shape)
    n = info["matmul_params_rm"]
    return {"step_times": timer.step_times(), "samples": [shape.batch] * shape.steps, "tokens": tokens,
            "padded_tokens": padded, "flops": [train_flops(n, t) for t in tokens], "same_tokens": tokens == ours}


def run_dpo(setup: Path, out: Path, shape: Shape, info: dict, grad_ckpt: bool = True) -> dict:
    """DPOTrainer with its defaults: sigmoid loss, beta 0.1, the reference = a second copy of the initial
    model, its log-probs computed in every step (precompute_ref_log_probs=False), summed log-probs of the
    completion tokens; the pairs prefloop trains on, in its batch order."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from bench_prefloop import batches, dpo_data, token_counts

    order = batches("dpo", setup, shape)
    data = Dataset.from_list(_ordered_rows(dpo_data(setup, shape), order))
    tok = AutoTokenizer.from_pretrained(setup / "lm")
    model = AutoModelForCausalLM.from_pretrained(setup / "lm")
    args = DPOConfig(**_base_args(out, shape, grad_ckpt), learning_rate=1e-6, max_length=shape.max_length,
                     loss_type=["sigmoid"], beta=0.1, precompute_ref_log_probs=False,
                     train_sampling_strategy="sequential")
    timer = _timer_callback()
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok, callbacks=[timer])
    trainer.train()
    tokens = _num_tokens(timer.logs, shape.steps)
    ours, padded = token_counts("dpo", setup, shape)
    n = info["matmul_params_lm"]
    return {"step_times": timer.step_times(), "samples": [shape.batch] * shape.steps, "tokens": tokens,
            "padded_tokens": padded, "flops": [dpo_flops(n, t) for t in tokens], "same_tokens": tokens == ours}


def _rl_result(timer, shape: Shape, flops_fn) -> dict:
    """Step times, tokens, FLOPs and the sample / score / update split of an RL trainer's run."""
    times = timer.step_times()
    tokens = _num_tokens(timer.logs, shape.steps)
    split = []
    for t, ph in zip(times, timer.phases):
        gen = ph.get("transformers.generate", 0.0)
        prep = ph.get("_prepare_inputs", 0.0)
        split.append({"sample": gen, "score": prep - gen, "update": t - prep})
    lengths = [r.get("completions/mean_length") for r in timer.logs]
    return {"step_times": times, "samples": [shape.batch] * shape.steps, "tokens": tokens,
            "flops": [flops_fn(t) for t in tokens], "split": split, "response_length": lengths,
            "generated_tokens": [round(shape.batch * (n or 0)) for n in lengths]}


def run_ppo(setup: Path, out: Path, shape: Shape, info: dict, grad_ckpt: bool = True) -> dict:
    """RLOO (TRL no longer ships PPO): `samples_per_prompt` completions of batch / samples_per_prompt
    prompts per step, scored by the reward model, KL to the reference (beta 0.05, TRL's default),
    one optimizer step per generation batch. min_new_tokens = max_new_tokens: fixed length."""
    import json

    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import RLOOConfig, RLOOTrainer

    prompts = [json.loads(ln) for ln in (setup / "prompts.jsonl").read_text().splitlines() if ln.strip()]
    tok = AutoTokenizer.from_pretrained(setup / "lm")
    args = RLOOConfig(**_base_args(out, shape, grad_ckpt), learning_rate=1e-5,
                      num_generations=shape.samples_per_prompt, max_completion_length=shape.new_tokens,
                      generation_kwargs={"min_new_tokens": shape.new_tokens}, temperature=1.0)
    timer = _timer_callback()
    _record_profiling(timer)
    trainer = RLOOTrainer(model=str(setup / "lm"), reward_funcs=str(setup / "rm"), args=args,
                          train_dataset=Dataset.from_list(prompts), processing_class=tok, callbacks=[timer])
    trainer.train()
    ref = args.beta != 0.0
    return _rl_result(timer, shape, lambda t: rl_flops_rloo(info["matmul_params_lm"], info["matmul_params_rm"], t,
                                                            ref))


def _run_group(task: str, setup: Path, out: Path, shape: Shape, info: dict, grad_ckpt: bool = True) -> dict:
    """GRPOTrainer or RLOOTrainer with TRL's defaults (num_iterations 1, one generation batch per optimizer
    step; GRPO: beta 0, loss "dapo", scale_rewards "group"; RLOO: beta 0.05 in the reward), lr 1e-6,
    `samples_per_prompt` completions of exactly new_tokens tokens (min_new_tokens), temperature 1, top-k 0,
    top-p 1, on prefloop's prompts in prefloop's order (shuffle_dataset=False)."""
    import json

    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    from bench_prefloop import rl_prompt_order, rl_token_counts

    rows = [json.loads(ln) for ln in (setup / "prompts.jsonl").read_text().splitlines() if ln.strip()]
    prompts = [rows[i] for i in rl_prompt_order(setup, shape)]
    tok = AutoTokenizer.from_pretrained(setup / "lm")
    common = dict(**_base_args(out, shape, grad_ckpt), learning_rate=1e-6, num_generations=shape.samples_per_prompt,
                  max_completion_length=shape.new_tokens, generation_kwargs={"min_new_tokens": shape.new_tokens},
                  temperature=1.0, top_k=0, top_p=1.0, num_iterations=1, shuffle_dataset=False)
    if task == "grpo":
        args, trainer_cls = GRPOConfig(**common, beta=0.0, loss_type="dapo", scale_rewards="group"), GRPOTrainer
    else:
        args, trainer_cls = RLOOConfig(**common, beta=0.05, normalize_advantages=False), RLOOTrainer
    timer = _timer_callback()
    _record_profiling(timer)
    trainer = trainer_cls(model=str(setup / "lm"), reward_funcs=str(setup / "rm"), args=args,
                          train_dataset=Dataset.from_list(prompts), processing_class=tok, callbacks=[timer])
    trainer.train()
    # GRPO computes old log-probs only when generation and optimizer steps are not aligned (they are here);
    # RLOO always does, with a separate forward.
    n_lm, n_rm, ref, old = info["matmul_params_lm"], info["matmul_params_rm"], args.beta != 0.0, task == "rloo"
    result = _rl_result(timer, shape, lambda t: rl_flops_group(n_lm, n_rm, t, ref=ref, old=old))
    result["same_tokens"] = result["tokens"] == rl_token_counts(setup, shape)  # same prompts, same lengths
    return result


def run_grpo(setup: Path, out: Path, shape: Shape, info: dict, grad_ckpt: bool = True) -> dict:
    return _run_group("grpo", setup, out, shape, info, grad_ckpt)


def run_rloo(setup: Path, out: Path, shape: Shape, info: dict, grad_ckpt: bool = True) -> dict:
    return _run_group("rloo", setup, out, shape, info, grad_ckpt)


RUNNERS = {"sft": run_sft, "reward": run_reward, "dpo": run_dpo, "ppo": run_ppo, "grpo": run_grpo,
           "rloo": run_rloo}
