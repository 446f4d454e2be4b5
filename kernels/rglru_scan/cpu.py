"""The RG-LRU recurrence, the CPU fast path: the diagonal linear recurrence h_t = a_t ⊙ h_{t-1} + x_t with
its backward pass written out.

Reference: De et al. 2024, "Griffin" (arXiv 2402.19427), §2.4; the readable form is
nanohybrid/rglru.py::rglru_scan, whose gates (a_t and the normaliser, decay_and_normaliser) this uses
as they are. Only the time loop differs: every product is elementwise, so each channel runs its own
scalar recurrence, and the loop's backward is written out instead of left to autograd.

Why by hand? Left to autograd, a loop of l steps records about 3·l small operations, and their backward
replays them one node at a time; on a CPU that bookkeeping, not the arithmetic, is most of the cost.
The backward of a linear recurrence is itself a linear recurrence, run from the end of the sequence.
With g_t = ∂L/∂h_t in total (through h_t itself and through h_{t+1}):

    g_t       = ∂L/∂h_t (direct) + a_{t+1} ⊙ g_{t+1}      the same recurrence, backwards in time
    ∂L/∂x_t   = g_t
    ∂L/∂a_t   = g_t ⊙ h_{t-1}
    ∂L/∂h_0   = a_1 ⊙ g_1

and the gradient of the final state h_l enters as the carry before step l (docs/ladder.md derives it).
The parallel scan kernels of the field (mamba_ssm, fla, kernels/rglru_scan/triton.py) compute their
backward the same way.

Shape glossary
  b  batch    l  length    R  channels (lru_width)
  a, x (b, l, R)    initial (b, R)    h (b, l, R): every state, h_1 ... h_l
"""

import torch

from nanohybrid import ops
from nanohybrid.rglru import decay_and_normaliser, initial_or_zeros


class LinearRecurrence(torch.autograd.Function):
    """h_t = a_t ⊙ h_{t-1} + x_t for t = 1 ... l, from h_0 = initial. The loops walk over per-step views
    made once by unbind (indexing [:, t] inside the loop would build 3·l views one Python call at a time)."""

    @staticmethod
    def forward(ctx, a, x, initial):
        states = torch.empty_like(x)
        state = initial
        for a_t, x_t, h_t in zip(a.unbind(1), x.unbind(1), states.unbind(1)):
            state = torch.addcmul(x_t, a_t, state, out=h_t)  # h_t = a_t ⊙ h_{t-1} + x_t
        ctx.save_for_backward(a, states, initial)
        return states

    @staticmethod
    def backward(ctx, grad_states):
        a, states, initial = ctx.saved_tensors
        grad_x = grad_states.clone()  # becomes g_t, which is also ∂L/∂x_t; g_l = ∂L/∂h_l (nothing after it)
        g, direct, decay = grad_x.unbind(1), grad_states.unbind(1), a.unbind(1)
        for t in reversed(range(grad_states.shape[1] - 1)):
            torch.addcmul(direct[t], decay[t + 1], g[t + 1], out=g[t])  # g_t = ∂L/∂h_t (direct) + a_{t+1} ⊙ g_{t+1}
        previous = torch.cat([initial[:, None], states[:, :-1]], dim=1)  # h_{t-1}, (b, l, R)
        return grad_x * previous, grad_x, a[:, 0] * grad_x[:, 0]  # ∂L/∂a, ∂L/∂x, ∂L/∂h_0


@ops.register("rglru_scan", "cpu", devices=("cpu",))
def rglru_scan(x, log_a, reset, initial_state=None):
    """ops.rglru_scan through LinearRecurrence: h (b, l, R) in x's dtype, the final state (b, R) in fp32
    (fp64 for fp64 inputs)."""
    a, normaliser = decay_and_normaliser(log_a, reset)
    h = LinearRecurrence.apply(a, normaliser * x.to(a.dtype), initial_or_zeros(x, initial_state))
    return h.to(x.dtype), h[:, -1]
