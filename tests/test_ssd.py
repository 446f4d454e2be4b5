"""Mamba-2 SSD: the recurrence, the quadratic form, the chunked algorithm and its CPU fast path give the
same outputs, final states and gradients, from non-zero initial states, at lengths that are not multiples
of the chunk; in float64 they compute in float64; under strong decay they keep fp32's precision in every
gradient; the CPU path's decay chain (DecayMaskedScores) against finite differences and strong decay."""

import pytest
import torch
import torch.nn.functional as F

import kernels.ssd.cpu as cpu
from kernels.ssd.cpu import DecayMaskedScores
from nanohybrid.ssd import segment_sum, ssd_chunked, ssd_quadratic, ssd_recurrent, ssd_step
from nanohybrid.tools import parity
from nanohybrid.tools.testing import FLOAT64, SAME_MATH, assert_close


def random_inputs(batch=2, length=21, heads=4, head_dim=3, groups=2, state=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    def randn(*shape):
        return torch.randn(*shape, generator=generator)
    return dict(
        x=randn(batch, length, heads, head_dim),
        dt=F.softplus(randn(batch, length, heads) - 1),
        A=-torch.exp(randn(heads)),
        B=randn(batch, length, groups, state),
        C=randn(batch, length, groups, state),
        initial_state=randn(batch, heads, head_dim, state),
    )


FORMS = {
    "quadratic": ssd_quadratic,
    "chunked by 4": lambda **kw: ssd_chunked(**kw, chunk_size=4),
    "chunked by 8": lambda **kw: ssd_chunked(**kw, chunk_size=8),
    "one chunk": lambda **kw: ssd_chunked(**kw, chunk_size=64),
    "cpu, chunked by 4": lambda **kw: cpu.ssd_chunked(**kw, chunk_size=4),
    "cpu, one chunk": lambda **kw: cpu.ssd_chunked(**kw, chunk_size=64),
}


@pytest.mark.parametrize("form", FORMS)
def test_form_matches_recurrence_outputs_state_and_every_gradient(form):
    inputs = {name: t.requires_grad_() for name, t in random_inputs().items()}
    y, final = FORMS[form](**inputs)
    expected_y, expected_final = ssd_recurrent(**inputs)
    assert_close(y, expected_y, SAME_MATH, "y")
    assert_close(final, expected_final, SAME_MATH, "final state")
    upstream = torch.randn_like(y), torch.randn_like(final)
    def loss(y, final):
        return (y * upstream[0]).sum() + (final * upstream[1]).sum()
    ours = torch.autograd.grad(loss(y, final), list(inputs.values()))
    theirs = torch.autograd.grad(loss(expected_y, expected_final), list(inputs.values()))
    for name, grad, expected in zip(inputs, ours, theirs):
        assert_close(grad, expected, SAME_MATH, f"d{name}")


FLOAT64_FORMS = {"recurrent": ssd_recurrent, "quadratic": ssd_quadratic, "chunked by 4": FORMS["chunked by 4"],
                 "cpu, chunked by 4": FORMS["cpu, chunked by 4"]}


def by_the_equations_in_float64(x, dt, A, B, C, initial_state=None, chunk_size=None):
    """S_t = α_t S_{t-1} + Δ_t x_t ⊗ B_t, y_t = S_t C_t with α_t = exp(Δ_t A), written out here in float64."""
    x, dt, A = x.double(), dt.double(), A.double()
    B, C = (t.double().repeat_interleave(x.shape[2] // t.shape[2], dim=2) for t in (B, C))  # groups -> heads
    batch, _, heads, head_dim = x.shape
    state = x.new_zeros(batch, heads, head_dim, B.shape[-1]) if initial_state is None else initial_state.double()
    outputs = []
    for t in range(x.shape[1]):
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]  # α_t
        state = decay * state + torch.einsum("bh,bhp,bhn->bhpn", dt[:, t], x[:, t], B[:, t])
        outputs.append(torch.einsum("bhpn,bhn->bhp", state, C[:, t]))
    return torch.stack(outputs, dim=1), state


@pytest.mark.parametrize("form", FLOAT64_FORMS)
def test_form_matches_the_defining_equations_in_float64(form):
    """Given float64 inputs every form computes in float64 (ops.compute_dtype), as the parity suite's
    expected values assume: within FLOAT64 of the equations, where one fp32 step would miss by ~1e-7."""
    exact = {k: v.double() for k, v in random_inputs(length=6).items()}
    y, final = FLOAT64_FORMS[form](**exact)
    expected_y, expected_final = by_the_equations_in_float64(**exact)
    assert final.dtype == torch.float64
    assert_close(y, expected_y, FLOAT64, "y")
    assert_close(final, expected_final, FLOAT64, "state")


STRONG_DECAY = [case for case in parity.CASES["ssd"] if case.startswith("strong decay")]
CHUNKED_FORMS = {"reference": ssd_chunked, "cpu": cpu.ssd_chunked,
                 "quadratic": lambda chunk_size, **inputs: ssd_quadratic(**inputs)}


@pytest.mark.parametrize("case", STRONG_DECAY)
@pytest.mark.parametrize("form", CHUNKED_FORMS)
def test_form_in_fp32_keeps_every_gradient_under_strong_decay(form, case):
    """The parity suite's strong-decay cases (every head forgets within a few steps, Δ·|A| ≈ 4 to 120; chunks
    of 64 and of 256 on lengths of neither; nanohybrid/tools/parity.py) in fp32, against the equations in
    float64: within SAME_MATH, the bound of fp32 rounding. The cumulative log decay inside a chunk reaches
    10³-10⁴; decays taken as exp(cum_t - cum_s), or gradients as differences of sums over the chunk,
    would miss dA by 1e-4 and more."""
    inputs = parity.case_inputs("ssd", parity.CASES["ssd"][case], torch.Generator().manual_seed(0))
    leaves = {name: value.requires_grad_() for name, value in inputs.items() if isinstance(value, torch.Tensor)}
    y, final = CHUNKED_FORMS[form](**inputs)
    expected_y, expected_final = by_the_equations_in_float64(**inputs)
    upstream = torch.randn_like(expected_y), torch.randn_like(expected_final)
    def loss(y, final):
        return (y.double() * upstream[0]).sum() + (final.double() * upstream[1]).sum()
    ours = torch.autograd.grad(loss(y, final), list(leaves.values()))
    theirs = torch.autograd.grad(loss(expected_y, expected_final), list(leaves.values()))
    assert_close(y, expected_y, SAME_MATH, "y")
    assert_close(final, expected_final, SAME_MATH, "final state")
    for name, grad, expected in zip(leaves, ours, theirs):
        assert_close(grad, expected, SAME_MATH, f"d{name}")


def test_groups_serve_consecutive_heads():
    inputs = random_inputs(heads=4, groups=2)
    y, _ = ssd_recurrent(**inputs)
    expanded = {**inputs, "B": inputs["B"].repeat_interleave(2, dim=2), "C": inputs["C"].repeat_interleave(2, dim=2)}
    y_per_head, _ = ssd_recurrent(**expanded)
    assert_close(y, y_per_head, SAME_MATH, "groups")


def test_step_is_one_token_of_the_recurrence():
    inputs = random_inputs(length=1)
    y, state = ssd_recurrent(**inputs)
    step_inputs = {k: v[:, 0] for k, v in inputs.items() if k in ("x", "dt", "B", "C")}
    y_step, state_step = ssd_step(inputs["initial_state"], A=inputs["A"], **step_inputs)
    assert_close(y_step, y[:, 0], SAME_MATH, "y")
    assert_close(state_step, state, SAME_MATH, "state")


def test_chunked_continues_from_its_final_state():
    inputs = random_inputs(length=19)
    full, full_state = ssd_chunked(**inputs, chunk_size=4)
    per_step = {k: v for k, v in inputs.items() if k not in ("A", "initial_state")}
    y1, state = ssd_chunked(**{k: v[:, :7] for k, v in per_step.items()}, A=inputs["A"], chunk_size=4,
                            initial_state=inputs["initial_state"])
    y2, state = ssd_chunked(**{k: v[:, 7:] for k, v in per_step.items()}, A=inputs["A"], chunk_size=4, initial_state=state)
    assert_close(torch.cat([y1, y2], dim=1), full, SAME_MATH, "two calls")
    assert_close(state, full_state, SAME_MATH, "final state")


def test_segment_sum():
    a = torch.tensor([1.0, 2.0, 3.0])
    inf = float("-inf")
    expected = torch.tensor([[0.0, inf, inf], [2.0, 0.0, inf], [5.0, 3.0, 0.0]])
    assert torch.equal(segment_sum(a), expected)


def test_decay_masked_scores_backward_is_the_derivative_in_float64():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 2, 2, 5, 5, generator=generator, dtype=torch.float64, requires_grad=True)  # (b, c, g, Q, Q)
    log_decay = -torch.rand(2, 2, 2, 3, 5, generator=generator, dtype=torch.float64).requires_grad_()  # k = 3
    assert torch.autograd.gradcheck(DecayMaskedScores.apply, (scores, log_decay))


def test_decay_masked_scores_stay_exact_under_strong_decay():
    """log α ≈ -30 per step: L[t, s] is below 1e-13 one step off the diagonal, and a difference of fp32
    cumulative sums, exp(cum_t - cum_s), would overflow above it (exp(210)). The gradient of each log α_k
    is then ~1e-13 against O(1) terms on the diagonal, which any cancellation would swamp. Expected: L as
    the products α_{s+1} ⋯ α_t in float64, whose autograd subtracts nothing."""
    scores = torch.randn(1, 1, 1, 8, 8, requires_grad=True)
    log_decay = (-30.0 + 0.1 * torch.randn(1, 1, 1, 2, 8)).requires_grad_()
    masked = DecayMaskedScores.apply(scores, log_decay)
    alpha = torch.exp(log_decay.double())
    zero = alpha.new_zeros(alpha.shape[:-1])
    rows = [[alpha[..., s + 1 : t + 1].prod(-1) if s <= t else zero for s in range(8)] for t in range(8)]
    decay_matrix = torch.stack([torch.stack(row, -1) for row in rows], -2)  # L[t, s] = α_{s+1} ⋯ α_t
    expected = scores.double()[:, :, :, None] * decay_matrix
    assert_close(masked, expected, SAME_MATH, "M")
    upstream = torch.randn_like(masked)
    ours = torch.autograd.grad((masked * upstream).sum(), (scores, log_decay))
    theirs = torch.autograd.grad((expected * upstream.double()).sum(), (scores, log_decay))
    for name, grad, reference in zip(("scores", "log_decay"), ours, theirs):
        assert torch.isfinite(grad).all(), name
        assert_close(grad, reference, SAME_MATH, name)
