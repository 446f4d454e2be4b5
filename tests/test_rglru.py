"""RG-LRU: the gates and the recurrence of Griffin §2.4 (docs/conventions.md, "RG-LRU parametrisation")
written out in float64, resets, the Λ initialisation, the bounded sqrt gradient, and continuation from a
state."""

import pytest
import torch
import torch.nn.functional as F

from nanohybrid import ops
from nanohybrid.rglru import GATE_CONSTANT, RGLRU, SqrtBoundedGradient, rglru_scan, rglru_step
from nanohybrid.tools.testing import FLOAT64, SAME_MATH, assert_close


def rglru_by_the_equations(module: RGLRU, x, reset, h0):
    """h_t = a_t h_{t-1} + sqrt(1 - a_t²) (i_t x_t), a_t = exp(-8 r_t softplus(p)); a_t = 0, sqrt → 1 at resets."""
    x, h = x.double(), h0.double()
    heads, width = module.input_gate.weight.shape[:2]
    def gate(linear):
        blocks = x.unflatten(-1, (heads, width))
        return torch.sigmoid(torch.einsum("blhi,hio->blho", blocks, linear.weight.double()) + linear.bias.double()).flatten(-2)
    r, i = gate(module.recurrence_gate), gate(module.input_gate)
    a = torch.exp(-GATE_CONSTANT * r * F.softplus(module.recurrent_param.double()))
    outputs = []
    for t in range(x.shape[1]):
        at_reset = reset[:, t, None]
        a_t = torch.where(at_reset, 0.0, a[:, t])
        normaliser = torch.where(at_reset, 1.0, torch.sqrt(1 - a[:, t] ** 2))
        h = a_t * h + normaliser * i[:, t] * x[:, t]
        outputs.append(h)
    return torch.stack(outputs, dim=1), h


def make_module(width=8, heads=2, seed=0):
    torch.manual_seed(seed)
    module = RGLRU(width, heads)
    module.init_weights()
    with torch.no_grad():
        module.input_gate.bias.normal_()
        module.recurrence_gate.bias.normal_()
    return module


def test_module_matches_the_equations_with_resets_and_an_initial_state():
    module = make_module()
    x, h0 = torch.randn(2, 12, 8), torch.randn(2, 8)
    reset = torch.zeros(2, 12, dtype=torch.bool)
    reset[0, 5] = reset[1, 0] = True
    y, final = module(x, reset, h0)
    expected_y, expected_final = rglru_by_the_equations(module, x, reset, h0)
    assert_close(y, expected_y, SAME_MATH, "h")
    assert_close(final, expected_final, SAME_MATH, "final state")


@pytest.mark.parametrize("rung", ["reference", "cpu"])
def test_module_computes_in_float64_when_given_float64(rung):
    """The parity suite's expected values are the reference run in float64: given float64 inputs the gates and
    the scan compute in float64 (ops.compute_dtype), within FLOAT64 of the equations, where one fp32 step would
    miss by ~1e-7."""
    module = make_module().double()
    x, h0 = torch.randn(2, 12, 8, dtype=torch.float64), torch.randn(2, 8, dtype=torch.float64)
    reset = torch.zeros(2, 12, dtype=torch.bool)
    reset[0, 5] = True
    with ops.use(rglru_scan=rung):
        y, final = module(x, reset, h0)
    expected_y, expected_final = rglru_by_the_equations(module, x, reset, h0)
    assert final.dtype == torch.float64
    assert_close(y, expected_y, FLOAT64, "h")
    assert_close(final, expected_final, FLOAT64, "final state")


def test_reset_forgets_everything_before_it():
    module = make_module()
    x = torch.randn(1, 10, 8)
    reset = torch.zeros(1, 10, dtype=torch.bool)
    reset[0, 4] = True
    y, _ = module(x, reset, torch.randn(1, 8))
    other_past = torch.cat([torch.randn(1, 4, 8), x[:, 4:]], dim=1)
    y_other, _ = module(other_past, reset, torch.randn(1, 8))
    assert torch.equal(y[:, 4:], y_other[:, 4:])
    assert not torch.allclose(y[:, :4], y_other[:, :4])


def test_scan_continues_from_its_state_and_steps_one_token():
    x, log_a = torch.randn(2, 9, 4), -torch.rand(2, 9, 4)
    reset = torch.zeros(2, 9, dtype=torch.bool)
    h0 = torch.randn(2, 4)
    full, full_state = rglru_scan(x, log_a, reset, h0)
    first, state = rglru_scan(x[:, :3], log_a[:, :3], reset[:, :3], h0)
    outputs = [first]
    for t in range(3, 9):
        h, state = rglru_step(state, x[:, t], log_a[:, t], reset[:, t])
        outputs.append(h[:, None])
    assert_close(torch.cat(outputs, dim=1), full, SAME_MATH, "step by step")
    assert_close(state, full_state, SAME_MATH, "final state")


def test_lambda_init_puts_a_in_the_ring():
    module = make_module(width=4096, heads=8)
    a = torch.exp(-F.softplus(module.recurrent_param))  # a = σ(Λ) with Λ = -p
    assert 0.9 - 1e-6 <= a.min() and a.max() <= 0.999 + 1e-6
    a_squared = a.double() ** 2  # uniform on [0.81, 0.998]: mean 0.904, allow 3 standard errors
    assert abs(a_squared.mean().item() - (0.81 + 0.999**2) / 2) < 3 * 0.0545 / 4096**0.5


def test_sqrt_gradient_is_bounded_at_zero():
    u = torch.tensor([0.0, 0.25, 1e-12], requires_grad=True)
    SqrtBoundedGradient.apply(u).sum().backward()
    assert_close(u.grad, torch.tensor([1000.0, 1.0, 1000.0]), SAME_MATH, "d sqrt(u), clipped at 1000 near 0")
