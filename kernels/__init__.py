"""Triton kernels for the ops of nanohybrid/ops.py, each with a forward and a backward pass, and the
adapters for the field's production kernels (upstream.py: mamba_ssm, flash-attn; on a CUDA GPU only).

Importing this package registers every kernel module in it with the registry (ops.load_backends()
does so when a kernel is first asked for; nothing imports it eagerly). Without a GPU the kernels
run in Triton's interpreter, which must be switched on (TRITON_INTERPRET=1) before this import. The
interpreter rounds bf16 wrongly, so there the kernels are offered in fp32 only.
"""

import importlib
import os
import pkgutil

import torch

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICES = ("cpu",) if INTERPRETED else ("cuda",)
DTYPES = (torch.float32,) if INTERPRETED else (torch.float32, torch.bfloat16, torch.float16)

for module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{module.name}")
