"""Mamba-2 state space duality (SSD): recurrence, quadratic (matrix) form and chunked algorithm.

Reference: Dao & Gu 2024, "Transformers are SSMs" (arXiv 2405.21060), §3-§6. Each head has a scalar
decay, so the state update is a rank-1 outer product (B and C are shared by groups of heads:
docs/conventions.md, "Mamba-2 groups"):

    α_t = exp(Δ_t · A_h)                          (scalar per position and head)
    S_t = α_t · S_{t-1} + Δ_t · x_t ⊗ B_t         (S ∈ R^{p×n})
    y_t = S_t · C_t

Unrolled, y = (L ∘ C Bᵀ)(Δ ⊙ x) with L[t, s] = α_{s+1} ⋯ α_t for s ≤ t: masked "attention" with a
decay mask (the quadratic form). The chunked algorithm uses the quadratic form inside chunks of
length Q and the recurrence between chunks, which costs O(l·Q) instead of O(l²).

The D skip connection and the output gate live in the mixer (mamba.py), not here. All three forms
are plain PyTorch, differentiated by autograd; the fast CPU form of the chunked algorithm is
kernels/ssd/cpu.py, the Triton kernel kernels/ssd/triton.py.

Shape glossary
  b  batch    l  length    h  heads    p  head dim    g  groups of B/C    k  heads per group (h/g)
  n  state size    Q  chunk length    c  chunks (l/Q)
  x (b, l, h, p)   dt (b, l, h), positive (after softplus)   A (h), negative   B, C (b, l, g, n)
  state (b, h, p, n), fp32 (fp64 for fp64 inputs: ops.compute_dtype). Group j of B and C serves the k
  consecutive heads j·k ... (j+1)·k - 1.
"""

import torch
import torch.nn.functional as F

from . import ops


def _heads_from_groups(BC: torch.Tensor, n_heads: int, dtype: torch.dtype) -> torch.Tensor:
    """(b, l, g, n) -> (b, l, h, n) in `dtype`: consecutive heads share one group's B or C."""
    return BC.to(dtype).repeat_interleave(n_heads // BC.shape[2], dim=2)


def initial_state_or_zeros(x: torch.Tensor, n_state: int, initial_state: torch.Tensor | None) -> torch.Tensor:
    """The state S_0 in x's compute dtype (ops.compute_dtype: fp32, fp64 for fp64): the given one, or zeros."""
    batch, _, heads, head_dim = x.shape
    if initial_state is None:
        return x.new_zeros(batch, heads, head_dim, n_state, dtype=ops.compute_dtype(x))
    return initial_state.to(ops.compute_dtype(x))


def ssd_step(state, x, dt, A, B, C):
    """One step. state (b, h, p, n); x (b, h, p); dt (b, h); B, C (b, g, n) -> y (b, h, p), new state."""
    dtype = ops.compute_dtype(x)
    B = B.to(dtype).repeat_interleave(x.shape[1] // B.shape[1], dim=1)  # (b, h, n)
    C = C.to(dtype).repeat_interleave(x.shape[1] // C.shape[1], dim=1)
    dt = dt.to(dtype)
    decay = torch.exp(dt * A.to(dtype))  # α_t, (b, h)
    state = decay[:, :, None, None] * state + torch.einsum("bh,bhp,bhn->bhpn", dt, x.to(dtype), B)
    return torch.einsum("bhpn,bhn->bhp", state, C), state


def ssd_recurrent(x, dt, A, B, C, initial_state=None):
    """The recurrence, one step at a time. Returns y (b, l, h, p) in x's dtype, final state (b, h, p, n)."""
    state = initial_state_or_zeros(x, B.shape[-1], initial_state)
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
    strictly_lower = torch.ones(length, length, dtype=torch.bool, device=a.device).tril(-1)
    terms = torch.where(strictly_lower, a[..., :, None], 0.0)  # terms[..., i, j] = a[i] for i > j, else 0
    sums = torch.cumsum(terms, dim=-2)  # sums[..., i, j] = Σ_{j<k≤i} a[k]
    return sums.masked_fill(strictly_lower.T, float("-inf"))


def ssd_quadratic(x, dt, A, B, C, initial_state=None):
    """y = (L ∘ C Bᵀ)(Δ ⊙ x) + C · (decay from the start) · S_0, as one masked (l × l) product per head."""
    heads, dtype = x.shape[2], ops.compute_dtype(x)
    B, C = _heads_from_groups(B, heads, dtype), _heads_from_groups(C, heads, dtype)
    state = initial_state_or_zeros(x, B.shape[-1], initial_state)
    log_decay = (dt.to(dtype) * A.to(dtype)).transpose(1, 2)  # log α, (b, h, l)
    segments = segment_sum(log_decay)  # Σ_{s<k≤t} log α_k, (b, h, l, l)
    scores = torch.einsum("bthn,bshn->bhts", C, B) * torch.exp(segments)  # L ∘ C Bᵀ
    dt_x = x.to(dtype) * dt.to(dtype)[..., None]  # Δ ⊙ x, (b, l, h, p)
    y = torch.einsum("bhts,bshp->bthp", scores, dt_x)
    decay_from_start = torch.exp(torch.cumsum(log_decay, dim=-1))  # α_1 ⋯ α_t, (b, h, l)
    y = y + torch.einsum("bthn,bhpn,bht->bthp", C, state, decay_from_start)
    decay_to_end = torch.exp(segments[..., -1, :])  # L's last row, α_{s+1} ⋯ α_l, (b, h, l)
    final = torch.einsum("bhs,bshp,bshn->bhpn", decay_to_end, dt_x, B) + decay_from_start[..., -1, None, None] * state
    return y.to(x.dtype), final


@ops.register("ssd", "reference")
def ssd_chunked(x, dt, A, B, C, chunk_size, initial_state=None):
    """The chunked algorithm (SSD paper §6, the four steps of its Listing 1): the quadratic form inside
    chunks of Q positions, the recurrence between them. Any length: the tail is padded with Δ = 0, which
    leaves the state untouched (α = 1, no input). Returns y (b, l, h, p) in x's dtype, final state (b, h, p, n).

    Every decay inside a chunk is exp of the sum of log α over its own segment (segment_sum), never
    exp(cum_t − cum_s) of two cumulative sums: those grow to Q·|Δ A|, 10³ or more under strong decay, and
    their difference then keeps only the few digits that survive the cancellation (an fp32 sum near 10³
    is rounded to ~10⁻⁴, and so is the decay it gives)."""
    length, heads, dtype = x.shape[1], x.shape[2], ops.compute_dtype(x)
    chunk = min(chunk_size, length)
    pad = -length % chunk
    B, C = _heads_from_groups(B, heads, dtype), _heads_from_groups(C, heads, dtype)  # (b, l, h, n)
    dt_x = x.to(dtype) * dt.to(dtype)[..., None]  # Δ ⊙ x, (b, l, h, p)
    log_decay = dt.to(dtype) * A.to(dtype)  # log α, (b, l, h)
    # Pad the time axis to whole chunks, then split it: (b, l, ...) -> (b, c, Q, ...).
    dt_x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)).unflatten(1, (-1, chunk)) for t in (dt_x, B, C))
    log_decay = F.pad(log_decay, (0, 0, 0, pad)).unflatten(1, (-1, chunk)).movedim(3, 1)  # (b, h, c, Q)
    segments = segment_sum(log_decay)  # Σ_{s<k≤t} log α_k within each chunk, (b, h, c, Q, Q)

    # 1. Inside each chunk: the quadratic form (L ∘ C Bᵀ)(Δ ⊙ x), with L[t, s] = α_{s+1} ⋯ α_t.
    decay_matrix = torch.exp(segments)  # L, (b, h, c, Q, Q)
    y_inside = torch.einsum("bcthn,bcshn,bhcts,bcshp->bcthp", C, B, decay_matrix, dt_x)

    # 2. Each chunk's own contribution to the state at its end, starting from zero.
    decay_to_chunk_end = torch.exp(segments[..., -1, :])  # L's last row, α_{s+1} ⋯ α_Q, (b, h, c, Q)
    chunk_states = torch.einsum("bcshn,bhcs,bcshp->bchpn", B, decay_to_chunk_end, dt_x)

    # 3. Across chunks, the recurrence: S_start(c+1) = (α over chunk c) · S_start(c) + chunk_states[c].
    decay_from_chunk_start = torch.exp(torch.cumsum(log_decay, dim=-1))  # α_1 ⋯ α_t, (b, h, c, Q)
    state, start_states = initial_state_or_zeros(x, B.shape[-1], initial_state), []
    for c in range(chunk_states.shape[1]):
        start_states.append(state)
        state = decay_from_chunk_start[:, :, c, -1, None, None] * state + chunk_states[:, c]
    start_states = torch.stack(start_states, dim=1)  # (b, c, h, p, n)

    # 4. Each chunk's start state, read out by C and decayed to every position of the chunk.
    y_from_state = torch.einsum("bcthn,bchpn,bhct->bcthp", C, start_states, decay_from_chunk_start)

    y = (y_inside + y_from_state).flatten(1, 2)[:, :length]  # (b, l, h, p)
    return y.to(x.dtype), state
