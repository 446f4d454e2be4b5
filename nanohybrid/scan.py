"""Mamba-1 selective scan (S6): the sequential reference.

Reference: Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", §3.2 and
Algorithm 2. The continuous system h'(t) = A h(t) + B x(t), y(t) = C h(t) is discretised with step Δ:
zero-order hold for A and Euler for B, as in the official kernels (ARCHITECTURES.md §4.1):

    h_t[d, n] = exp(Δ_t[d] · A[d, n]) · h_{t-1}[d, n] + Δ_t[d] · B_t[n] · x_t[d]
    y_t[d]    = Σ_n C_t[n] · h_t[d, n] + D[d] · x_t[d],       then y_t ⊙ SiLU(z_t) if a gate z is given

Δ, B and C depend on the input ("selective"); A and D are parameters. The loop discretises inside
each step (Ā_t = exp(Δ_t A) is formed one token at a time), so no (b, l, d, n) tensor of inputs is
ever built; everything that does not depend on the state (softplus, D skip, gate) is done outside it.

Shape glossary
  b  batch      l  sequence length      d  channels (d_inner)      n  state size (d_state)
  x, dt, z (b, l, d)    A (d, n)    B, C (b, l, n)    D, dt_bias (d)    state (b, d, n), fp32
"""

import torch
import torch.nn.functional as F

from . import ops


@ops.register("selective_scan", "reference")
def selective_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole sequence, one step at a time. Returns y (b, l, d) in x's dtype and the final state (b, d, n) in fp32."""
    batch, _, channels = x.shape
    out_dtype = x.dtype
    x, dt, A, B, C = x.float(), dt.float(), A.float(), B.float(), C.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    state = x.new_zeros(batch, channels, A.shape[-1]) if initial_state is None else initial_state.float()
    outputs = []
    # unbind splits the time axis once (indexing [:, t] in the loop would cost a full-size gradient per step)
    for dt_t, dt_x_t, B_t, C_t in zip(dt.unbind(1), (dt * x).unbind(1), B.unbind(1), C.unbind(1)):
        decay = torch.exp(dt_t[:, :, None] * A)  # Ā_t = exp(Δ_t A), (b, d, n)
        state = decay * state + dt_x_t[:, :, None] * B_t[:, None, :]  # h_t = Ā_t h_{t-1} + Δ_t B_t x_t
        outputs.append(torch.einsum("bdn,bn->bd", state, C_t))  # C_t · h_t
    y = torch.stack(outputs, dim=1)
    if D is not None:
        y = y + D.float() * x
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(out_dtype), state


def selective_scan_step(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One decode step: the scan of a single token. state (b, d, n); x, dt, z (b, d); B, C (b, n) -> y (b, d), new state."""
    y, state = selective_scan(
        x[:, None], dt[:, None], A, B[:, None], C[:, None], D, None if z is None else z[:, None],
        dt_bias, dt_softplus, initial_state=state,
    )
    return y[:, 0], state
