"""A student's selective scan that discretises B by zero-order hold, (exp(ΔA) - 1)/A · B x, where Mamba's
kernels use Euler, Δ B x: broken on purpose (the textbook form, not the one graded)."""

import torch
import torch.nn.functional as F


def scan(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, initial_state=None):
    x, dt, A, B, C = x.float(), dt.float(), A.float(), B.float(), C.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    state = torch.zeros(x.shape[0], x.shape[2], A.shape[1]) if initial_state is None else initial_state.float()
    outputs = []
    for dt_t, x_t, B_t, C_t in zip(dt.unbind(1), x.unbind(1), B.unbind(1), C.unbind(1)):
        decay = torch.exp(dt_t[:, :, None] * A)
        state = decay * state + (decay - 1) / A * B_t[:, None, :] * x_t[:, :, None]
        outputs.append(torch.einsum("bdn,bn->bd", state, C_t))
    y = torch.stack(outputs, dim=1)
    if D is not None:
        y = y + D.float() * x
    if z is not None:
        y = y * F.silu(z.float())
    return y, state
