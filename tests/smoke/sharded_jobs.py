"""ddp_jobs.py under a sharded launch, recording what was sharded:

    accelerate launch --config_file examples/accelerate/fsdp2.yaml tests/smoke/sharded_jobs.py JOBS.json

Besides what ddp_jobs.py records, each process writes DIR/prepared-rank<r>.json: for every model a recipe
prepared, the number of its parameters and how many of their elements this process holds (under FSDP2 each
holds about half of each parameter; replicated, all of it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import ddp_jobs  # noqa: E402


def record_prepared(out_dir: Path) -> None:
    from torch.distributed.tensor import DTensor

    from prefloop.recipes import context

    real = context.RunContext.prepare
    seen: list[dict] = []

    def recording(self, *objects):
        out = real(self, *objects)
        roots = {id(m): m for m in self.acc._models}.values() if self.acc._models else \
            [o for o in out if hasattr(o, "parameters")]
        for m in roots:
            params = list(m.parameters())
            seen.append({"recipe": self.recipe, "dtensors": sum(isinstance(p, DTensor) for p in params),
                         "params": len(params), "total": sum(p.numel() for p in params),
                         "local": sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in params)})
        (out_dir / f"prepared-rank{self.rank}.json").write_text(json.dumps(seen))
        return out

    context.RunContext.prepare = recording
    real_frozen = context.RunContext.place_frozen
    frozen: list[dict] = []

    def recording_frozen(self, model):
        out = real_frozen(self, model)
        params = list(out.parameters())
        frozen.append({"recipe": self.recipe, "dtensors": sum(isinstance(p, DTensor) for p in params),
                       "params": len(params), "total": sum(p.numel() for p in params),
                       "local": sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in params)})
        (out_dir / f"frozen-rank{self.rank}.json").write_text(json.dumps(frozen))
        return out

    context.RunContext.place_frozen = recording_frozen


if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    record_prepared(Path(spec["out"]))
    sys.exit(ddp_jobs.main(sys.argv[1]))
