"""The diagonal linear recurrence h_t = a_t ⊙ h_{t-1} + x_t, with its backward pass written out.

It is the time loop of the RG-LRU (rglru.py: a_t the gated decay, x_t the normalised input). Every
product is elementwise, so each channel runs its own scalar recurrence.

Why write the backward by hand? Left to autograd, a loop of l steps records about 3·l small
operations, and their backward replays them one node at a time; on a CPU that bookkeeping, not the
arithmetic, is most of the cost. The backward of a linear recurrence is itself a linear recurrence,
run from the end of the sequence. With g_t = ∂L/∂h_t in total (through h_t itself and through h_{t+1}):

    g_t       = ∂L/∂h_t (direct) + a_{t+1} ⊙ g_{t+1}      the same recurrence, backwards in time
    ∂L/∂x_t   = g_t
    ∂L/∂a_t   = g_t ⊙ h_{t-1}
    ∂L/∂h_0   = a_1 ⊙ g_1

and the gradient of the final state h_l enters as the carry before step l. This is how the parallel
scan kernels of the field (mamba_ssm, fla, the Triton rglru_scan in kernels/) compute their backward too.

Shape glossary
  b  batch    l  length    ...  any channel axes (the same for a, x and h)
  a, x (b, l, ...)    initial (b, ...)    returns h (b, l, ...): every state, h_1 ... h_l
"""

import torch


class LinearRecurrence(torch.autograd.Function):
    # The loops walk over per-step views made once by unbind: indexing [:, t] inside a loop of l steps
    # builds 3·l views one Python call at a time (a quarter of the op's time at 256 steps).

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
        previous = torch.cat([initial[:, None], states[:, :-1]], dim=1)  # h_{t-1}, (b, l, ...)
        return grad_x * previous, grad_x, a[:, 0] * grad_x[:, 0]  # ∂L/∂a, ∂L/∂x, ∂L/∂h_0


def linear_recurrence(a: torch.Tensor, x: torch.Tensor, initial: torch.Tensor) -> torch.Tensor:
    """h_t = a_t ⊙ h_{t-1} + x_t for t = 1 ... l, from h_0 = initial. a, x (b, l, ...); initial (b, ...) -> h (b, l, ...)."""
    return LinearRecurrence.apply(a, x, initial)
