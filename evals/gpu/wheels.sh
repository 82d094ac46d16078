#!/usr/bin/env bash
# Wheels for evals/gpu/check.sh on a CUDA machine that has torch, gpytorch, BoTorch, NumPy, SciPy,
# scikit-learn, matplotlib, typer and rich but not the rest of autoscope's imports (Python 3.12,
# x86-64). Run here, in the repository root; .whl/ is git-ignored locally via .git/info/exclude.
set -euo pipefail
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl pydantic pydantic-core annotated-types typing-inspection tenacity h5py pyyaml
