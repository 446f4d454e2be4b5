"""Mamba-1 selective scan: the reference loop and the CPU fast path against the unrolled closed form,
continuation from a state, one step, bf16 autocast; the CPU path's written-out backward in fp64.

The closed form (Hymba §2.1's implicit attention) writes every output as a weighted sum over past inputs,

    y_t = Σ_{s ≤ t} C_t · exp(Σ_{k=s+1..t} Δ_k A) · Δ_s B_s x_s  +  C_t · exp(Σ_{k ≤ t} Δ_k A) · h_0  + D x_t,

computed here in float64 with cumulative sums instead of a recurrence, so it shares no code path with scan.py.
"""

import pytest
import torch
import torch.nn.functional as F

import kernels.selective_scan.cpu as blocked
from nanohybrid.scan import selective_scan, selective_scan_step
from nanohybrid.tools.testing import FLOAT64, SAME_MATH, assert_close


def closed_form(x, dt, A, B, C, D, z, initial_state):
    x, dt, A, B, C, D, z, h0 = (t.double() for t in (x, dt, A, B, C, D, z, initial_state))
    log_decay = torch.cumsum(dt[..., None] * A, dim=1)  # (b, l, d, n): Σ_{k ≤ t} Δ_k A
    # decay[b, t, s, d, n] = exp(Σ_{s<k≤t} Δ_k A) for s ≤ t
    decay = torch.exp(log_decay[:, :, None] - log_decay[:, None, :])
    causal = torch.tril(torch.ones(x.shape[1], x.shape[1], dtype=torch.bool))[None, :, :, None, None]
    decay = torch.where(causal, decay, torch.zeros_like(decay))
    inputs = (dt * x)[..., None] * B[:, :, None, :]  # Δ_s x_s B_s, (b, l, d, n)
    states = torch.einsum("btsdn,bsdn->btdn", decay, inputs) + torch.exp(log_decay) * h0[:, None]
    y = torch.einsum("btdn,btn->btd", states, C) + D * x
    return y * F.silu(z), states[:, -1]


def random_inputs(batch=2, length=13, channels=6, state=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    def randn(*shape):
        return torch.randn(*shape, generator=generator)
    return dict(
        x=randn(batch, length, channels),
        dt=F.softplus(randn(batch, length, channels) - 1),
        A=-torch.exp(randn(channels, state) * 0.5),
        B=randn(batch, length, state),
        C=randn(batch, length, state),
        D=randn(channels),
        z=randn(batch, length, channels),
        initial_state=randn(batch, channels, state),
    )


FORMS = {"reference": (selective_scan, None), "cpu, one block": (blocked.selective_scan, blocked.BLOCK),
         "cpu, blocks of 4": (blocked.selective_scan, 4)}  # 13 steps: 3 blocks of 4 and one of 1 (the carry between blocks)


@pytest.mark.parametrize("form", FORMS)
def test_scan_matches_closed_form_outputs_state_and_every_gradient(form, monkeypatch):
    function, block = FORMS[form]
    if block is not None:
        monkeypatch.setattr(blocked, "BLOCK", block)
    inputs = {name: t.requires_grad_() for name, t in random_inputs().items()}
    y, final = function(**inputs)
    expected_y, expected_final = closed_form(**inputs)
    assert_close(y, expected_y, SAME_MATH, "y")
    assert_close(final, expected_final, SAME_MATH, "final state")
    upstream = torch.randn_like(y), torch.randn_like(final)
    ours = torch.autograd.grad((y * upstream[0]).sum() + (final * upstream[1]).sum(), list(inputs.values()))
    theirs = torch.autograd.grad(
        (expected_y * upstream[0].double()).sum() + (expected_final * upstream[1].double()).sum(), list(inputs.values())
    )
    for name, grad, expected in zip(inputs, ours, theirs):
        assert_close(grad, expected, SAME_MATH, f"d{name}")


@pytest.mark.parametrize("form", ["reference", "cpu, blocks of 4"])
def test_scan_computes_in_float64_when_given_float64(form, monkeypatch):
    """The parity suite's expected values are the reference run in float64: given float64 inputs the scan
    computes in float64 (ops.compute_dtype), within FLOAT64 of the closed form, where one fp32 step would
    miss by ~1e-7."""
    function, block = FORMS[form]
    monkeypatch.setattr(blocked, "BLOCK", block or blocked.BLOCK)
    inputs = {name: t.double() for name, t in random_inputs().items()}
    y, final = function(**inputs)
    expected_y, expected_final = closed_form(**inputs)
    assert final.dtype == torch.float64
    assert_close(y, expected_y, FLOAT64, "y")
    assert_close(final, expected_final, FLOAT64, "final state")


def test_dt_bias_and_softplus_are_applied_inside():
    inputs = random_inputs()
    raw_dt, bias = torch.randn_like(inputs["dt"]), torch.randn(inputs["x"].shape[-1])
    inside, _ = selective_scan(**{**inputs, "dt": raw_dt}, dt_bias=bias, dt_softplus=True)
    outside, _ = selective_scan(**{**inputs, "dt": F.softplus(raw_dt + bias)})
    assert_close(inside, outside, SAME_MATH, "dt bias + softplus")


@pytest.mark.parametrize("split", [1, 5, 12])
def test_continuing_from_the_final_state_equals_one_pass(split):
    inputs = random_inputs()
    full, full_state = selective_scan(**inputs)
    per_step = {k: v for k, v in inputs.items() if k not in ("A", "D", "initial_state")}
    first = {k: v[:, :split] for k, v in per_step.items()}
    second = {k: v[:, split:] for k, v in per_step.items()}
    shared = dict(A=inputs["A"], D=inputs["D"])
    y1, state = selective_scan(**first, **shared, initial_state=inputs["initial_state"])
    y2, state = selective_scan(**second, **shared, initial_state=state)
    assert_close(torch.cat([y1, y2], dim=1), full, SAME_MATH, "two calls")
    assert_close(state, full_state, SAME_MATH, "final state")


def test_single_step_advances_the_state_by_one_token():
    inputs = random_inputs(length=1)
    y, state = selective_scan(**inputs)
    step_inputs = {k: v[:, 0] for k, v in inputs.items() if k in ("x", "dt", "B", "C", "z")}
    y_step, state_step = selective_scan_step(inputs["initial_state"], A=inputs["A"], D=inputs["D"], **step_inputs)
    assert_close(y_step, y[:, 0], SAME_MATH, "y")
    assert_close(state_step, state, SAME_MATH, "state")


def test_written_out_backward_passes_gradcheck_in_fp64(monkeypatch):
    """Finite differences in fp64 check the CPU path's SelectiveScan backward for every input, across blocks of 3 steps."""
    monkeypatch.setattr(blocked, "BLOCK", 3)
    inputs = random_inputs(batch=2, length=7, channels=3, state=2)
    dt, x = inputs["dt"].double(), inputs["x"].double()
    leaves = [t.double().requires_grad_() for t in (dt, dt * x, inputs["A"], inputs["B"], inputs["C"],
                                                    inputs["initial_state"])]
    assert torch.autograd.gradcheck(blocked.SelectiveScan.apply, leaves)


@pytest.mark.parametrize("function", [selective_scan, blocked.selective_scan], ids=["reference", "cpu"])
def test_bf16_autocast_leaves_the_scan_in_fp32(function):
    """Under autocast (bf16 training on a CPU) the scan still computes in fp32, forward and backward: the CPU
    path's readout and its backward's sums are products that autocast would otherwise run in bf16."""
    inputs = {name: t.requires_grad_() for name, t in random_inputs(length=20).items()}
    results = []
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y, final = function(**inputs)
            grads = torch.autograd.grad(y.sum() + final.sum(), list(inputs.values()))
        results.append((y, final, *grads))
    for name, actual, expected in zip(["y", "final", *inputs], results[1], results[0]):
        assert actual.dtype == torch.float32, f"{name}: {actual.dtype}"
        assert_close(actual, expected, SAME_MATH, name)
