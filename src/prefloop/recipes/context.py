"""RunContext: the bookkeeping every recipe shares, so each recipe file keeps only its own loop.

It also guards `--resume`: a checkpoint records what its run computes (`run_record`: every option
that changes the result, the SHA-256 of every input file, the number of processes), and a resume whose
record differs is refused with the list of differences, before any model is loaded. Options that
cannot change the result may differ: --max-steps upwards (the schedule is stretched from the resumed
step on), logging and checkpoint frequency, and where options come from.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import torch

from prefloop.data import file_sha256
from prefloop.errors import ConfigError
from prefloop.runtime import (
    Checkpointer,
    MetricsLogger,
    StepProgress,
    console,
    deepspeed,
    make_accelerator,
    run_meta,
    save_hf,
    seed_everything,
    sharding,
    write_json,
)
from prefloop.runtime.progress import run_summary

from .common import output_dir
from .options import check_ranges, check_report_to, flag

# Options that do not change what a run computes, so a resume may change them (max_steps: only upwards).
RESUME_MAY_CHANGE = frozenset({"config", "out", "resume", "overwrite", "log_every", "save_every", "keep_every",
                               "max_steps", "report_to"})


def run_record(cfg, world: int) -> dict:
    """What a run computes: every option that changes the result, the SHA-256 of each input file
    option, and the number of processes (it changes seeds and batch shards)."""
    options, data = {}, {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in RESUME_MAY_CHANGE - {"max_steps"}:
            continue
        if isinstance(value, Path) and value.is_file():
            data[f.name] = file_sha256(value)
        options[f.name] = value if isinstance(value, int | float | str | bool | type(None)) else str(value)
    record = {"options": options, "data": data, "world_size": world}
    if sharding.requested():  # sharded checkpoints hold other optimizer state than data-parallel ones
        record["sharding"] = sharding.requested()
    return record


def resume_differences(saved: dict, now: dict) -> list[str]:
    """Human-readable differences that make a resume compute something else (empty: safe to resume)."""
    out = []
    old_opts, new_opts = saved.get("options", {}), now["options"]
    for name in sorted(old_opts.keys() | new_opts.keys()):
        old, new = old_opts.get(name), new_opts.get(name)
        if name == "max_steps":
            if old is not None and (new is None or new < old):
                out.append(f"{flag(name)} {old} -> {new} (it may only grow)")
        elif old != new:
            out.append(f"{flag(name)} {old} -> {new}")
    for name in sorted(saved.get("data", {}).keys() | now["data"].keys()):
        if saved.get("data", {}).get(name) != now["data"].get(name):
            out.append(f"{flag(name)} (file contents differ)")
    if saved.get("world_size") != now["world_size"]:
        out.append(f"processes {saved.get('world_size')} -> {now['world_size']}")
    if saved.get("sharding") != now.get("sharding"):
        out.append(f"sharding {saved.get('sharding') or 'none'} -> {now.get('sharding') or 'none'}")
    return out


def _full_state_dict(acc, model) -> dict | None:
    """Gathered weights of a sharded (FSDP2) or partitioned (ZeRO-3) model; None when they are whole anyway."""
    if deepspeed.is_deepspeed(acc):
        return deepspeed.full_state_dict(acc, model)
    return sharding.full_state_dict(acc, model)


class RunContext:
    def __init__(self, recipe: str, cfg):
        self.recipe, self.cfg = recipe, cfg
        from prefloop.errors import PrecisionError

        check_ranges(cfg)
        check_report_to(cfg)  # a missing package stops the Python API too, before a model loads
        try:
            self.acc = make_accelerator(cfg.precision)
        except PrecisionError as e:
            raise ConfigError(str(e)) from None
        if sharding.is_sharded(self.acc) and cfg.batch_size % self.acc.num_processes:
            # Every forward of a sharded model gathers with all processes: each must run as many micro-batches.
            raise ConfigError(f"--batch-size {cfg.batch_size} must be a multiple of the number of processes "
                              f"({self.acc.num_processes}) under FSDP2")
        deepspeed.check_recipe(self.acc, recipe, cfg)
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.is_main = self.acc.is_main_process
        self.out = output_dir(cfg, recipe)
        self.ckpt = Checkpointer(self.out, self.acc)
        self.resuming = bool(cfg.resume and self.ckpt.exists())
        self.record = run_record(cfg, self.world)
        if self.resuming:
            self._check_resume()
        elif cfg.resume and self.is_main:
            console.print(f"[yellow]{self.out}/checkpoint not found: starting from scratch")
        self.process_seed = seed_everything(cfg.seed, self.rank)
        self.logger: MetricsLogger | None = None
        self._optimizer_state: dict | None = None  # a sharded optimizer's resumed state, loaded after prepare

    def _check_resume(self) -> None:
        saved = self.ckpt.run_record()
        if saved is None:
            if self.is_main:
                console.print(f"[yellow]{self.ckpt.dir} records no options (an older prefloop): resuming unchecked")
            return
        diff = resume_differences(saved, self.record)
        if diff:
            raise ConfigError(f"--resume: {self.ckpt.dir} was written by a run with other options: {'; '.join(diff)}. "
                              "Resume with the same options, or start a new run in another --out")

    @property
    def device(self) -> torch.device:
        return self.acc.device

    def init_path(self, name: str, default: str) -> str:
        """Where to load a trained model from: the checkpoint when resuming, else the given path."""
        return str(self.ckpt.model_path(name)) if self.resuming else default

    def resume_state(self) -> dict | None:
        """The checkpoint's saved state (step, optimizer, scheduler, ...) when resuming, else None."""
        return self.ckpt.load_state() if self.resuming else None

    def optimizer(self, params, total_steps: int, state: dict | None = None):
        """AdamW and its learning-rate schedule over `total_steps`, restored from `state` when resuming."""
        from .common import make_optimizer, make_scheduler

        opt = make_optimizer(params, self.cfg)
        sched = make_scheduler(opt, self.cfg, total_steps)
        if state:
            if sharding.is_sharded(self.acc):
                self._optimizer_state = state["optimizer"]  # its parameters exist once `prepare` has sharded them
            else:
                opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
        return opt, sched

    def prepare(self, *objects):
        """`accelerator.prepare` (DDP or FSDP2 wrapping of the trained model and its optimizer); a resumed
        optimizer's state is loaded here when sharding makes its parameters only now."""
        modules = [o for o in objects if isinstance(o, torch.nn.Module)]
        if sharding.is_sharded(self.acc):  # start from the main process's weights, as DDP does
            sharding.broadcast_from_main(self.acc, modules)
        one_model = sharding.is_sharded(self.acc) or deepspeed.is_deepspeed(self.acc)  # one model per prepare
        if one_model and len(modules) > 1:  # PPO's policy and critic: one sharded module
            out = sharding.prepare_joint(self.acc, modules, *[o for o in objects if o not in modules])
        else:
            out = self.acc.prepare(*objects)
        if self._optimizer_state is not None:
            opt = next(o for o in out if isinstance(o, torch.optim.Optimizer))
            sharding.load_full_optimizer_state(self.acc, opt, self._optimizer_state)
            self._optimizer_state = None
        return out

    def save_pretrained(self, model, path: Path, tokenizer=None) -> None:
        """`model.save_pretrained(path)` (a plain module: `torch.save` of its state dict to `path`) from the main
        process, with a sharded model's weights gathered first. Every process must call it."""
        model = self.acc.unwrap_model(model)
        weights = _full_state_dict(self.acc, model)
        if self.is_main:
            if hasattr(model, "save_pretrained"):
                model.save_pretrained(path, safe_serialization=True, **({} if weights is None else
                                                                         {"state_dict": weights}))
                if tokenizer is not None:
                    tokenizer.save_pretrained(path)
            else:
                torch.save(model.state_dict() if weights is None else weights, path)
        self.acc.wait_for_everyone()

    def place_frozen(self, model):
        """A frozen model on the device, sharded under FSDP2 (`prefloop.runtime.sharding.place_frozen`)."""
        return sharding.place_frozen(self.acc, model)

    def gathered(self, model):
        """Whole weights of the prepared `model` inside the block (sampling, evaluation on its submodules);
        see `prefloop.runtime.sharding.gathered`. Every process must enter it."""
        if deepspeed.is_deepspeed(self.acc):
            return deepspeed.gathered(self.acc, self.acc.unwrap_model(model))
        return sharding.gathered(self.acc, model)

    def start(self, total: int, state: dict | None = None) -> int:
        """Open the metrics log and progress bar; returns the step to start from."""
        start = int(state["step"]) if state else 0
        if start > total:
            raise ConfigError(f"--resume: {self.ckpt.dir} is at step {start}, past the {total} steps of this run "
                              "(--max-steps may only grow)")
        self.logger = MetricsLogger(self.out / "metrics.jsonl", enabled=self.is_main,
                                    resume_from_step=start if self.resuming else None,
                                    report_to=getattr(self.cfg, "report_to", "none"), run_config=self.cfg)
        self.progress = StepProgress(f"{self.recipe}", total=total, start=start, enabled=self.is_main)
        if self.is_main:
            sharded = ", sharded (FSDP2)" if sharding.is_sharded(self.acc) else ""
            if deepspeed.is_deepspeed(self.acc):
                sharded = f", DeepSpeed ZeRO-{deepspeed.stage(self.acc)}"
            console.print(f"[bold]{self.recipe}[/]: {total} steps on {self.world} process(es){sharded}, device "
                          f"{self.device}, seed {self.cfg.seed}" + (f", resuming at step {start}" if start else ""))
        return start

    def log(self, step: int, metrics: dict, show: tuple[str, ...] = ()) -> None:
        if step % max(1, self.cfg.log_every) == 0 or step == 1:
            self.logger.log(step, metrics)
        self.progress.update(1, **{k.split("/")[-1]: metrics[k] for k in show if k in metrics})

    def accumulate(self, micro_batches: list, *models) -> Iterator:
        """Yield each micro-batch of one optimizer step; all but the last run inside `no_sync` of every model,
        so DDP all-reduces the summed gradients once per step instead of once per micro-batch."""
        for j, mb in enumerate(micro_batches):
            with ExitStack() as stack:
                if j < len(micro_batches) - 1:
                    for m in models:
                        stack.enter_context(self.acc.no_sync(m))
                stack.enter_context(deepspeed.accumulating(self.acc, last=j == len(micro_batches) - 1))
                yield mb

    def step(self, opt, sched) -> float:
        """The optimizer step of every recipe: clip the gradients to --max-grad-norm (0: measure only; a norm
        of inf scales them by exactly 1), step, advance the schedule, zero the gradients. Returns the norm
        of all the optimizer's gradients before clipping (`grad_norm` in the metrics)."""
        params = [p for g in opt.param_groups for p in g["params"]]
        norm = self.acc.clip_grad_norm_(params, self.cfg.max_grad_norm or math.inf)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return float(norm)

    def gather_object(self, obj) -> list:
        """`obj` of every process, in rank order (on every process)."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def maybe_checkpoint(self, step: int, total: int, models: dict, tokenizer, opt, sched,
                         extra: Callable[[], dict] | None = None) -> None:
        """Every --save-every steps: the models, optimizer and schedule state, and `extra()` (anything else the
        recipe resumes from: KL controller, random generators...; called on every process)."""
        every = self.cfg.save_every
        if every and step % every == 0 and step < total:
            with ExitStack() as stack:  # what `extra` reads of a sharded model (e.g. thresholds) is whole
                for m in models.values() if extra else ():
                    stack.enter_context(self.gathered(m))
                more = extra() if extra else {}
            state = {"optimizer": sharding.full_optimizer_state(self.acc, opt), "scheduler": sched.state_dict(),
                     **more}
            unwrapped = {k: self.acc.unwrap_model(m) for k, m in models.items()}
            # Sharded weights are gathered by every process (collective), then written by the main one.
            weights = {k: sharding.full_state_dict(self.acc, m) for k, m in unwrapped.items()}
            self.ckpt.save(step, unwrapped, tokenizer, state, run=self.record, state_dicts=weights)
            # Fault injection for the resume tests: die like a killed job right after this checkpoint.
            if os.environ.get("PREFLOOP_KILL_AFTER_STEP") == str(step):
                os.kill(os.getpid(), signal.SIGKILL)

    def finish(self, model, tokenizer, metrics: dict, data_hashes: dict, name: str = "model",
               extra: dict | None = None) -> dict:
        """Save the final HF directory and prefloop.json (main process), close the progress bar."""
        from prefloop.models.precision import cast_for_saving, precision_record

        self.progress.close()
        precision = precision_record(self.cfg, self.acc.mixed_precision)
        meta = run_meta(self.recipe, self.cfg, data_hashes, metrics, {**(extra or {}), "precision": precision})
        weights = _full_state_dict(self.acc, self.acc.unwrap_model(model))  # every process: collective
        if self.is_main:
            with cast_for_saving(self.acc.unwrap_model(model), precision["saved_dtype"]) as unwrapped:
                if weights is not None:
                    weights = sharding.cast_state_dict(weights, next(unwrapped.parameters()).dtype)
                save_hf(unwrapped, tokenizer, self.out / name, meta, state_dict=weights)
            write_json(self.out / "prefloop.json", meta)
            print(run_summary(self.recipe, self.progress.total, self.logger.history, metrics, self.out / name),
                  flush=True)
        self.acc.wait_for_everyone()
        return meta

    def all_sum(self, x: float) -> float:
        if self.world == 1:
            return float(x)
        t = torch.tensor([float(x)], device=self.device)
        return float(self.acc.reduce(t, reduction="sum").item())
