"""Assignment: the Mamba-1 selective scan (S6).                              Prerequisite: lesson 01.

Copy this file, fill in `selective_scan`, and grade it:

    cp lessons/assignments/selective_scan.py my_selective_scan.py
    python -m lessons.assignments.grade selective_scan my_selective_scan.py:selective_scan

The task. Mamba (Gu & Dao 2023, arXiv 2312.00752, §3.2 and Algorithm 2) runs a linear state space
model whose step Δ and matrices B and C depend on the input. The continuous system h' = A h + B x,
y = C h is discretised with step Δ: zero-order hold for A, Euler for B, as the official kernels do:

    Δ_t        = softplus(dt_t + dt_bias)   (bias only when given; softplus only when dt_softplus)
    h_t[d, n]  = exp(Δ_t[d] · A[d, n]) · h_{t-1}[d, n] + Δ_t[d] · B_t[n] · x_t[d]
    y_t[d]     = Σ_n C_t[n] · h_t[d, n] + D[d] · x_t[d]           (the D term only when D is given)
    y_t        = y_t ⊙ SiLU(z_t)                                   (only when z is given)

with h_0 = initial_state (zeros when None). Return every y_t and the final state h_l.

Shapes
  b batch   l length   d channels (d_inner)   n state size (d_state)
  x, dt, z (b, l, d)    A (d, n)    B, C (b, l, n)    D, dt_bias (d)    initial_state (b, d, n) float32
  returns y (b, l, d) in x's dtype and the final state (b, d, n) in float32

What is graded: nanohybrid/tools/parity.py compares your y, your final state and the gradients of every
floating-point input (x, dt, A, B, C, and D, z, dt_bias, initial_state when given) with the reference
in float64 (relative error at most 1e-4, on the CPU in float32), on three cases: an odd length (37)
with D, z, dt_bias, dt_softplus=True and an initial state; a bare call (no optional input, state size
16); a single token with every option. While your code runs, every fresh torch.empty is NaN.

Write it in PyTorch (autograd gives you the backward) or as a Triton kernel with your own backward
(lesson 08; without a GPU the grader runs Triton's interpreter, TRITON_INTERPRET=1). Keep the name
and the parameters: the grader, like the model, checks them against the reference's.

Hints, from the first line to the pitfalls
  1. One loop over t: a state (b, d, n) in float32; after updating it, y_t = einsum("bdn,bn->bd",
     state, C_t); append, and torch.stack(outputs, dim=1) at the end. Work in float32 throughout.
  2. Prepare Δ once, before the loop, in this order: add dt_bias (if given), then softplus (if
     dt_softplus). With dt_softplus=False, dt is already positive: use it as it is.
  3. Discretise inside the loop, one step at a time: the decay exp(Δ_t[:, :, None] * A) is (b, d, n);
     the input term is (Δ_t x_t)[:, :, None] * B_t[:, None, :]. Precompute Δ ⊙ x for all t outside it.
  4. B is discretised by Euler: Δ multiplies B x. The zero-order-hold form (exp(ΔA) - 1)/A · B x is
     the textbook one, but not what Mamba's kernels (and this reference) compute.
  5. The output reads the state after its update at t (h_t, not h_{t-1}).
  6. D and z act after the scan, on all t at once: first y + D ⊙ x, then the gate ⊙ SiLU(z). Each is
     skipped when it is None; so is dt_bias.
  7. initial_state=None means zeros: torch.zeros, not torch.empty (NaN here). Return y in x's dtype.
"""

import torch


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
    raise NotImplementedError("selective_scan: not written yet (the task and hints are at the top of this file)")
