"""Mamba-2 state space duality (SSD): recurrence, quadratic (matrix) form and chunked algorithm.

Reference: Dao & Gu 2024, "Transformers are SSMs" (arXiv 2405.21060), §3-§6. Each head has a scalar
decay, so the state update is a rank-1 outer product (ARCHITECTURES.md §4.2):

    α_t = exp(Δ_t · A_h)                          (scalar per position and head)
    S_t = α_t · S_{t-1} + Δ_t · x_t ⊗ B_t         (S ∈ R^{p×n})
    y_t = S_t · C_t

Unrolled, y = (L ∘ C Bᵀ)(Δ ⊙ x) with L[t, s] = α_{s+1} ⋯ α_t for s ≤ t: masked "attention" with a
decay mask (the quadratic form). The chunked algorithm uses the quadratic form inside chunks of
length Q and the recurrence between chunks, which costs O(l·Q) instead of O(l²).

The D skip connection and the output gate live in the mixer (mamba.py), not here.

Shape glossary
  b  batch    l  length    h  heads    p  head dim    g  groups of B/C    k  heads per group (h/g)
  n  state size    Q  chunk length    c  chunks (l/Q)
  x (b, l, h, p)   dt (b, l, h), positive (after softplus)   A (h), negative   B, C (b, l, g, n)
  state (b, h, p, n), fp32. Group j of B and C serves the k consecutive heads j·k ... (j+1)·k - 1.
"""

import torch

from . import ops


def _heads_from_groups(BC: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(b, l, g, n) -> (b, l, h, n): consecutive heads share one group's B or C."""
    return BC.float().repeat_interleave(n_heads // BC.shape[2], dim=2)


def _initial(x: torch.Tensor, n_state: int, initial_state: torch.Tensor | None) -> torch.Tensor:
    batch, _, heads, head_dim = x.shape
    if initial_state is None:
        return x.new_zeros(batch, heads, head_dim, n_state, dtype=torch.float32)
    return initial_state.float()


def ssd_step(state, x, dt, A, B, C):
    """One step. state (b, h, p, n); x (b, h, p); dt (b, h); B, C (b, g, n) -> y (b, h, p), new state."""
    B = B.float().repeat_interleave(x.shape[1] // B.shape[1], dim=1)  # (b, h, n)
    C = C.float().repeat_interleave(x.shape[1] // C.shape[1], dim=1)
    dt = dt.float()
    decay = torch.exp(dt * A.float())  # α_t, (b, h)
    state = decay[:, :, None, None] * state + torch.einsum("bh,bhp,bhn->bhpn", dt, x.float(), B)
    return torch.einsum("bhpn,bhn->bhp", state, C), state


def ssd_recurrent(x, dt, A, B, C, initial_state=None):
    """The recurrence, one step at a time. Returns y (b, l, h, p) in x's dtype, final state (b, h, p, n)."""
    state = _initial(x, B.shape[-1], initial_state)
    outputs = []
    for x_t, dt_t, B_t, C_t in zip(x.unbind(1), dt.unbind(1), B.unbind(1), C.unbind(1)):
        y, state = ssd_step(state, x_t, dt_t, A, B_t, C_t)
        outputs.append(y)
    return torch.stack(outputs, dim=1).to(x.dtype), state


def segment_sum(a: torch.Tensor) -> torch.Tensor:
    """(..., T) -> (..., T, T) with out[i, j] = a[j+1] + ... + a[i] for j ≤ i and -inf above the diagonal.

    Built by masking before a cumulative sum (not as a difference of cumsums), so that exp() of it is
    exact on the diagonal and never subtracts two large numbers.
    """
    length = a.shape[-1]
    strictly_lower = torch.tril(torch.ones(length, length, dtype=torch.bool, device=a.device), diagonal=-1)
    repeated = a[..., None, :].expand(*a.shape, length).transpose(-1, -2)  # repeated[..., i, j] = a[i]
    sums = torch.cumsum(repeated.masked_fill(~strictly_lower, 0.0), dim=-2)  # sums[i, j] = Σ_{j<k≤i} a[k]
    lower = torch.tril(torch.ones(length, length, dtype=torch.bool, device=a.device))
    return sums.masked_fill(~lower, float("-inf"))


def ssd_quadratic(x, dt, A, B, C, initial_state=None):
    """y = (L ∘ C Bᵀ)(Δ ⊙ x) + C · (decay from the start) · S_0, as one masked (l × l) product per head."""
    heads = x.shape[2]
    B, C = _heads_from_groups(B, heads), _heads_from_groups(C, heads)
    state = _initial(x, B.shape[-1], initial_state)
    log_decay = (dt.float() * A.float()).transpose(1, 2)  # log α, (b, h, l)
    decay_matrix = torch.exp(segment_sum(log_decay))  # L, (b, h, l, l)
    scores = torch.einsum("bthn,bshn->bhts", C, B) * decay_matrix
    dt_x = x.float() * dt.float()[..., None]  # Δ ⊙ x, (b, l, h, p)
    y = torch.einsum("bhts,bshp->bthp", scores, dt_x)
    decay_from_start = torch.exp(torch.cumsum(log_decay, dim=-1))  # α_1 ⋯ α_t, (b, h, l)
    y = y + torch.einsum("bthn,bhpn,bht->bthp", C, state, decay_from_start)
    decay_to_end = torch.exp(segment_sum(log_decay)[..., -1, :])  # α_{s+1} ⋯ α_l, (b, h, l)
    final = torch.einsum("bhs,bshp,bshn->bhpn", decay_to_end, dt_x, B) + decay_from_start[..., -1, None, None] * state
    return y.to(x.dtype), final


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


@ops.register("ssd", "reference")
def ssd_chunked(x, dt, A, B, C, chunk_size, initial_state=None):
    """The four-step chunked algorithm (SSD paper §6). Any length: the tail is padded with Δ = 0,
    which leaves the state untouched (α = 1, no input).

    The k = h/g heads of a group share B and C, so C Bᵀ is formed once per group and the products with
    B and C run over the group's heads side by side, never on copies of B and C repeated per head.
    Inside a chunk the decay mask is L[t, s] = exp(cum_t - cum_s), with cum the cumulative log α
    restarted at each chunk (as mamba_ssm's kernels compute it): exactly 1 on the diagonal, and the
    sums stay as short as a chunk.
    """
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
    state = _initial(x, B.shape[-1], initial_state).unflatten(1, (groups, per_group))  # (b, g, k, p, n)
    start_states = []
    for decay_c, states_c in zip(chunk_decay.unbind(1), chunk_states.unbind(1)):  # unbind: indexing [:, c] would
        start_states.append(state)                                                # cost a full-size gradient per chunk
        state = decay_c[..., None, None] * state + states_c
    start_states = torch.stack(start_states, dim=1)  # (b, c, g, k, p, n)

    # 4. Each chunk's start state, read out by C and decayed to every position inside the chunk.
    y_from_state = torch.einsum("bctgn,bcgkpn->bctgkp", C, start_states) * torch.exp(cumulative)[..., None]

    y = (y_inside + y_from_state).flatten(3, 4).flatten(1, 2)[:, :length]  # (b, l, h, p)
    return y.to(x.dtype), state.flatten(1, 2)
