#!/usr/bin/env bash
# Installs the test oracles into the active environment: transformers, and mamba_ssm's pure-PyTorch
# reference functions. mamba_ssm is built without its CUDA extension, so this works on a CPU-only machine.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python -m pip install -r "$here/requirements-oracles.txt"
python -m pip install setuptools wheel packaging
MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE \
    python -m pip install --no-build-isolation --no-deps mamba-ssm==2.3.2.post1
