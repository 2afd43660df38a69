"""Checkpoints: Hugging Face directories that plain transformers loads, plus resumable training state.

Layout of a run directory `OUT/`:
  OUT/model/            final HF directory (config, safetensors, tokenizer, generation config)
  OUT/prefloop.json     recipe, config, data hashes, metrics (also copied into OUT/model/)
  OUT/checkpoint/       the latest resumable state: one HF directory per trained model, `state.pt`
                        (optimizer, scheduler, step, data position, KL controller...), `rng_rank{r}.pt`
                        per process, `run.json` (what the run computes: options, data hashes, world size,
                        for the resume guard) and `complete.json`, written last.

A save writes OUT/checkpoint.tmp completely, then swaps it in with two renames (checkpoint -> .old,
.tmp -> checkpoint). A kill between the two leaves no OUT/checkpoint; the next reader then takes the
newest complete one: .tmp if `complete.json` says it was finished, else .old.

Everything is loaded with `torch.load(weights_only=True)` (tensors and plain containers only), so a
checkpoint directory cannot run code; the numpy RNG state is stored as a tensor for that reason.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path

import numpy as np
import torch

from .seeding import rng_state, set_rng_state


def _jsonable(obj):
    if is_dataclass(obj):
        obj = asdict(obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float | int | str | bool) or obj is None:
        return obj
    return str(obj)


def write_json(path: str | Path, obj) -> None:
    """Atomic JSON write (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(obj), indent=2) + "\n")
    tmp.replace(path)


def _save_model(model, path: Path, state_dict: dict | None) -> None:
    """`save_pretrained`, with the weights of `state_dict` when given (a sharded model's gathered weights)."""
    if state_dict is None:
        model.save_pretrained(path, safe_serialization=True)
    else:
        model.save_pretrained(path, safe_serialization=True, state_dict=state_dict)


def save_hf(model, tokenizer, out_dir: str | Path, meta: dict | None = None, state_dict: dict | None = None) -> Path:
    """Save `model` (unwrapped) and `tokenizer` as a plain Hugging Face directory, plus prefloop.json; with
    `state_dict`, those weights instead of the model's own (a sharded model's, gathered)."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    _save_model(model, tmp, state_dict)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if meta is not None:
        write_json(tmp / "prefloop.json", meta)
    _replace_dir(tmp, out_dir)
    return out_dir


def _replace_dir(src: Path, dst: Path) -> None:
    old = dst.with_name(dst.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if dst.exists():
        dst.rename(old)
    src.rename(dst)
    if old.exists():
        shutil.rmtree(old)


def run_meta(recipe: str, config, data_hashes: dict | None = None, metrics: dict | None = None,
             extra: dict | None = None) -> dict:
    import prefloop

    meta = {"prefloop_version": prefloop.__version__, "recipe": recipe, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "torch": torch.__version__, "config": _jsonable(config), "data": data_hashes or {},
            "metrics": metrics or {}}
    if extra:
        meta.update(extra)
    return meta


COMPLETE = "complete.json"
RUN_RECORD = "run.json"


def _safe_rng(state: dict) -> dict:
    """`rng_state()` with numpy's key array as a tensor, so that weights_only loading accepts it."""
    name, keys, pos, has_gauss, cached = state["numpy"]
    return {**state, "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]}


def _numpy_rng(state: dict) -> dict:
    name, keys, pos, has_gauss, cached = state["numpy"]
    return {**state, "numpy": (name, keys.numpy().astype(np.uint32), pos, has_gauss, cached)}


class Checkpointer:
    """Save and restore the resumable state of a recipe under `OUT/checkpoint`."""

    def __init__(self, out_dir: str | Path, accelerator):
        self.dir = Path(out_dir) / "checkpoint"
        self.tmp, self.old = self.dir.with_name("checkpoint.tmp"), self.dir.with_name("checkpoint.old")
        self.acc = accelerator

    def recover(self) -> None:
        """After a kill between the swap's two renames, put the newest complete checkpoint in place."""
        if self.acc.is_main_process and not self.dir.exists():
            if (self.tmp / COMPLETE).exists():
                self.tmp.rename(self.dir)
            elif (self.old / "state.pt").exists():
                self.old.rename(self.dir)
        self.acc.wait_for_everyone()

    def exists(self) -> bool:
        self.recover()
        return (self.dir / "state.pt").exists()

    def save(self, step: int, models: dict, tokenizer, state: dict, run: dict | None = None,
             state_dicts: dict | None = None) -> None:
        """`models` maps a name to an (unwrapped) HF model or a plain module; `state` holds optimizer etc.;
        `run` is the record of what the run computes (see `RunContext.run_record`); `state_dicts` maps a name
        to the weights to write for it (a sharded model's, gathered), None or absent: the model's own."""
        state_dicts = state_dicts or {}
        acc, tmp = self.acc, self.tmp
        if acc.is_main_process:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
            for name, model in models.items():
                weights = state_dicts.get(name)
                if hasattr(model, "save_pretrained"):
                    _save_model(model, tmp / name, weights)
                    if tokenizer is not None:
                        tokenizer.save_pretrained(tmp / name)
                else:
                    torch.save(model.state_dict() if weights is None else weights, tmp / f"{name}.pt")
            torch.save({"step": step, **state}, tmp / "state.pt")
            if run is not None:
                write_json(tmp / RUN_RECORD, run)
        acc.wait_for_everyone()
        torch.save(_safe_rng(rng_state()), tmp / f"rng_rank{acc.process_index}.pt")
        acc.wait_for_everyone()
        if acc.is_main_process:
            write_json(tmp / COMPLETE, {"step": step, "processes": acc.num_processes})
            _replace_dir(tmp, self.dir)
        acc.wait_for_everyone()

    def model_path(self, name: str) -> Path:
        return self.dir / name

    def run_record(self) -> dict | None:
        """The checkpoint's `run.json`, or None for a checkpoint written before it was recorded."""
        path = self.dir / RUN_RECORD
        return json.loads(path.read_text()) if path.exists() else None

    def load_state(self) -> dict:
        """Load `state.pt` and this process's RNG streams; returns the state dict (with `step`)."""
        self.recover()
        state = torch.load(self.dir / "state.pt", map_location="cpu", weights_only=True)
        rng_file = self.dir / f"rng_rank{self.acc.process_index}.pt"
        if rng_file.exists():
            set_rng_state(_numpy_rng(torch.load(rng_file, map_location="cpu", weights_only=True)))
        return state
