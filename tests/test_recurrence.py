"""The RG-LRU's CPU fast path: the linear recurrence's written-out backward (kernels/rglru_scan/cpu.py)
against finite differences in fp64 and against the plain loop under autograd."""

import pytest
import torch

from kernels.rglru_scan.cpu import LinearRecurrence
from nanohybrid.tools.testing import SAME_MATH, assert_close


def unrolled(a, x, initial):
    """The same recurrence as a plain loop, differentiated by autograd."""
    states, state = [], initial
    for t in range(x.shape[1]):
        state = a[:, t] * state + x[:, t]
        states.append(state)
    return torch.stack(states, dim=1)


def inputs(*shape, dtype=torch.float64):
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(shape, generator=generator, dtype=dtype).requires_grad_()  # decays in [0, 1), as in every scan
    x = torch.randn(shape, generator=generator, dtype=dtype).requires_grad_()
    initial = torch.randn(shape[0], *shape[2:], generator=generator, dtype=dtype).requires_grad_()
    return a, x, initial


@pytest.mark.parametrize("shape", [(2, 7, 3), (2, 5, 3, 4), (1, 1, 2)], ids=["channels", "two-channel-axes", "one-step"])
def test_gradients_pass_gradcheck_in_fp64(shape):
    """Finite differences in fp64 check every gradient: ∂L/∂a, ∂L/∂x and ∂L/∂h_0."""
    assert torch.autograd.gradcheck(LinearRecurrence.apply, inputs(*shape))


def test_matches_the_unrolled_loop_under_autograd_in_fp32():
    a, x, initial = inputs(3, 64, 16, dtype=torch.float32)
    grad = torch.randn(3, 64, 16, generator=torch.Generator().manual_seed(1))
    expected = unrolled(a, x, initial)
    expected_grads = torch.autograd.grad(expected, (a, x, initial), grad)
    states = LinearRecurrence.apply(a, x, initial)
    grads = torch.autograd.grad(states, (a, x, initial), grad)
    assert_close(states, expected, SAME_MATH, name="states")
    for name, actual, wanted in zip(("a", "x", "initial"), grads, expected_grads):
        assert_close(actual, wanted, SAME_MATH, name=f"grad {name}")


def test_the_final_state_gradient_reaches_every_input():
    """A loss on h_l alone: its gradient must flow back through all l steps, to h_0."""
    a, x, initial = inputs(2, 6, 3)
    LinearRecurrence.apply(a, x, initial)[:, -1].sum().backward()
    expected_initial = a.detach().prod(dim=1)  # ∂h_l/∂h_0 = a_1 ⋯ a_l
    assert_close(initial.grad, expected_initial, SAME_MATH, name="grad initial")
    assert (x.grad[:, 0] != 0).all() and (a.grad[:, 0] != 0).all()
