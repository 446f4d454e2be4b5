"""The gated delta rule's fast rungs (kernels/gated_delta_rule/): the CPU form's hand-written backward
against finite differences. Their parity with the reference (outputs, final states, every gradient) is
tests/test_kernels.py's, over the cases of nanohybrid/tools/parity_cases.py."""

import torch
import torch.nn.functional as F

from kernels.gated_delta_rule.cpu import gated_delta_rule


def test_the_cpu_backward_matches_finite_differences_in_fp64():
    """torch.autograd.gradcheck of the written-out backward (every input, the initial state included, under
    upstream gradients on the output and the final state), on a length of 7 against chunks of 3: two whole
    chunks and a padded one. In fp64 the finite differences agree to ~1e-8, far inside gradcheck's tolerance
    (atol 1e-5, rtol 1e-3); a wrong term gives an error of the size of the gradient itself."""
    generator = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    b, l, h, d_k, d_v = 2, 7, 2, 4, 3
    inputs = (F.normalize(randn(b, l, h, d_k), dim=-1) * d_k**-0.5, F.normalize(randn(b, l, h, d_k), dim=-1),
              randn(b, l, h, d_v), -F.softplus(randn(b, l, h)), torch.sigmoid(randn(b, l, h)), randn(b, h, d_k, d_v))
    inputs = tuple(t.requires_grad_() for t in inputs)

    def function(q, k, v, g, beta, initial_state):
        return gated_delta_rule(q, k, v, g, beta, 3, initial_state)

    assert torch.autograd.gradcheck(function, inputs)
