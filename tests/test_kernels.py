"""The ladder tested as one: every registered implementation of every op (the CPU fast paths, SDPA, the
Triton kernels) against the readable reference (nanohybrid/tools/parity.py): outputs, final states and
every input gradient, on odd lengths, several heads and groups, non-zero initial states, with fresh
allocations poisoned with NaN; then whole models on each rung against the model on the references. On
CPU the Triton kernels run in Triton's interpreter in fp32 (bound 1e-4); on a GPU they also run in bf16
(bound: 2x PyTorch's own bf16 error)."""

import pytest
import torch

from nanohybrid import ops
from nanohybrid.tools.parity import check_implementation

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
    implementation = ops.implementations(op)[name]
    checks = check_implementation(op, implementation.function, DEVICE, dtype, refuses=implementation.refuses,
                                  state_gradient=implementation.state_gradient)
    failures = [str(check) for check in checks if not check.passed]
    assert checks and not failures, "\n" + "\n".join(failures)


def rung(*names) -> dict[str, str]:
    """The selection that puts every op that has one of these implementations on it."""
    return {op: name for op in ops.OPS for name in names if name in ops.implementations(op)}


RUNGS = {"cpu": rung("cpu", "sdpa"), "triton": rung("triton")}
ARCHS = ["hymba", "jamba", "griffin", "hawk", "samba", "mamba2", "mamba2-ffn", "llama3", "mamba", "gated-deltanet",
         "qwen3-next"]


@pytest.mark.parametrize("rung", RUNGS)
@pytest.mark.parametrize("arch", ARCHS)
def test_every_tiny_preset_runs_forward_and_backward_on_each_rung(arch, rung):
    """The whole model with every op on one rung (the CPU fast paths, or the Triton kernels): logits and
    every parameter gradient match the model on the readable references (fp32; bound KERNEL_FP32, as each
    kernel's own parity)."""
    from nanohybrid.model import LanguageModel
    from nanohybrid.presets import get_config
    from nanohybrid.tools.parity import assert_model_matches_reference

    torch.manual_seed(0)
    model = LanguageModel(get_config(f"{arch}-tiny")).to(DEVICE)
    tokens = torch.randint(0, 320, (1, 11), device=DEVICE)  # the interpreter runs each program in Python: keep it short
    assert_model_matches_reference(model, tokens, RUNGS[rung])
