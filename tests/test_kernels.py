"""Every registered implementation of every op against the readable reference (nanohybrid/parity.py):
outputs, final states and every input gradient, on odd lengths, several heads and groups, non-zero
initial states, with fresh allocations poisoned with NaN. On CPU the Triton kernels run in Triton's
interpreter in fp32 (bound 1e-4); on a GPU they also run in bf16 (bound: 2x PyTorch's own bf16 error)."""

import pytest
import torch

from nanohybrid import ops
from nanohybrid.parity import check_implementation

ops.load_backends()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.bfloat16] if DEVICE == "cuda" else [torch.float32]
IMPLEMENTATIONS = [
    (op, name, dtype)
    for op in ops.OPS
    for name, implementation in ops.implementations(op).items()
    for dtype in DTYPES
    if name != "reference" and implementation.supports(DEVICE, dtype)
]


@pytest.mark.parametrize("op, name, dtype", IMPLEMENTATIONS, ids=[f"{o}-{n}-{str(d)[6:]}" for o, n, d in IMPLEMENTATIONS])
def test_implementation_matches_the_reference(op, name, dtype):
    checks = check_implementation(op, ops.implementations(op)[name].function, DEVICE, dtype)
    failures = [str(check) for check in checks if not check.passed]
    assert checks and not failures, "\n" + "\n".join(failures)
