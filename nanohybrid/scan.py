"""Mamba-1 selective scan (S6): the sequential reference.

Reference: Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", §3.2 and
Algorithm 2. The continuous system h'(t) = A h(t) + B x(t), y(t) = C h(t) is discretised with step Δ:
zero-order hold for A and Euler for B, as in the official kernels (ARCHITECTURES.md §4.1):

    h_t[d, n] = exp(Δ_t[d] · A[d, n]) · h_{t-1}[d, n] + Δ_t[d] · B_t[n] · x_t[d]
    y_t[d]    = Σ_n C_t[n] · h_t[d, n] + D[d] · x_t[d],       then y_t ⊙ SiLU(z_t) if a gate z is given

Δ, B and C depend on the input ("selective"); A and D are parameters. The loop discretises inside
each step, so no (b, l, d, n) tensor is ever built: memory stays at one state.

Shape glossary
  b  batch      l  sequence length      d  channels (d_inner)      n  state size (d_state)
  x, dt, z (b, l, d)    A (d, n)    B, C (b, l, n)    D, dt_bias (d)    state (b, d, n), fp32
"""

import torch
import torch.nn.functional as F


def selective_scan_step(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the recurrence. state (b, d, n); x, dt, z (b, d); B, C (b, n) -> y (b, d), new state."""
    x, dt = x.float(), dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    decay = torch.exp(dt[:, :, None] * A.float())  # Ā = exp(ΔA), (b, d, n)
    state = decay * state + (dt * x)[:, :, None] * B.float()[:, None, :]  # + B̄x with B̄ = ΔB
    y = torch.einsum("bdn,bn->bd", state, C.float())
    if D is not None:
        y = y + D.float() * x
    if z is not None:
        y = y * F.silu(z.float())
    return y, state


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
    batch, length, channels = x.shape
    state = x.new_zeros(batch, channels, A.shape[-1], dtype=torch.float32) if initial_state is None else initial_state.float()
    outputs = []
    for t in range(length):
        y, state = selective_scan_step(
            state, x[:, t], dt[:, t], A, B[:, t], C[:, t], D, None if z is None else z[:, t], dt_bias, dt_softplus
        )
        outputs.append(y)
    return torch.stack(outputs, dim=1).to(x.dtype), state
