"""One benchmark run in a fresh process: `python benchmarks/bench_worker.py SPEC.json RESULT.json`.

Each run gets its own interpreter so the frameworks cannot share state (accelerate's singletons, thread
settings, allocator caches) and a failure in one run does not end the benchmark.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing comes from the Hub: every model is a local directory
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main(spec_path: str, result_path: str) -> int:
    import torch

    from bench_common import THREADS, Shape

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(THREADS)
    shape = Shape(**spec["shape"])
    setup, out = Path(spec["setup"]), Path(spec["out"])
    info = json.loads((setup / "setup.json").read_text())
    cuda = spec.get("device") == "cuda"
    t0 = time.perf_counter()
    try:
        if spec["framework"] == "prefloop":
            import bench_prefloop

            bench_prefloop.PRECISION = spec.get("precision", "fp32")
            bench_prefloop.OVERRIDES = spec.get("overrides", {})
            result = bench_prefloop.RUNNERS[spec["task"]](setup, out, shape, info)
        else:
            import bench_trl

            if cuda:
                bench_trl.DEVICE_ARGS = {"bf16": spec.get("precision") == "bf16", "fp16": False, "use_cpu": False}
            result = bench_trl.RUNNERS[spec["task"]](setup, out, shape, info, grad_ckpt=spec.get("grad_ckpt", True))
        result["ok"] = True
    except Exception as e:  # noqa: BLE001 - reported in the results, the benchmark goes on
        traceback.print_exc()
        result = {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    result["wall_s"] = time.perf_counter() - t0
    if cuda and torch.cuda.is_available():
        result["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
    result["threads"] = torch.get_num_threads()
    Path(result_path).write_text(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
