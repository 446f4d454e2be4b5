"""Mamba-2 SSD, the CPU fast path: the chunked algorithm of nanohybrid/ssd.py::ssd_chunked, laid out for a
CPU, with the in-chunk decay chain's backward written out.

Reference: Dao & Gu 2024, "Transformers are SSMs" (arXiv 2405.21060), §6. The maths is that of the
reference; what differs:

  - B and C are never repeated per head: the k = h/g heads of a group share them, so C Bᵀ is formed once
    per group, and the products with B and C run over the group's heads side by side.
  - The decay mask inside a chunk, L[t, s] = exp(Σ_{s<k≤t} log α_k), and its product with C Bᵀ are one
    autograd.Function (DecayMaskedScores), whose backward is written out over the (Q × Q)-per-head
    tensors, the largest in the layer.
  - The chunk axis comes first in contiguous tensors, so the einsums do not copy their operands.

Every decay is the exp of a sum over exactly its own stretch of positions, as in the reference: the
segment sums for L, a cumulative sum from the chunk's end for the decay to the end, one from the start
for the decay from the start. None is a difference cum_t − cum_s of cumulative sums, which reach
Q·|Δ A| (10³ and more under strong decay) and whose difference keeps only fp32's last few digits.

Shape glossary
  b  batch    l  length    h  heads    p  head dim    g  groups of B/C    k  heads per group (h/g)
  n  state size    Q  chunk length    c  chunks (l/Q)
  x (b, l, h, p)   dt (b, l, h)   A (h)   B, C (b, l, g, n)   state (b, h, p, n), fp32
"""

import torch
import torch.nn.functional as F

from nanohybrid import ops
from nanohybrid.ssd import initial_state_or_zeros


def decay_matrix(log_decay: torch.Tensor) -> torch.Tensor:
    """(..., Q) -> (..., Q, Q): L[t, s] = exp(Σ_{s<k≤t} log α_k) for s ≤ t, 0 above the diagonal.
    nanohybrid.ssd.segment_sum's masked cumulative sum, in place, except that the empty sums above the
    diagonal (0, so exp gives 1) are zeroed after the exp rather than set to -inf before it: one pass fewer."""
    length = log_decay.shape[-1]
    strictly_lower = torch.ones(length, length, dtype=torch.bool, device=log_decay.device).tril(-1)
    terms = torch.where(strictly_lower, log_decay[..., :, None], 0.0)  # terms[k, s] = log α_k for k > s
    return terms.cumsum_(-2).exp_().tril_()  # cumsum: Σ_{s<k≤t} log α_k at (t, s)


class DecayMaskedScores(torch.autograd.Function):
    """M = L ∘ C Bᵀ for each head of a group, with the chunk's decay mask L[t, s] = exp(Σ_{s<k≤t} log α_k)
    for s ≤ t and 0 above the diagonal (decay_matrix), and the backward pass written out
    (G = ∂loss/∂M, P = G ∘ M):

        ∂loss/∂(C Bᵀ)   = Σ over the group's heads of G ∘ L
        ∂loss/∂log α_k  = Σ_{t≥k} Σ_{s<k} P[t, s]     (the segments that contain k; ∂L[t, s]/∂log α_k = L[t, s])

    The second sums P over the rectangle t ≥ k > s: a cumulative sum along each row, whose entry (t, k−1) is
    Σ_{s<k} P[t, s], then column k−1's sum below the diagonal (t ≥ k). It adds only terms of the sum it
    returns; the shorter form through cum_t, Σ_{t≥k} (Σ_s P[t, s] − Σ_s P[s, t]), reaches the same value as
    a difference of sums over the whole triangle, which strong decay makes far larger than the value itself.
    scores C Bᵀ (b, c, g, Q, Q); log α (b, c, g, k, Q) -> M (b, c, g, k, Q, Q).
    """

    @staticmethod
    def forward(ctx, scores, log_decay):
        decay = decay_matrix(log_decay)  # L, (b, c, g, k, Q, Q)
        ctx.save_for_backward(scores, decay)
        return scores[:, :, :, None] * decay

    @staticmethod
    def backward(ctx, grad):
        scores, decay = ctx.saved_tensors
        grad_masked = grad * decay  # G ∘ L
        grad_scores = grad_masked.sum(3)
        product = grad_masked.mul_(scores[:, :, :, None])  # P = G ∘ L ∘ C Bᵀ, in place of G ∘ L
        row_sums = product.cumsum_(-1).tril_(-1)  # Σ_{s≤j} P[t, s] at (t, j), kept where t > j
        return grad_scores, F.pad(row_sums.sum(-2)[..., :-1], (1, 0))  # column j's sum: ∂loss/∂log α_{j+1}


def sums_to_chunk_end(log_decay: torch.Tensor) -> torch.Tensor:
    """(..., Q) -> (..., Q): Σ_{s<k≤Q} log α_k = log(α_{s+1} ⋯ α_Q), a cumulative sum from the chunk's end,
    shifted by one (0 at the last position)."""
    return F.pad(log_decay[..., 1:].flip(-1).cumsum(-1).flip(-1), (0, 1))


@ops.register("ssd", "cpu", devices=("cpu",))
def ssd_chunked(x, dt, A, B, C, chunk_size, initial_state=None):
    """nanohybrid.ssd.ssd_chunked's four steps, laid out for a CPU (see the module's docstring).
    Returns y (b, l, h, p) in x's dtype and the final state (b, h, p, n) in fp32 (fp64 for fp64 inputs)."""
    batch, length, heads, head_dim = x.shape
    groups, dtype = B.shape[2], ops.compute_dtype(x)
    per_group = heads // groups  # k
    chunk = min(chunk_size, length)
    pad = -length % chunk
    dt_x = x.to(dtype) * dt.to(dtype)[..., None]  # Δ ⊙ x, (b, l, h, p)
    log_decay = dt.to(dtype) * A.to(dtype)  # log α, (b, l, h)
    B, C = B.to(dtype), C.to(dtype)
    if pad:
        dt_x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (dt_x, B, C))
        log_decay = F.pad(log_decay, (0, 0, 0, pad))
    n_chunks = (length + pad) // chunk
    # Split the time axis into chunks, and the heads into g groups of k.
    dt_x = dt_x.unflatten(1, (n_chunks, chunk)).unflatten(3, (groups, per_group))  # (b, c, Q, g, k, p)
    B, C = (t.unflatten(1, (n_chunks, chunk)) for t in (B, C))  # (b, c, Q, g, n)
    log_decay = log_decay.unflatten(1, (n_chunks, chunk)).unflatten(3, (groups, per_group)).movedim(2, -1)
    log_decay = log_decay.contiguous()  # (b, c, g, k, Q); contiguous, so that L and the products below come
    # out in plain (..., Q, Q) layout rather than in the strides a moved axis would pass on

    # 1. Inside each chunk: the quadratic form (L ∘ C Bᵀ)(Δ ⊙ x).
    scores = torch.einsum("bctgn,bcsgn->bcgts", C, B)  # C Bᵀ, once per group, (b, c, g, Q, Q)
    y_inside = torch.einsum("bcgkts,bcsgkp->bctgkp", DecayMaskedScores.apply(scores, log_decay), dt_x)

    # 2. Each chunk's own contribution to the state at its end (starting from zero).
    decay_to_chunk_end = torch.exp(sums_to_chunk_end(log_decay)).movedim(-1, 2).contiguous()  # α_{s+1} ⋯ α_Q,
    # (b, c, Q, g, k), time first again like dt_x: the products below then run over contiguous memory
    chunk_states = torch.einsum("bcsgn,bcsgkp->bcgkpn", B, decay_to_chunk_end[..., None] * dt_x)

    # 3. Across chunks: the recurrence S_start(c+1) = (decay over chunk c) · S_start(c) + chunk_states[c].
    decay_from_chunk_start = torch.exp(torch.cumsum(log_decay, dim=-1)).movedim(-1, 2).contiguous()  # α_1 ⋯ α_t
    state = initial_state_or_zeros(x, B.shape[-1], initial_state).unflatten(1, (groups, per_group))  # (b, g, k, p, n)
    start_states = []
    for decay_c, states_c in zip(decay_from_chunk_start[:, :, -1].unbind(1), chunk_states.unbind(1)):  # unbind:
        start_states.append(state)                           # indexing [:, c] would cost a full-size gradient per chunk
        state = decay_c[..., None, None] * state + states_c
    start_states = torch.stack(start_states, dim=1)  # (b, c, g, k, p, n)

    # 4. Each chunk's start state, read out by C and decayed to every position inside the chunk.
    y_from_state = torch.einsum("bctgn,bcgkpn->bctgkp", C, start_states) * decay_from_chunk_start[..., None]

    y = (y_inside + y_from_state).flatten(3, 4).flatten(1, 2)[:, :length]  # (b, l, h, p)
    return y.to(x.dtype), state.flatten(1, 2)
