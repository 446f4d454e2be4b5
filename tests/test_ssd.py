"""Mamba-2 SSD: the recurrence, the quadratic form, the chunked algorithm and its CPU fast path give the
same outputs, final states and gradients, from non-zero initial states, at lengths that are not multiples
of the chunk; the CPU path's decay chain (DecayMaskedScores) against finite differences and overflow."""

import pytest
import torch
import torch.nn.functional as F

import kernels.ssd.cpu as cpu
from kernels.ssd.cpu import DecayMaskedScores
from nanohybrid.ssd import segment_sum, ssd_chunked, ssd_quadratic, ssd_recurrent, ssd_step
from nanohybrid.tools.testing import SAME_MATH, assert_close


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


def test_recurrence_matches_the_defining_equations_in_float64():
    inputs = random_inputs(length=6, groups=4)  # one group per head: B and C index heads directly
    exact = {k: v.double() for k, v in inputs.items()}
    state, outputs = exact["initial_state"], []
    for t in range(6):
        decay = torch.exp(exact["dt"][:, t] * exact["A"])[:, :, None, None]  # α_t
        update = torch.einsum("bh,bhp,bhn->bhpn", exact["dt"][:, t], exact["x"][:, t], exact["B"][:, t])
        state = decay * state + update  # S_t = α_t S_{t-1} + Δ_t x_t ⊗ B_t
        outputs.append(torch.einsum("bhpn,bhn->bhp", state, exact["C"][:, t]))  # y_t = S_t C_t
    y, final = ssd_recurrent(**inputs)
    assert_close(y, torch.stack(outputs, dim=1), SAME_MATH, "y")
    assert_close(final, state, SAME_MATH, "state")


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
    cum = torch.randn(2, 2, 2, 3, 5, generator=generator, dtype=torch.float64).cumsum(-1).requires_grad_()  # k = 3
    assert torch.autograd.gradcheck(DecayMaskedScores.apply, (scores, cum))


def test_decay_masked_scores_stay_finite_where_the_upper_triangle_overflows():
    """log α = -30 per step: exp(cum_t - cum_s) above the diagonal reaches exp(210), past fp32's range."""
    scores = torch.randn(1, 1, 1, 8, 8, requires_grad=True)
    cum = torch.arange(8.0).mul(-30.0).expand(1, 1, 1, 2, 8).clone().requires_grad_()
    masked = DecayMaskedScores.apply(scores, cum)
    causal = torch.ones(8, 8, dtype=torch.bool).tril()
    expected = scores[:, :, :, None] * torch.exp(torch.where(causal, cum[..., :, None] - cum[..., None, :], float("-inf")))
    assert_close(masked, expected, SAME_MATH, "M")
    upstream = torch.randn_like(masked)
    ours = torch.autograd.grad((masked * upstream).sum(), (scores, cum))
    theirs = torch.autograd.grad((expected * upstream).sum(), (scores, cum))
    for name, grad, reference in zip(("scores", "cum"), ours, theirs):
        assert torch.isfinite(grad).all(), name
        assert_close(grad, reference, SAME_MATH, name)
