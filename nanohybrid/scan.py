"""Mamba-1 selective scan (S6): the readable reference, one time step at a time.

Reference: Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces"
(arXiv 2312.00752), §3.2 and Algorithm 2. The continuous system h'(t) = A h(t) + B x(t), y(t) = C h(t)
is discretised with step Δ: zero-order hold for A (Eq. 4) and Euler for B, B̄ = Δ B, as the official
kernels do (docs/conventions.md, "S6 discretisation"):

    Ā_t = exp(Δ_t A)                                   (b, d, n)
    h_t = Ā_t ⊙ h_{t-1} + Δ_t B_t x_t                  (b, d, n)
    y_t = Σ_n C_t[n] · h_t[:, :, n] + D ⊙ x_t          (b, d), then y_t ⊙ SiLU(z_t) if a gate z is given

Δ, B and C depend on the input ("selective", Algorithm 2); A and D are parameters. Autograd
differentiates the loop. The fast CPU form of the same op, with its backward written out, is in
kernels/selective_scan/cpu.py; the Triton kernel beside it.

Shape glossary
  b  batch      l  sequence length      d  channels (d_inner)      n  state size (d_state)
  x, dt, z (b, l, d)    A (d, n)    B, C (b, l, n)    D, dt_bias (d)    state h (b, d, n), fp32 (fp64 for fp64)
"""

import torch
import torch.nn.functional as F

from . import ops
from .ssd import segment_sum


def step_sizes(dt, dt_bias=None, dt_softplus: bool = False) -> torch.Tensor:
    """Δ = softplus(dt + dt_bias) in fp32, or fp64 for fp64 dt (the bias and the softplus each optional).
    (b, l, d) -> (b, l, d)."""
    dtype = ops.compute_dtype(dt)
    dt = dt.to(dtype) if dt_bias is None else dt.to(dtype) + dt_bias.to(dtype)
    return F.softplus(dt) if dt_softplus else dt


def initial_or_zeros(x, A, initial_state=None) -> torch.Tensor:
    """The state h_0 in x's compute dtype (fp32, fp64 for fp64): the given one, or zeros (b, d, n)."""
    if initial_state is None:
        return x.new_zeros(x.shape[0], x.shape[2], A.shape[-1], dtype=ops.compute_dtype(x))
    return initial_state.to(ops.compute_dtype(x))


def skip_and_gate(y, x, D=None, z=None) -> torch.Tensor:
    """y + D ⊙ x, then ⊙ SiLU(z), returned in x's dtype. y (b, l, d) in x's compute dtype."""
    if D is not None:
        y = y + D.to(y.dtype) * x.to(y.dtype)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(x.dtype)


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
    dt, h = step_sizes(dt, dt_bias, dt_softplus), initial_or_zeros(x, A, initial_state)
    dt_x, A, B, C = dt * x.to(dt.dtype), A.to(dt.dtype), B.to(dt.dtype), C.to(dt.dtype)  # Δ ⊙ x (b, l, d)
    outputs = []
    for t in range(x.shape[1]):
        decay = torch.exp(dt[:, t, :, None] * A)  # Ā_t = exp(Δ_t A), (b, d, n)
        h = decay * h + dt_x[:, t, :, None] * B[:, t, None, :]  # h_t = Ā_t h_{t-1} + Δ_t B_t x_t
        outputs.append((h * C[:, t, None, :]).sum(-1))  # C_t · h_t, (b, d)
    return skip_and_gate(torch.stack(outputs, dim=1), x, D, z), h


def selective_scan_step(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One decode step: the scan of a single token. state (b, d, n); x, dt, z (b, d); B, C (b, n) -> y (b, d), new state."""
    y, state = selective_scan(
        x[:, None], dt[:, None], A, B[:, None], C[:, None], D, None if z is None else z[:, None],
        dt_bias, dt_softplus, state,
    )
    return y[:, 0], state


def implicit_attention(delta, A, B, C) -> torch.Tensor:
    """The S6 scan of one sequence written as a matrix (Ali et al. 2024, "The Hidden Attention of Mamba
    Models"; lesson 1): y_t[d] = Σ_s M[d, t, s] x_s[d] before the D skip and the gate, with

        M[d, t, s] = Σ_n C_t[n] · exp(Σ_{s<k≤t} Δ_k[d] A[d, n]) · Δ_s[d] B_s[n]   (s ≤ t; 0 above the diagonal)

    delta (l, d), after the bias and softplus; A (d, n), negative; B, C (l, n) -> M (d, l, l).
    The decay is a (d, n, l, l) tensor: for looking at short sequences, not for running the model.
    """
    log_decay = (delta[:, :, None] * A).permute(1, 2, 0)  # Δ_k[d] A[d, n], (d, n, l)
    decay = torch.exp(segment_sum(log_decay))  # Π_{s<k≤t} Ā_k, (d, n, l, l)
    return torch.einsum("nt,dnts,ns->dts", C.T, decay, B.T) * delta.T[:, None, :]
