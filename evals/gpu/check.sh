#!/usr/bin/env bash
# The GPU figures of issue 15 in one short run (about 5 minutes on an H200-class GPU):
#   autoscope bench latency at 4,096 and 65,536 candidates on cuda (ours beside gpytorch and
#   BoTorch), and the cost-growth curves on cuda, as JSON and PNG under $OUT (default ./gpu-out).
#
# Run from the repository root on a machine with CUDA and a Python that has torch (gpytorch and
# BoTorch too, or carry them). Where the project's other dependencies are missing (pydantic,
# typer...), prepare wheels beforehand with evals/gpu/wheels.sh; they are installed from .whl/.
set -euo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# the repository root is the package `autoscope` (pyproject: package-dir "autoscope" = ".")
mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/autoscope
export PYTHONPATH=/tmp/pkg:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
run() { "$PY" -m autoscope "$@"; }
run bench latency --device cuda --candidates 4096 --dim 64 --observations 200 --json > "$OUT/latency-4096.json"
run bench latency --device cuda --candidates 65536 --dim 64 --observations 200 --json > "$OUT/latency-65536.json"
run bench growth --device cuda --json --figure "$OUT/growth-cuda.png" > "$OUT/growth-cuda.json"
"$PY" - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
for f in sorted(out.glob("latency-*.json")):
    r = json.loads(f.read_text())
    print(f.name, {k: round(v, 2) for k, v in r["step_ms"].items()})
PY
