"""Mamba-2 SSD, the CPU fast path: the chunked algorithm of nanohybrid/ssd.py::ssd_chunked, laid out for a
CPU, with the in-chunk decay chain's backward written out.

Reference: Dao & Gu 2024, "Transformers are SSMs" (arXiv 2405.21060), §6. The maths is that of the
reference; what differs:

  - B and C are never repeated per head: the k = h/g heads of a group share them, so C Bᵀ is formed once
    per group, and the products with B and C run over the group's heads side by side.
  - The decay mask inside a chunk is L[t, s] = exp(cum_t - cum_s), with cum the cumulative log α
    restarted at each chunk (as mamba_ssm's kernels compute it), not segment_sum's masked cumulative
    sum, which costs two more passes over the (Q × Q) blocks: the sums stay as short as a chunk, and the
    diagonal is exactly 1.
  - L and its product with C Bᵀ are one autograd.Function (DecayMaskedScores), whose backward makes two
    passes over the (Q × Q)-per-head tensors, the largest in the layer, where autograd made five.
  - The chunk axis comes first in contiguous tensors, so the einsums do not copy their operands.

Shape glossary
  b  batch    l  length    h  heads    p  head dim    g  groups of B/C    k  heads per group (h/g)
  n  state size    Q  chunk length    c  chunks (l/Q)
  x (b, l, h, p)   dt (b, l, h)   A (h)   B, C (b, l, g, n)   state (b, h, p, n), fp32
"""

import torch

from nanohybrid import ops
from nanohybrid.ssd import initial_state_or_zeros


class DecayMaskedScores(torch.autograd.Function):
    """M = L ∘ C Bᵀ for each head of a group, with the chunk's decay mask L[t, s] = exp(cum_t - cum_s) for
    s ≤ t and 0 above the diagonal, and the backward pass written out (G = ∂loss/∂M):

        ∂loss/∂(C Bᵀ) = Σ over the group's heads of G ∘ L
        ∂loss/∂cum_t  = Σ_s P[t, s] - Σ_s P[s, t]        with P = G ∘ M   (∂L[t, s]/∂cum_t = L[t, s] = -∂L[t, s]/∂cum_s)

    These (Q × Q)-per-head tensors are the largest in the layer. Autograd, differentiating the
    difference, the mask, the exp and the product one by one, makes five elementwise passes over them
    where this backward makes two (G ∘ L, then P), besides the same sums.
    Above the diagonal exp may overflow to inf; tril_ replaces it by 0 before anything uses it.
    scores C Bᵀ (b, c, g, Q, Q); cum (b, c, g, k, Q) -> M (b, c, g, k, Q, Q).
    """

    @staticmethod
    def forward(ctx, scores, cum):
        decay_matrix = (cum[..., :, None] - cum[..., None, :]).exp_().tril_()  # L, (b, c, g, k, Q, Q)
        ctx.save_for_backward(scores, decay_matrix)
        return scores[:, :, :, None] * decay_matrix

    @staticmethod
    def backward(ctx, grad):
        scores, decay_matrix = ctx.saved_tensors
        grad_masked = grad * decay_matrix  # G ∘ L
        grad_scores = grad_masked.sum(3)
        product = grad_masked.mul_(scores[:, :, :, None])  # P = G ∘ L ∘ C Bᵀ, in place of G ∘ L
        return grad_scores, product.sum(-1) - product.sum(-2)


@ops.register("ssd", "cpu", devices=("cpu",))
def ssd_chunked(x, dt, A, B, C, chunk_size, initial_state=None):
    """nanohybrid.ssd.ssd_chunked's four steps, laid out for a CPU (see the module's docstring).
    Returns y (b, l, h, p) in x's dtype and the final state (b, h, p, n) in fp32."""
    batch, length, heads, head_dim = x.shape
    groups = B.shape[2]
    per_group = heads // groups  # k
    chunk = min(chunk_size, length)
    pad = -length % chunk
    dt_x = x.float() * dt.float()[..., None]  # Δ ⊙ x, (b, l, h, p)
    log_decay = dt.float() * A.float()  # log α, (b, l, h)
    B, C = B.float(), C.float()
    if pad:
        dt_x, B, C = (torch.nn.functional.pad(t, (0, 0, 0, 0, 0, pad)) for t in (dt_x, B, C))
        log_decay = torch.nn.functional.pad(log_decay, (0, 0, 0, pad))
    n_chunks = (length + pad) // chunk
    # Split the time axis into chunks, and the heads into g groups of k.
    dt_x = dt_x.unflatten(1, (n_chunks, chunk)).unflatten(3, (groups, per_group))  # (b, c, Q, g, k, p)
    log_decay = log_decay.unflatten(1, (n_chunks, chunk)).unflatten(3, (groups, per_group))  # (b, c, Q, g, k)
    B, C = (t.unflatten(1, (n_chunks, chunk)) for t in (B, C))  # (b, c, Q, g, n)
    cumulative = torch.cumsum(log_decay, dim=2)  # cum_t = log(α_1 ⋯ α_t) within each chunk, (b, c, Q, g, k)

    # 1. Inside each chunk: the quadratic form (L ∘ C Bᵀ)(Δ ⊙ x).
    cum = cumulative.movedim(2, -1).contiguous()  # (b, c, g, k, Q); contiguous, so that L and the products
    # below come out in plain (..., Q, Q) layout rather than in the strides a moved axis would pass on
    scores = torch.einsum("bctgn,bcsgn->bcgts", C, B)  # C Bᵀ, once per group, (b, c, g, Q, Q)
    y_inside = torch.einsum("bcgkts,bcsgkp->bctgkp", DecayMaskedScores.apply(scores, cum), dt_x)

    # 2. Each chunk's own contribution to the state at its end (starting from zero).
    decay_to_chunk_end = torch.exp(cumulative[:, :, -1:] - cumulative)  # (b, c, Q, g, k)
    chunk_states = torch.einsum("bcsgn,bcsgkp->bcgkpn", B, decay_to_chunk_end[..., None] * dt_x)

    # 3. Across chunks: the recurrence S_start(c+1) = (decay over chunk c) · S_start(c) + chunk_states[c].
    chunk_decay = torch.exp(cumulative[:, :, -1])  # (b, c, g, k)
    state = initial_state_or_zeros(x, B.shape[-1], initial_state).unflatten(1, (groups, per_group))  # (b, g, k, p, n)
    start_states = []
    for decay_c, states_c in zip(chunk_decay.unbind(1), chunk_states.unbind(1)):  # unbind: indexing [:, c] would
        start_states.append(state)                                                # cost a full-size gradient per chunk
        state = decay_c[..., None, None] * state + states_c
    start_states = torch.stack(start_states, dim=1)  # (b, c, g, k, p, n)

    # 4. Each chunk's start state, read out by C and decayed to every position inside the chunk.
    y_from_state = torch.einsum("bctgn,bcgkpn->bctgkp", C, start_states) * torch.exp(cumulative)[..., None]

    y = (y_inside + y_from_state).flatten(3, 4).flatten(1, 2)[:, :length]  # (b, l, h, p)
    return y.to(x.dtype), state.flatten(1, 2)
