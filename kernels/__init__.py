"""The fast rungs of the ladder: for each op of nanohybrid/ops.py a folder, and in it a module per
implementation, named as the registry names it:

    kernels/<op>/cpu.py      the CPU fast path: the reference's maths in PyTorch, with the backward pass
                             written out, blocking and layout work (what makes training fast on a CPU)
    kernels/<op>/sdpa.py     attention only: PyTorch's fused scaled_dot_product_attention
    kernels/<op>/triton.py   Triton kernels, each with a forward and a backward pass
    kernels/upstream.py      the field's production kernels (mamba_ssm, causal-conv1d, flash-attn), on CUDA

Each module registers its implementation when it is imported; nanohybrid.ops imports a rung's modules
the first time a selection or the auto rule asks for that rung (ops.load_rung). Without a GPU the Triton
kernels run in Triton's interpreter, which must be switched on (TRITON_INTERPRET=1) before they are
imported. The interpreter rounds bf16 wrongly, so there they are offered in fp32 only.
"""

import os

import torch

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICES = ("cpu",) if INTERPRETED else ("cuda",)  # where the Triton kernels run
DTYPES = (torch.float32,) if INTERPRETED else (torch.float32, torch.bfloat16, torch.float16)
