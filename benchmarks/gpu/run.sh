#!/usr/bin/env bash
# The GPU check on a machine with a CUDA GPU, torch, transformers, accelerate and peft but no network.
# From the project's root, with the pure-Python wheels prefloop (and TRL) need in .whl/ and, optionally, the
# HH-RLHF file in .gpu-data/ (both git-ignored; benchmarks/README.md says how to fetch them):
#   bash benchmarks/gpu/run.sh OUT_DIR
# Installs the wheels into /tmp/site (no index, no dependency resolution), runs prefloop from the source
# tree and writes OUT_DIR/gpu_check.{md,json,log} plus the CUDA tests' log.
set -uo pipefail
out=${1:?usage: benchmarks/gpu/run.sh OUT_DIR}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "error: installing .whl/ failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$out/nvidia-smi.txt"
# The model setup (about 2 GB) and the runs' folders stay out of OUT_DIR, which receives only the results.
work=${PREFLOOP_GPU_WORK:-/tmp/prefloop-gpu-check}
python3 benchmarks/gpu/gpu_check.py --out "$work" "${@:2}" 2>&1 | tee "$out/gpu_check.log"
rc=${PIPESTATUS[0]}
cp "$work"/gpu_check.md "$work"/gpu_check.json "$work"/cuda_tests.log "$work"/cuda_report.jsonl "$out/" 2>/dev/null
exit "$rc"
