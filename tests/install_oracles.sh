#!/usr/bin/env bash
# Installs the test oracles into the active environment: transformers, and mamba_ssm's pure-PyTorch
# reference functions. mamba_ssm is built without its CUDA extension, so this works on a CPU-only machine.
# Does nothing where every oracle is already installed at its pinned version.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
mamba_ssm="mamba-ssm==2.3.2.post1"
python - "$here/requirements-oracles.txt" "$mamba_ssm" <<'PYTHON' && exit 0
import importlib.metadata
import sys

pins = [line.split("#")[0].strip() for line in open(sys.argv[1])] + [sys.argv[2]]
for name, version in (pin.split("==") for pin in pins if pin):
    try:
        installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed != version:
        sys.exit(f"{name} is {installed or 'not installed'}, the tests want {version}: installing the oracles")
PYTHON
python -m pip install -r "$here/requirements-oracles.txt"
python -m pip install setuptools wheel packaging
MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE \
    python -m pip install --no-build-isolation --no-deps "$mamba_ssm"
