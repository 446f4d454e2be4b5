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

Strong decay (cases with decay="strong"): Δ = softplus(N(1, 1)) (S6: its dt_bias added inside) and
A = -exp(3 + N(0, 1)/2), one A per SSD head, per S6 channel and state entry, so every one forgets within
a few steps (Δ·|A| from 6 to 80 for 90% of the steps, the median 25); the RG-LRU's log a and the gated delta
rule's g = -exp(2·N(0, 1)) span both ends, from -0.04 to -27 for 90% of the steps. Long sequences, SSD chunks of 64
and 256 and delta-rule chunks of 64 on lengths that are a multiple of neither. Inside a chunk of 256
the cumulative log decay reaches ~10⁴, where fp32's spacing is ~1e-3: a decay taken as exp(cum_t - cum_s)
or exp(cum_end - cum_s), or a gradient taken as a difference of sums over the chunk, is off by that much
wherever it matters, and dA misses by 2e-4 to 2e-3. A decay built from exactly its own terms (a segment
sum, a sum to the chunk's end) is rounded relative to its own exponent, which matters only where that
exponent is small (exp of a large one is ~0); these cases then stay at the ~1e-7 rounding of the others,
and KERNEL_FP32 holds with the same margin. (The delta rule's cumulative g reaches ~500 in a chunk of 64: a
difference form, transformers' torch_chunk_gated_delta_rule, is off by ~3e-6 there, 30x the others' rounding.)

tests/test_kernels.py runs it over the whole registry; lessons/assignments/grade.py over a student's file.
"""

import contextlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import ops
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


def case_inputs(op: str, case: dict, generator: torch.Generator) -> dict:
    """The keyword arguments of one case, in fp32 on the CPU."""
    def randn(*shape):
        return torch.randn(*shape, generator=generator)
    strong = case.get("decay") == "strong"  # the module docstring's "strong decay"
    if op == "selective_scan":
        b, l, d, n = case["shape"]
        x, dt = randn(b, l, d), randn(b, l, d)
        A = -torch.exp(3 + 0.5 * randn(d, n)) if strong else -torch.exp(randn(d, n) * 0.5)
        inputs = dict(x=x, dt=dt + 1 if strong else dt - 1, A=A, B=randn(b, l, n), C=randn(b, l, n))
        if case.get("full", True):
            inputs.update(D=randn(d), z=randn(b, l, d), dt_bias=randn(d) * 0.5, dt_softplus=True)
            if case.get("initial", True):
                inputs["initial_state"] = randn(b, d, n)
        else:
            inputs["dt"] = F.softplus(inputs["dt"])
        return inputs
    if op == "ssd":
        b, l, h, p, g, n, chunk = case["shape"]
        x, dt = randn(b, l, h, p), randn(b, l, h)
        A = -torch.exp(3 + 0.5 * randn(h)) if strong else -torch.exp(randn(h))
        inputs = dict(x=x, dt=F.softplus(dt + 1 if strong else dt - 1), A=A, B=randn(b, l, g, n),
                      C=randn(b, l, g, n), chunk_size=chunk)
        if case.get("initial", True):
            inputs["initial_state"] = randn(b, h, p, n)
        return inputs
    if op == "rglru_scan":
        b, l, r = case["shape"]
        reset = torch.zeros(b, l, dtype=torch.bool)
        for row, position in case.get("resets", []):
            reset[row, position] = True
        x = randn(b, l, r)
        log_a = -torch.exp(2 * randn(b, l, r)) if strong else -F.softplus(randn(b, l, r)) * 0.3
        inputs = dict(x=x, log_a=log_a, reset=reset)
        if case.get("initial", True):
            inputs["initial_state"] = randn(b, r)
        return inputs
    if op == "gated_delta_rule":  # q and k L2-normalised per head, q scaled by 1/sqrt(d_k), as the mixer passes them
        b, l, h, d_k, d_v, chunk = case["shape"]
        q, k = F.normalize(randn(b, l, h, d_k), dim=-1) * d_k**-0.5, F.normalize(randn(b, l, h, d_k), dim=-1)
        g = -torch.exp(2 * randn(b, l, h)) if strong else -0.5 * F.softplus(randn(b, l, h))
        inputs = dict(q=q, k=k, v=randn(b, l, h, d_v), g=g, beta=torch.sigmoid(randn(b, l, h)), chunk_size=chunk)
        if case.get("initial", True):
            inputs["initial_state"] = randn(b, h, d_k, d_v)
        return inputs
    if op == "attention":
        b, h, h_kv, l, s, hd, hd_v = case["shape"]
        query_index, key_index, query_document, key_document = case["layout"](b, l, s)
        return dict(q=randn(b, h, l, hd), k=randn(b, h_kv, s, hd), v=randn(b, h_kv, s, hd_v),
                    query_index=query_index, key_index=key_index, query_document=query_document,
                    key_document=key_document, max_distance=case.get("max_distance"), n_meta=case.get("n_meta", 0),
                    scale=hd**-0.5)
    if op == "moe_experts":
        t, d, hidden, n, k = case["shape"]
        logits = randn(t, n)
        if "unused_expert" in case:
            logits[:, case["unused_expert"]] = -1e9  # no token is routed to it
        weights, experts = torch.topk(logits.softmax(-1), k, dim=-1)
        return dict(x=randn(t, d), expert_weights=weights, experts=experts, gate_proj=randn(n, hidden, d) * d**-0.5,
                    up_proj=randn(n, hidden, d) * d**-0.5, down_proj=randn(n, d, hidden) * hidden**-0.5)
    if op == "causal_conv1d":
        b, l, c, K = case["shape"]
        starts = None
        if "starts" in case:
            starts = torch.zeros(b, l, dtype=torch.bool)
            for row, position in case["starts"]:
                starts[row, position] = True
        inputs = dict(x=randn(b, l, c), weight=randn(c, K) * K**-0.5, starts=starts)
        if case.get("bias", True):
            inputs["bias"] = randn(c)
        if case.get("initial", True):
            inputs["initial_state"] = randn(b, c, K - 1)
        return inputs
    if op == "rms_norm":
        b, l, D, group_size = case["shape"]
        return dict(x=randn(b, l, D) * 3, scale=1 + 0.5 * randn(D), group_size=group_size, eps=1e-6)
    raise ValueError(f"unknown op {op!r}; ops are {', '.join(ops.OPS)}")


def prefill_layout(b, l, s):
    """Prefill of s keys, the last l of them queried: one document, every slot filled in order."""
    key_index = torch.arange(s).expand(b, s)
    return key_index[:, s - l :], key_index, torch.ones(b, l, dtype=torch.long), torch.ones(b, s, dtype=torch.long)


def _ring_decode(b, l, s):
    """Decoding l tokens as the cache lays them out: 4 meta slots, a ring of s - 4 - l slots written
    modulo its size (so out of order), then the new tokens. Row 0 has wrapped its ring; row 1, at a
    different length, has not filled it yet: its slots never written hold EMPTY."""
    from ..cache import EMPTY
    ring, rows = s - 4 - l, []
    for length in (4 + 3 * ring + 1, 4 + ring - 2)[:b]:
        slots = [EMPTY] * ring
        for i in range(max(4, length - ring), length):
            slots[(i - 4) % ring] = i
        rows.append(list(range(4)) + slots + list(range(length, length + l)))
    key_index = torch.tensor(rows)
    return key_index[:, -l:], key_index, torch.ones(b, l, dtype=torch.long), torch.ones(b, s, dtype=torch.long)


def _documents(b, l, s):
    """Three packed documents; attention must stop at their boundaries."""
    query_index, key_index, _, _ = prefill_layout(b, l, s)
    document = torch.bucketize(key_index, torch.tensor([s // 4, 2 * s // 3]), right=True)  # uneven lengths
    return query_index, key_index, document[:, s - l :], document


CASES = {
    "selective_scan": {
        "odd length, D, z, dt bias, initial state": dict(shape=(2, 37, 12, 4)),
        "bare, state 16": dict(shape=(1, 16, 8, 16), full=False),
        "one token": dict(shape=(3, 1, 8, 4)),
        "strong decay, long, D, z, dt bias, no initial state": dict(shape=(1, 100, 8, 4), decay="strong",
                                                                    initial=False),
    },
    "ssd": {
        "odd length, 2 groups, initial state": dict(shape=(2, 37, 4, 8, 2, 8, 16)),
        "two whole chunks, no initial state": dict(shape=(1, 64, 2, 16, 1, 16, 32), initial=False),
        "one token": dict(shape=(2, 1, 4, 8, 2, 8, 16)),
        "strong decay, chunks of 64, 4 heads per group": dict(shape=(1, 100, 4, 4, 1, 4, 64), decay="strong"),
        "strong decay, chunks of 256, length 500, no initial state": dict(shape=(2, 500, 8, 4, 2, 4, 256),
                                                                          decay="strong", initial=False),
    },
    "rglru_scan": {
        "odd length, resets, initial state": dict(shape=(2, 37, 24), resets=[(0, 0), (1, 11), (1, 30)]),
        "long, no reset, no initial state": dict(shape=(1, 64, 40), initial=False),
        "one token": dict(shape=(3, 1, 16), resets=[(2, 0)]),
        "strong decay, long, initial state": dict(shape=(2, 100, 24), decay="strong"),
    },
    "gated_delta_rule": {
        "odd length, initial state": dict(shape=(2, 37, 3, 8, 6, 16)),
        "two whole chunks, no initial state": dict(shape=(1, 32, 2, 16, 8, 16), initial=False),
        "one token": dict(shape=(2, 1, 3, 8, 6, 16)),
        "strong decay, chunks of 64, long, initial state": dict(shape=(1, 100, 2, 8, 8, 64), decay="strong"),
    },
    "attention": {
        "causal, GQA 4/2, odd length": dict(shape=(2, 4, 2, 37, 37, 16, 16), layout=prefill_layout),
        "sliding window 8, 4 meta tokens, MQA, wide values": dict(shape=(1, 4, 1, 41, 41, 16, 32), layout=prefill_layout,
                                                                 max_distance=8, n_meta=4),
        "decoding from a ring buffer with holes": dict(shape=(2, 2, 2, 3, 19, 16, 16), layout=_ring_decode,
                                                       max_distance=12, n_meta=4),
        "three packed documents": dict(shape=(1, 2, 1, 30, 30, 8, 8), layout=_documents),
        "sliding window 6, the last 9 of 30 keys queried": dict(shape=(2, 2, 1, 9, 30, 8, 8), layout=prefill_layout,
                                                               max_distance=6),
    },
    "moe_experts": {
        "top-2 of 4, odd token count": dict(shape=(37, 16, 24, 4, 2)),
        "top-1 of 8, an expert without tokens": dict(shape=(20, 8, 16, 8, 1), unused_expert=3),
    },
    "causal_conv1d": {
        "odd length, bias, initial state": dict(shape=(2, 37, 12, 4)),
        "documents, no bias, no initial state": dict(shape=(2, 29, 8, 4), starts=[(0, 0), (0, 9), (1, 20), (1, 27)],
                                                     bias=False, initial=False),
        "documents after an initial state": dict(shape=(2, 13, 8, 4), starts=[(0, 2), (1, 11)]),
        "one token, initial state": dict(shape=(3, 1, 8, 4)),
    },
    "rms_norm": {
        "odd token count": dict(shape=(2, 37, 24, 24)),
        "4 groups (Mamba-2's grouped norm)": dict(shape=(3, 5, 32, 8)),
        "one token": dict(shape=(1, 1, 16, 16)),
    },
}


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
