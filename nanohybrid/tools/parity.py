"""The parity suite: does an implementation of an op compute what the readable reference computes?

For every op there are input cases chosen to break kernels (lengths that are not multiples of a block
or chunk, batch, heads and groups above one, non-zero initial states, single-token decoding, masks
with holes). For each case it compares, against the reference: the forward output, the final state,
and the gradient of every floating-point input under the same random upstream gradient. While the
candidate runs, every fresh float allocation (torch.empty, torch.empty_like) is filled with NaN, so a
kernel that leaves part of its output unwritten fails instead of passing by luck.

Bounds (relative error, see nanohybrid/tools/testing.py and docs/ladder.md, "How the parity suite
proves a rung"):
  fp32   KERNEL_FP32 = 1e-4: a kernel sums in a different order (blocks, chunks, atomics) and may
         use exp2/log2 forms; rounding then differs from the reference by ~1e-6, growing with length.
         1e-4 leaves room for that while a wrong mask, gate or index gives errors near 1.
  bf16   (GPU) at most 2x PyTorch's own error: the reference run in bf16, against the reference in fp64.

The cases and their inputs are in nanohybrid/tools/parity_cases.py.

tests/test_kernels.py runs it over the whole registry; lessons/assignments/grade.py over a student's file.
"""

import contextlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import ops
from .parity_cases import CASES, case_inputs
from .testing import assert_close, relative_error

KERNEL_FP32 = 1e-4
BF16_FACTOR = 2.0


@dataclass
class Check:
    case: str
    quantity: str
    error: float
    bound: float
    message: str = ""

    @property
    def passed(self) -> bool:
        return not self.message and self.error <= self.bound

    def __str__(self) -> str:
        verdict = "pass" if self.passed else "FAIL"
        detail = self.message or f"relative error {self.error:.2e} (bound {self.bound:.0e})"
        return f"{verdict}  {self.case}: {self.quantity}: {detail}"


@contextlib.contextmanager
def poisoned_allocations():
    """Fill every fresh float tensor from torch.empty / torch.empty_like with NaN."""
    empty, empty_like = torch.empty, torch.empty_like

    def poison(tensor):
        return tensor.fill_(float("nan")) if tensor.is_floating_point() else tensor

    torch.empty = lambda *args, **kwargs: poison(empty(*args, **kwargs))
    torch.empty_like = lambda *args, **kwargs: poison(empty_like(*args, **kwargs))
    try:
        yield
    finally:
        torch.empty, torch.empty_like = empty, empty_like


# The ops that return their final state too, and their outputs as the references name them.
RETURNS = {"selective_scan": "(y, final_state)", "ssd": "(y, final_state)", "rglru_scan": "(h, final_state)",
           "gated_delta_rule": "(o, final_state)", "causal_conv1d": "(y, final_state)"}


class WrongReturn(Exception):
    """An implementation returned something other than what its op returns (a tuple of two, or one tensor)."""


def _outputs(op: str, result) -> dict[str, torch.Tensor]:
    if op not in RETURNS:
        return {"output": result}
    if isinstance(result, (tuple, list)) and len(result) == 2:
        return {"output": result[0], "final state": result[1]}
    if isinstance(result, torch.Tensor):
        got = f"one tensor of shape {tuple(result.shape)}"
    else:
        got = f"a {type(result).__name__}" + (f" of {len(result)}" if isinstance(result, (tuple, list)) else "")
    raise WrongReturn(f"returned {got}; return a tuple {RETURNS[op]}, the output and the state after the last token")


def prepare(inputs: dict, device: str, dtype: torch.dtype) -> dict:
    """Tensors moved to `device`; floating-point ones cast to `dtype` as fresh leaves that track gradients."""
    prepared = {}
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device)
            if value.is_floating_point():
                value = value.to(dtype).requires_grad_()
        prepared[name] = value
    return prepared


def positional_arguments(op: str, inputs: dict) -> tuple:
    """The keyword inputs of a case as the op's positional arguments, defaults filled in."""
    signature = inspect.signature(ops.implementations(op)["reference"].function)
    bound = signature.bind(**inputs)
    bound.apply_defaults()
    return bound.args


def _run(op, function, inputs, upstream, device, dtype, poison=False, gradients=True):
    """Outputs of one implementation and the gradients of its float inputs under the upstream gradient."""
    inputs = prepare(inputs, device, dtype)
    differentiable = [name for name, value in inputs.items() if isinstance(value, torch.Tensor) and value.requires_grad]
    with poisoned_allocations() if poison else contextlib.nullcontext():
        if not gradients:
            with torch.no_grad():
                return {name: value.detach().cpu() for name, value in _outputs(op, function(**inputs)).items()}
        outputs = _outputs(op, function(**inputs))
        loss = sum((outputs[name].double() * upstream[name].to(device)).sum() for name in outputs)
        gradients = torch.autograd.grad(loss, [inputs[name] for name in differentiable], allow_unused=True)
    results = {**outputs, **{f"d{name}": gradient for name, gradient in zip(differentiable, gradients)}}
    return {name: None if value is None else value.detach().cpu() for name, value in results.items()}


def _refusal(op: str, refuses, inputs: dict, device, dtype, gradients: bool) -> str | None:
    """Why an implementation refuses a case's inputs (as the model would pass them), or None."""
    if refuses is None:
        return None
    with contextlib.nullcontext() if gradients else torch.no_grad():
        return refuses(*positional_arguments(op, prepare(inputs, device, dtype)))


def check_implementation(op: str, function: Callable, device: str = "cpu", dtype: torch.dtype = torch.float32,
                         cases: list[str] | None = None, poison: bool = True, refuses=None,
                         state_gradient: bool = True) -> list[Check]:
    """Run `function` on every case of `op` (or the named ones) and compare it with the reference run in
    float64; one Check per compared quantity: output, final state, and d<input> for each float input.

    An upstream kernel's declared limits (ops.Implementation): a case it `refuses` with gradients is
    compared forward only, if it takes it without; `state_gradient=False` (mamba_ssm's selective_scan_fn
    drops the final state's gradient) compares gradients with no upstream gradient on the final state."""
    reference = ops.implementations(op)["reference"].function
    checks = []
    for case_name, case in CASES[op].items():
        if cases is not None and case_name not in cases:
            continue
        inputs = case_inputs(op, case, torch.Generator().manual_seed(0))
        with torch.no_grad():
            shapes = _outputs(op, reference(**prepare(inputs, "cpu", torch.float64)))
        generator = torch.Generator().manual_seed(1)
        upstream = {name: torch.randn(t.shape, generator=generator, dtype=torch.float64) for name, t in shapes.items()}
        if not state_gradient and "final state" in upstream:
            upstream["final state"].zero_()
            checks.append(Check(case_name, "final state gradient: not propagated (declared)", 0.0, 0.0))
        reason = _refusal(op, refuses, inputs, device, dtype, gradients=True)
        gradients = not reason
        if reason:
            if _refusal(op, refuses, inputs, device, dtype, gradients=False):
                checks.append(Check(case_name, f"refused: {reason}", 0.0, 0.0))
                continue
            checks.append(Check(case_name, f"gradients not compared: {reason}", 0.0, 0.0))
        expected = _run(op, reference, inputs, upstream, "cpu", torch.float64, gradients=gradients)
        if dtype == torch.float32:
            bounds = dict.fromkeys(expected, KERNEL_FP32)
        else:  # PyTorch's own error at this precision: the reference run in `dtype`, against float64
            pytorch = _run(op, reference, inputs, upstream, device, dtype, gradients=gradients)
            bounds = {name: BF16_FACTOR * max(relative_error(pytorch[name], value), 1e-3) for name, value in expected.items()}
        try:
            actual = _run(op, function, inputs, upstream, device, dtype, poison, gradients)
        except WrongReturn as error:
            checks.append(Check(case_name, "returns", float("inf"), 0.0, str(error)))
            continue
        except Exception as error:  # a kernel that crashes fails the case, readably
            checks.append(Check(case_name, "runs", float("inf"), 0.0, f"raised {type(error).__name__}: {error}"))
            continue
        checks.extend(compare(case_name, name, actual.get(name), value, bounds[name]) for name, value in expected.items())
    return checks


def compare(case: str, name: str, actual, expected, bound: float) -> Check:
    if actual is None:
        return Check(case, name, float("inf"), bound, "missing (no gradient reached this input)")
    if actual.shape != expected.shape:
        return Check(case, name, float("inf"), bound, f"shape {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    if not torch.isfinite(actual).all():
        return Check(case, name, float("inf"), bound, "NaN or inf (memory left unwritten?)")
    return Check(case, name, relative_error(actual, expected), bound)


def model_step(model, tokens, selection: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and every parameter's gradient of one training step of `model` with the ops in `selection`."""
    model.zero_grad()
    with ops.use(**selection):
        output = model(tokens, targets=tokens)
        output.loss.backward()
    return output.logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def assert_model_matches_reference(model, tokens, selection: dict) -> None:
    """A training step with the ops in `selection` against the same step with every op on its readable
    reference: the logits and every parameter's gradient within KERNEL_FP32 (as each kernel's own parity)."""
    reference_logits, reference_grads = model_step(model, tokens, dict.fromkeys(ops.OPS, "reference"))
    logits, grads = model_step(model, tokens, selection)
    assert_close(logits, reference_logits, KERNEL_FP32, "logits")
    for name, gradient in grads.items():
        assert_close(gradient, reference_grads[name], KERNEL_FP32, f"d{name}")
