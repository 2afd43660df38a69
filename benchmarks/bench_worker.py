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
    t0 = time.perf_counter()
    try:
        if spec["framework"] == "prefloop":
            from bench_prefloop import RUNNERS

            result = RUNNERS[spec["task"]](setup, out, shape, info)
        else:
            from bench_trl import RUNNERS

            result = RUNNERS[spec["task"]](setup, out, shape, info, grad_ckpt=spec.get("grad_ckpt", True))
        result["ok"] = True
    except Exception as e:  # noqa: BLE001 - reported in the results, the benchmark goes on
        traceback.print_exc()
        result = {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    result["wall_s"] = time.perf_counter() - t0
    result["threads"] = torch.get_num_threads()
    Path(result_path).write_text(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
