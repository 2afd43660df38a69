"""ddp_jobs.py under a DeepSpeed launch, recording what was partitioned:

    accelerate launch --config_file examples/accelerate/zero3.yaml tests/smoke/deepspeed_jobs.py JOBS.json

Besides what ddp_jobs.py records, each process writes DIR/prepared-rank<r>.json: for every model a recipe
prepared, the ZeRO stage, its parameters' elements, how many of them this process holds (ZeRO-3: its
partition, about half of each parameter; ZeRO-2: all of them) and how many parameters are released (empty outside
a gather). ZeRO-3 here partitions every parameter, however small (stage3_param_persistence_threshold 0)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import ddp_jobs  # noqa: E402


def record_prepared(out_dir: Path) -> None:
    from prefloop.recipes import context
    from prefloop.runtime import deepspeed

    real = context.RunContext.prepare
    seen: list[dict] = []

    def recording(self, *objects):
        out = real(self, *objects)
        params = [p for m in self.acc._models for p in m.parameters()]
        seen.append({"recipe": self.recipe, "stage": deepspeed.stage(self.acc), "params": len(params),
                     "partitioned": sum(hasattr(p, "ds_tensor") for p in params),
                     "released": sum(p.numel() == 0 for p in params),
                     "total": sum(getattr(p, "ds_numel", p.numel()) for p in params),
                     "local": sum((p.ds_tensor if hasattr(p, "ds_tensor") else p).numel() for p in params)})
        (out_dir / f"prepared-rank{self.rank}.json").write_text(json.dumps(seen))
        return out

    context.RunContext.prepare = recording
    real_configure = deepspeed.configure

    def partition_everything(acc, cfg):
        # ZeRO-3 keeps parameters under stage3_param_persistence_threshold (1e5 elements by default: all of a
        # test's micro model) whole on every process; 0 partitions them all, as a large model's would be.
        real_configure(acc, cfg)
        acc.state.deepspeed_plugin.deepspeed_config.setdefault("zero_optimization", {})[
            "stage3_param_persistence_threshold"] = 0

    deepspeed.configure = partition_everything


if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    record_prepared(Path(spec["out"]))
    sys.exit(ddp_jobs.main(sys.argv[1]))
