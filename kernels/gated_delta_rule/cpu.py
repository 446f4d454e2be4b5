"""The gated delta rule, the CPU fast path: nanohybrid/delta_rule.py's chunked UT-transform form with its
backward pass written out.

References: Yang, Kautz & Hatamizadeh 2024, "Gated Delta Networks" (arXiv 2412.06464), §3; the chunked
form of Yang et al. 2024 (arXiv 2406.06484), §3. Per (batch, head) and chunk of C positions, from the state
S at the chunk's start (the reference's docstring derives it; Γ[t, s] = γ_t/γ_s = exp(Σ_{s<j≤t} g_j) for
s ≤ t, γ_t = exp(Σ_{j≤t} g_j), e_s = γ_C/γ_s, the last row of Γ):

    A = strictly_lower(β ⊙ (K Kᵀ ∘ Γ))     X = [X_v | W] = (I + A)⁻¹ R,   R = [β ⊙ V | β γ ⊙ K]
    U = X_v − W S     P = Q Kᵀ ∘ Γ     O = γ ⊙ (Q S) + P U     S' = γ_C S + (e ⊙ K)ᵀ U

What differs from the reference: T = (I + A)⁻¹ is formed once (one triangular solve) and kept for the
backward, the two right-hand sides of the UT transform go through it as one product, Γ comes from
kernels/ssd/cpu.py's decay_matrix (in place, one pass fewer), the state is the only thing the chunk loop
carries (O is formed for every chunk at once after it), and the backward is written out. Given dO and
D = ∂L/∂S' (the final state's gradient for the last chunk), the backward is the forward's state recurrence
run from the last chunk to the first (docs/ladder.md, "The backward of a linear recurrence"), inside which
only U enters:

    dU = Pᵀ dO + (e ⊙ K) D                  ∂L/∂S = γ_C D + Qᵀ (γ ⊙ dO) − Wᵀ dU    (D of the chunk before)

and then, every chunk at once, each quantity's gradient read off the one product it enters:

    dP = lower(dO Uᵀ)                   dQ = (dP ∘ Γ) K + γ ⊙ (dO Sᵀ)        dK gets (dP ∘ Γ)ᵀ Q + e ⊙ (U Dᵀ)
    dR_v = Tᵀ dU     dR_k = Tᵀ dW = −dR_v Sᵀ    dA = −strictly_lower(dR Xᵀ) = −strictly_lower(dR_v Uᵀ)
    dV = β ⊙ dR_v                       dβ = Σ_v V ⊙ dR_v + γ Σ_k K ⊙ dR_k + Σ_s (dA ∘ Γ ∘ K Kᵀ)[·, s]
    dK gets β γ ⊙ dR_k + (E + Eᵀ) K,    E = β ⊙ (dA ∘ Γ)

((I + A) X = R gives dR = Tᵀ dX and dA = −dR Xᵀ, with T = (I + A)⁻¹ and dX = [dU | dW], dW = −dU Sᵀ; then
dR Xᵀ = dR_v X_vᵀ − dR_v Sᵀ Wᵀ = dR_v Uᵀ: one product where two were. The code keeps dR_v Sᵀ and dR_v Uᵀ
and subtracts their terms.) The decays pass their gradients to g through their exponents: the segment
sums log Γ[t, s] = Σ_{s<j≤t} g_j get G[t, s] = Γ[t, s] ∂L/∂Γ[t, s], that is dP ∘ P (from P),
β ⊙ (dA ∘ Γ ∘ K Kᵀ) (from A) and e ⊙ Σ_k K ⊙ (U Dᵀ) in the last row (from e); the cumulative sums
log γ_t = Σ_{j≤t} g_j get c_t = γ_t (Σ_k Q ⊙ (dO Sᵀ) + β Σ_k K ⊙ dR_k), and c_C also γ_C ⟨D, S⟩. So

    dg_j = Σ_{t≥j} Σ_{s<j} G[t, s] + Σ_{t≥j} c_t,

each a sum of exactly the terms it adds up (kernels/ssd/cpu.py's DecayMaskedScores), as every decay here
is the exp of a sum of exactly its own g's, never a difference of cumulative sums (nanohybrid/delta_rule.py).

Shape glossary
  b batch   l length   h heads   d_k key (and query) head dim   d_v value head dim   C chunk length   c chunks
  q, k (b, l, h, d_k)   v (b, l, h, d_v)   g, beta (b, l, h)   states (b, h, d_k, d_v), fp32 (fp64 for fp64)
  inside the Function: chunked (b, h, c, C, ·), the chunks' start states (b, h, c, d_k, d_v)
"""

import torch
import torch.nn.functional as F

from kernels.ssd.cpu import decay_matrix
from nanohybrid import ops
from nanohybrid.delta_rule import initial_state_or_zeros, to_chunks


def sums_over_segments(grad_segments: torch.Tensor) -> torch.Tensor:
    """(..., C, C) -> (..., C): Σ_{t≥j} Σ_{s<j} G[t, s], what g_j gets from every segment sum containing it.
    A cumulative sum along each row ((t, i) holds Σ_{s≤i} G[t, s]), then the column i = j − 1 below the diagonal."""
    return F.pad(grad_segments.cumsum(-1).tril_(-1).sum(-2)[..., :-1], (1, 0))


class ChunkedGatedDeltaRule(torch.autograd.Function):
    """The chunked form on chunked inputs (b, h, c, C, ·) and S_0 (b, h, d_k, d_v), all in the compute dtype:
    -> O (b, h, c, C, d_v) and the final state. The backward is the module docstring's."""

    @staticmethod
    def forward(ctx, q, k, v, g, beta, initial_state):
        d_v = v.shape[-1]
        decay_ratio = decay_matrix(g)  # Γ, 0 above the diagonal, (b, h, c, C, C)
        decay_from_start = torch.exp(torch.cumsum(g, dim=-1))  # γ, (b, h, c, C)
        key_products = k @ k.transpose(-1, -2)  # K Kᵀ
        A = (beta[..., None] * key_products * decay_ratio).tril_(-1)
        identity = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device).expand_as(A)
        inverse = torch.linalg.solve_triangular(A, identity, upper=False, unitriangular=True)  # T = (I + A)⁻¹
        rhs = torch.cat([beta[..., None] * v, (beta * decay_from_start)[..., None] * k], dim=-1)  # R
        solved = inverse @ rhs  # X = [T (β ⊙ V) | W], (b, h, c, C, d_v + d_k)
        keys_to_end = (decay_ratio[..., -1, :, None] * k).transpose(-1, -2)  # (e ⊙ K)ᵀ, (b, h, c, d_k, C)
        state, starts, updates = initial_state, [], []
        totals = decay_from_start[..., -1]  # γ_C, (b, h, c)
        for solved_c, keys_c, total_c in zip(solved.unbind(2), keys_to_end.unbind(2), totals.unbind(2)):
            starts.append(state)
            updates.append(solved_c[..., :d_v] - solved_c[..., d_v:] @ state)  # U = X_v − W S
            state = total_c[..., None, None] * state + keys_c @ updates[-1]  # S' = γ_C S + (e ⊙ K)ᵀ U
        starts, u = torch.stack(starts, dim=2), torch.stack(updates, dim=2)
        scores = (q @ k.transpose(-1, -2)) * decay_ratio  # P
        o = decay_from_start[..., None] * (q @ starts) + scores @ u
        ctx.save_for_backward(q, k, v, beta, decay_ratio, decay_from_start, key_products, inverse, solved, u, starts,
                              scores)
        return o, state

    @staticmethod
    def backward(ctx, grad_o, grad_final):
        (q, k, v, beta, decay_ratio, decay_from_start, key_products, inverse, solved, u, starts,
         scores) = ctx.saved_tensors
        d_v = v.shape[-1]
        decay_to_end, total = decay_ratio[..., -1, :], decay_from_start[..., -1]  # e, γ_C
        keys_to_end = decay_to_end[..., None] * k  # e ⊙ K

        # The state recurrence backwards: D for every chunk, and dU.
        grad_u_from_o = scores.transpose(-1, -2) @ grad_o  # Pᵀ dO
        grad_state_from_o = q.transpose(-1, -2) @ (decay_from_start[..., None] * grad_o)  # Qᵀ (γ ⊙ dO)
        grad_state, grad_ends, grad_us = grad_final, [], []
        for from_o, state_from_o, keys_c, w_c, total_c in zip(*(t.unbind(2)[::-1] for t in (
                grad_u_from_o, grad_state_from_o, keys_to_end, solved[..., d_v:], total))):
            grad_ends.append(grad_state)
            grad_us.append(from_o + keys_c @ grad_state)
            grad_state = total_c[..., None, None] * grad_state + state_from_o - w_c.transpose(-1, -2) @ grad_us[-1]
        grad_end, grad_u = torch.stack(grad_ends[::-1], dim=2), torch.stack(grad_us[::-1], dim=2)

        # O = γ ⊙ (Q S) + P U, and S' through e ⊙ K and γ_C.
        grad_scores = (grad_o @ u.transpose(-1, -2)).tril_()  # dP
        grad_qk = grad_scores * decay_ratio
        grad_segments = grad_scores.mul_(scores)  # dP ∘ P, in place of dP
        from_state = grad_o @ starts.transpose(-1, -2)  # dO Sᵀ
        grad_q = grad_qk @ k + decay_from_start[..., None] * from_state
        u_end = u @ grad_end.transpose(-1, -2)  # U Dᵀ
        grad_k = grad_qk.transpose(-1, -2) @ q + decay_to_end[..., None] * u_end
        grad_segments[..., -1, :] += decay_to_end * (k * u_end).sum(-1)
        grad_cumulative = decay_from_start * (q * from_state).sum(-1)
        grad_cumulative[..., -1] += total * (grad_end * starts).sum((-1, -2))

        # The UT transform: X = (I + A)⁻¹ R.
        grad_rhs_v = inverse.transpose(-1, -2) @ grad_u  # dR_v = Tᵀ dU
        # The signs: dR_k = −dR_v Sᵀ and dA = −dR_v Uᵀ, so their terms below are subtracted.
        state_read = grad_rhs_v @ starts.transpose(-1, -2)  # dR_v Sᵀ = −dR_k
        masked = (grad_rhs_v @ u.transpose(-1, -2)).tril_(-1).mul_(decay_ratio)  # dR_v Uᵀ ∘ Γ = −dA ∘ Γ
        keys_read = (k * state_read).sum(-1)  # −Σ_k K ⊙ dR_k
        pulls = masked * key_products  # −dA ∘ Γ ∘ K Kᵀ
        grad_beta = (v * grad_rhs_v).sum(-1) - decay_from_start * keys_read - pulls.sum(-1)
        weighted = beta[..., None] * masked  # −E
        grad_k -= (beta * decay_from_start)[..., None] * state_read + (weighted + weighted.transpose(-1, -2)) @ k
        grad_segments -= beta[..., None] * pulls
        grad_cumulative -= beta * decay_from_start * keys_read
        grad_g = sums_over_segments(grad_segments) + grad_cumulative.flip(-1).cumsum(-1).flip(-1)
        return grad_q, grad_k, beta[..., None] * grad_rhs_v, grad_g, grad_beta, grad_state


@ops.register("gated_delta_rule", "cpu", devices=("cpu",))
def gated_delta_rule(q, k, v, g, beta, chunk_size, initial_state=None):
    """Same as nanohybrid.delta_rule.gated_delta_rule: o (b, l, h, d_v) in v's dtype and the final state
    (b, h, d_k, d_v). The tail is padded with zeros (g = 0, β = 0: the state is left as it is)."""
    length, dtype = q.shape[1], ops.compute_dtype(v)
    chunk = min(chunk_size, length)
    chunked = (to_chunks(t, chunk, dtype).contiguous() for t in (q, k, v, g, beta))
    o, state = ChunkedGatedDeltaRule.apply(*chunked, initial_state_or_zeros(k, v, initial_state))
    return o.flatten(2, 3).transpose(1, 2)[:, :length].to(v.dtype), state
