"""Mamba-2 state space duality (SSD), chunked, as Triton kernels with a hand-written backward pass.

Reference: Dao & Gu 2024, "Transformers are SSMs" (arXiv 2405.21060), §6; the readable version is
nanohybrid/ssd.py::ssd_chunked (B and C in groups: docs/conventions.md, "Mamba-2 groups"). Per head,
with a scalar decay:

    α_t = exp(Δ_t A_h),    S_t = α_t S_{t-1} + Δ_t x_t ⊗ B_t,    y_t = S_t C_t

Forward, for chunks of Q positions. Inside a chunk write X_t = Δ_t x_t, a_k = log α_k = Δ_k A_h, and
    cum_t = Σ_{k≤t} a_k (from the chunk's start),   end_s = Σ_{k>s} a_k (to its end),   total = Σ_k a_k,
    L[t, s] = exp(Σ_{s<k≤t} a_k) for s ≤ t (else 0),   S0 the state the chunk starts from:
  2. chunk state   S_c = Σ_s exp(end_s) X_s ⊗ B_s                          (_chunk_state_kernel)
  3. passing       S0_{c+1} = exp(total_c) S0_c + S_c, from the initial state (_state_passing_kernel)
  1+4. output      y_t = Σ_{s≤t} L[t, s] (C_t·B_s) X_s + exp(cum_t) S0 C_t (_chunk_output_kernel)
Every exponent is a sum over exactly its own positions (L's by a cumulative sum down the masked (Q × Q)
block, end_s by a masked sum), never a difference such as cum_t − cum_s or total − cum_s: the cumulative
sums reach Q·|Δ A|, 10³ and more under strong decay, and their difference keeps only fp32's last digits.

Backward. Given dy and d(final state), let D_c be the gradient of the state at chunk c's end (= S0_{c+1}).
Step 3 read backward is the same recurrence run from the last chunk to the first:
    D_{c-1} = exp(total_c) D_c + Σ_{t in chunk c} exp(cum_t) dy_t ⊗ C_t,   from D_last = d(final state),
and the state before the first chunk gets d(initial state). Its increments have the form of step 2
with (x, B, decay to the end) replaced by (dy, C, decay from the start), so the same two kernels compute
it. Then each chunk on its own (_chunk_backward_kernel), with G = L ∘ (dy Xᵀ) and M = L ∘ (C Bᵀ):
    dX_s = Σ_{t≥s} M[t, s] dy_t + exp(end_s) D B_s       dx = Δ dX,   dΔ gets x·dX
    dB_s = Σ_{t≥s} G[t, s] C_t  + exp(end_s) Dᵀ X_s      (summed over the heads of B's group)
    dC_t = Σ_{s≤t} G[t, s] B_s  + exp(cum_t) S0ᵀ dy_t
For the decay, each exponent passes its gradient to every a_k it sums. With P = M ∘ (dy Xᵀ) (what L[t, s]
passes), v_t = C_t · (exp(cum_t) S0ᵀ dy_t) (the readout's exp(cum_t)), w_s = X_s · (exp(end_s) D B_s) (the
chunk state's exp(end_s)) and exp(total) ⟨D, S0⟩ (the passing decay):
    da_k = Σ_{t≥k} Σ_{s<k} P[t, s] + Σ_{t≥k} v_t + Σ_{s<k} w_s + exp(total) ⟨D, S0⟩,
each sum over exactly its terms (a reversed cumulative sum down P's columns, then a masked row sum; a
reversed cumulative sum of v; a masked sum of w). Then dΔ_k gets A_h da_k and dA_h = Σ_k Δ_k da_k.

Lengths that are not a multiple of Q: positions past the end load as Δ = 0 and x = B = C = dy = 0, which
leaves the state unchanged (α = 1, no input), as the reference's padding does. The chunk is
min(chunk_size, 64): any chunk length gives the same result, and it keeps the (Q × Q) blocks small enough
for one GPU program's registers. Blocks are padded to at least 16 (tl.dot's minimum) and masked. Everything is computed
in fp32; on a GPU fp32 inputs multiply in full fp32 ("ieee"), bf16/fp16 inputs in tf32.

Shape glossary
  b  batch    l  length    h  heads    p  head dim    g  groups of B/C    n  state size
  Q  chunk length    c  number of chunks
  x, dy (b, l, h, p)   dt (b, l, h)   A (h)   B, C (b, l, g, n)   states (b, h, p, n), fp32
  per-chunk states (b, c, h, p, n), fp32
"""

import torch
import triton
import triton.language as tl

from kernels import DEVICES, DTYPES
from nanohybrid import ops

MAX_CHUNK = 64


@triton.jit
def _chunk_log_decay(dt_pointer, A_pointer, batch, head, chunk, length, heads, chunk_size, BLOCK_Q: tl.constexpr):
    """One chunk's positions (BLOCK_Q,), which are real, Δ, a = log α (0 past the end), cum (its cumulative
    sum from the chunk's start) and total (its sum)."""
    offsets = tl.arange(0, BLOCK_Q)
    positions = chunk * chunk_size + offsets
    valid = (offsets < chunk_size) & (positions < length)
    dt = tl.load(dt_pointer + (batch * length + positions) * heads + head, mask=valid, other=0.0).to(tl.float32)
    log_decay = dt * tl.load(A_pointer + head).to(tl.float32)  # log α = Δ A, 0 past the end
    return positions, valid, dt, log_decay, tl.cumsum(log_decay, 0), tl.sum(log_decay, 0)


@triton.jit
def _row_offsets(positions, valid, row_stride, width, BLOCK_WIDTH: tl.constexpr):
    """Offsets and mask of rows `positions`, row_stride apart, `width` columns wide: (BLOCK_Q, BLOCK_WIDTH)."""
    columns = tl.arange(0, BLOCK_WIDTH)
    return positions[:, None] * row_stride + columns[None, :], valid[:, None] & (columns < width)[None, :]


@triton.jit
def _load_rows(pointer, positions, valid, row_stride, width, BLOCK_WIDTH: tl.constexpr):
    offsets, mask = _row_offsets(positions, valid, row_stride, width, BLOCK_WIDTH)
    return tl.load(pointer + offsets, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _store_rows(pointer, value, positions, valid, row_stride, width, BLOCK_WIDTH: tl.constexpr):
    offsets, mask = _row_offsets(positions, valid, row_stride, width, BLOCK_WIDTH)
    tl.store(pointer + offsets, value, mask=mask)


@triton.jit
def _state_offsets(head_dim, state_size, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    """Offsets and mask of a (p, n) state: (BLOCK_P, BLOCK_N)."""
    rows, columns = tl.arange(0, BLOCK_P), tl.arange(0, BLOCK_N)
    return rows[:, None] * state_size + columns[None, :], (rows < head_dim)[:, None] & (columns < state_size)[None, :]


@triton.jit
def _decay_matrix(log_decay, BLOCK_Q: tl.constexpr):
    """L[t, s] = exp(Σ_{s<k≤t} a_k) = α_{s+1} ⋯ α_t for s ≤ t, 0 above the diagonal: (BLOCK_Q, BLOCK_Q).
    The segment sums are a cumulative sum down the columns of a_k masked to k > s (as segment_sum)."""
    rows, columns = tl.arange(0, BLOCK_Q)[:, None], tl.arange(0, BLOCK_Q)[None, :]
    segments = tl.cumsum(tl.where(rows > columns, log_decay[:, None], 0.0), 0)  # Σ_{s<k≤t} a_k at (t, s)
    return tl.where(rows >= columns, tl.exp(segments), 0.0)


@triton.jit
def _sums_to_end(log_decay, BLOCK_Q: tl.constexpr):
    """end_s = Σ_{k>s} a_k, the log decay from s to the chunk's end, (BLOCK_Q,); a_k = 0 past it."""
    rows, columns = tl.arange(0, BLOCK_Q)[:, None], tl.arange(0, BLOCK_Q)[None, :]
    return tl.sum(tl.where(columns > rows, log_decay[None, :], 0.0), 1)


@triton.jit
def _sums_before(values, BLOCK_Q: tl.constexpr):
    """Σ_{s<k} values_s for each k, (BLOCK_Q,)."""
    rows, columns = tl.arange(0, BLOCK_Q)[:, None], tl.arange(0, BLOCK_Q)[None, :]
    return tl.sum(tl.where(columns < rows, values[None, :], 0.0), 1)


@triton.jit
def _chunk_state_kernel(u_pointer, dt_pointer, A_pointer, v_pointer, out_pointer,
                        length, heads, head_dim, groups, state_size, chunk_size, n_chunks,
                        TO_CHUNK_END: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr,
                        BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Σ_t w_t u_t ⊗ v_t over one chunk, (p, n); grid (b·h, c).
    Forward (TO_CHUNK_END): u = x, v = B, w_t = Δ_t exp(end_t): the chunk's own end state (step 2).
    Backward: u = dy, v = C, w_t = exp(cum_t): what the chunk's outputs send back to the state it starts from."""
    batch_head, chunk = tl.program_id(0), tl.program_id(1)
    batch, head = batch_head // heads, batch_head % heads
    group = head // (heads // groups)
    positions, valid, dt, log_decay, cumulative, _ = _chunk_log_decay(dt_pointer, A_pointer, batch, head, chunk,
                                                                       length, heads, chunk_size, BLOCK_Q)
    u = _load_rows(u_pointer + (batch * length * heads + head) * head_dim, positions, valid, heads * head_dim,
                   head_dim, BLOCK_P)  # (Q, p)
    v = _load_rows(v_pointer + (batch * length * groups + group) * state_size, positions, valid, groups * state_size,
                   state_size, BLOCK_N)  # (Q, n)
    if TO_CHUNK_END:
        weight = dt * tl.exp(_sums_to_end(log_decay, BLOCK_Q))
    else:
        weight = tl.exp(cumulative)
    state = tl.dot(tl.trans(u * weight[:, None]), v, input_precision=DOT_PRECISION)  # (p, n)
    offsets, mask = _state_offsets(head_dim, state_size, BLOCK_P, BLOCK_N)
    chunk_state = ((batch * n_chunks + chunk) * heads + head) * head_dim * state_size
    tl.store(out_pointer + chunk_state + offsets, state, mask=mask)


@triton.jit
def _state_passing_kernel(increment_pointer, initial_pointer, dt_pointer, A_pointer, passed_pointer, final_pointer,
                          length, heads, state_numel, chunk_size, n_chunks,
                          REVERSE: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_STATE: tl.constexpr):
    """Step 3 for BLOCK_STATE entries of one (batch, head) state; grid (b·h, p·n / BLOCK_STATE).
    S ← exp(total_c) S + increment_c chunk after chunk, writing the S that chunk c starts from into passed[c].
    REVERSE goes from the last chunk to the first: the backward recurrence of the state gradient."""
    batch_head, block = tl.program_id(0), tl.program_id(1)
    batch, head = batch_head // heads, batch_head % heads
    entries = block * BLOCK_STATE + tl.arange(0, BLOCK_STATE)
    mask = entries < state_numel
    state = tl.load(initial_pointer + batch_head * state_numel + entries, mask=mask, other=0.0)
    for step in range(n_chunks):
        if REVERSE:
            chunk = n_chunks - 1 - step
        else:
            chunk = step
        _, _, _, _, _, total = _chunk_log_decay(dt_pointer, A_pointer, batch, head, chunk, length, heads,
                                                chunk_size, BLOCK_Q)
        chunk_offsets = ((batch * n_chunks + chunk) * heads + head) * state_numel + entries
        tl.store(passed_pointer + chunk_offsets, state, mask=mask)
        state = tl.exp(total) * state + tl.load(increment_pointer + chunk_offsets, mask=mask, other=0.0)
    tl.store(final_pointer + batch_head * state_numel + entries, state, mask=mask)


@triton.jit
def _chunk_output_kernel(x_pointer, dt_pointer, A_pointer, B_pointer, C_pointer, start_pointer, y_pointer,
                         length, heads, head_dim, groups, state_size, chunk_size, n_chunks,
                         BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
                         DOT_PRECISION: tl.constexpr):
    """Steps 1 and 4: y = (L ∘ C Bᵀ) X + exp(cum) ⊙ (C S0ᵀ) for one chunk; grid (b·h, c)."""
    batch_head, chunk = tl.program_id(0), tl.program_id(1)
    batch, head = batch_head // heads, batch_head % heads
    group = head // (heads // groups)
    positions, valid, dt, log_decay, cumulative, _ = _chunk_log_decay(dt_pointer, A_pointer, batch, head, chunk,
                                                                       length, heads, chunk_size, BLOCK_Q)
    head_rows = (batch * length * heads + head) * head_dim  # where this head's x and y start
    group_rows = (batch * length * groups + group) * state_size  # where its group's B and C start
    x = _load_rows(x_pointer + head_rows, positions, valid, heads * head_dim, head_dim, BLOCK_P)  # (Q, p)
    B = _load_rows(B_pointer + group_rows, positions, valid, groups * state_size, state_size, BLOCK_N)  # (Q, n)
    C = _load_rows(C_pointer + group_rows, positions, valid, groups * state_size, state_size, BLOCK_N)  # (Q, n)
    offsets, mask = _state_offsets(head_dim, state_size, BLOCK_P, BLOCK_N)
    start = tl.load(start_pointer + ((batch * n_chunks + chunk) * heads + head) * head_dim * state_size + offsets,
                    mask=mask, other=0.0)  # S0, (p, n)

    scores = tl.dot(C, tl.trans(B), input_precision=DOT_PRECISION) * _decay_matrix(log_decay, BLOCK_Q)  # (Q, Q)
    y = tl.dot(scores, x * dt[:, None], input_precision=DOT_PRECISION)  # inside the chunk, (Q, p)
    y += tl.exp(cumulative)[:, None] * tl.dot(C, tl.trans(start), input_precision=DOT_PRECISION)  # from S0
    _store_rows(y_pointer + head_rows, y, positions, valid, heads * head_dim, head_dim, BLOCK_P)


@triton.jit
def _chunk_backward_kernel(x_pointer, dt_pointer, A_pointer, B_pointer, C_pointer, dy_pointer, start_pointer,
                           end_gradient_pointer, dx_pointer, ddt_pointer, dB_pointer, dC_pointer, dA_pointer,
                           length, heads, head_dim, groups, state_size, chunk_size, n_chunks,
                           BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
                           DOT_PRECISION: tl.constexpr):
    """The gradients of one chunk (module docstring); grid (b·h, c). dB and dC are written per head
    (b, l, h, n), dA per chunk (b, h, c); the caller sums them."""
    batch_head, chunk = tl.program_id(0), tl.program_id(1)
    batch, head = batch_head // heads, batch_head % heads
    group = head // (heads // groups)
    positions, valid, dt, log_decay, cumulative, total = _chunk_log_decay(dt_pointer, A_pointer, batch, head, chunk,
                                                                           length, heads, chunk_size, BLOCK_Q)
    head_rows = (batch * length * heads + head) * head_dim
    group_rows = (batch * length * groups + group) * state_size
    x = _load_rows(x_pointer + head_rows, positions, valid, heads * head_dim, head_dim, BLOCK_P)  # (Q, p)
    dy = _load_rows(dy_pointer + head_rows, positions, valid, heads * head_dim, head_dim, BLOCK_P)  # (Q, p)
    B = _load_rows(B_pointer + group_rows, positions, valid, groups * state_size, state_size, BLOCK_N)  # (Q, n)
    C = _load_rows(C_pointer + group_rows, positions, valid, groups * state_size, state_size, BLOCK_N)  # (Q, n)
    offsets, mask = _state_offsets(head_dim, state_size, BLOCK_P, BLOCK_N)
    state_offsets = ((batch * n_chunks + chunk) * heads + head) * head_dim * state_size + offsets
    start = tl.load(start_pointer + state_offsets, mask=mask, other=0.0)  # S0, (p, n)
    end_gradient = tl.load(end_gradient_pointer + state_offsets, mask=mask, other=0.0)  # D, (p, n)

    dt_x = x * dt[:, None]  # X, (Q, p)
    decay = _decay_matrix(log_decay, BLOCK_Q)  # L, (Q, Q)
    scores = tl.dot(C, tl.trans(B), input_precision=DOT_PRECISION) * decay  # M = L ∘ C Bᵀ
    dy_dot_x = tl.dot(dy, tl.trans(dt_x), input_precision=DOT_PRECISION)  # dy Xᵀ, (Q, Q)
    to_end = tl.exp(_sums_to_end(log_decay, BLOCK_Q))[:, None]  # exp(end_s), (Q, 1)
    from_start = tl.exp(cumulative)[:, None]

    dX_from_end = to_end * tl.dot(B, tl.trans(end_gradient), input_precision=DOT_PRECISION)  # (Q, p)
    dX = tl.dot(tl.trans(scores), dy, input_precision=DOT_PRECISION) + dX_from_end
    dB = tl.dot(tl.trans(dy_dot_x * decay), C, input_precision=DOT_PRECISION)
    dB += to_end * tl.dot(dt_x, end_gradient, input_precision=DOT_PRECISION)  # (Q, n)
    dC_from_start = from_start * tl.dot(dy, start, input_precision=DOT_PRECISION)  # (Q, n)
    dC = tl.dot(dy_dot_x * decay, B, input_precision=DOT_PRECISION) + dC_from_start

    pulls = scores * dy_dot_x  # P, (Q, Q)
    rows, columns = tl.arange(0, BLOCK_Q)[:, None], tl.arange(0, BLOCK_Q)[None, :]
    from_segments = tl.sum(tl.where(columns < rows, tl.cumsum(pulls, 0, reverse=True), 0.0), 1)  # Σ_{t≥k} Σ_{s<k} P
    from_readout = tl.cumsum(tl.sum(C * dC_from_start, 1), 0, reverse=True)  # Σ_{t≥k} v_t
    from_chunk_state = _sums_before(tl.sum(dt_x * dX_from_end, 1), BLOCK_Q)  # Σ_{s<k} w_s
    from_passing = tl.exp(total) * tl.sum(end_gradient * start)  # exp(total) ⟨D, S0⟩
    d_log_decay = from_segments + from_readout + from_chunk_state + from_passing  # da, (Q,)
    A = tl.load(A_pointer + head).to(tl.float32)

    _store_rows(dx_pointer + head_rows, dX * dt[:, None], positions, valid, heads * head_dim, head_dim, BLOCK_P)
    tl.store(ddt_pointer + (batch * length + positions) * heads + head, tl.sum(dX * x, 1) + d_log_decay * A,
             mask=valid)
    per_head_rows = (batch * length * heads + head) * state_size
    _store_rows(dB_pointer + per_head_rows, dB, positions, valid, heads * state_size, state_size, BLOCK_N)
    _store_rows(dC_pointer + per_head_rows, dC, positions, valid, heads * state_size, state_size, BLOCK_N)
    tl.store(dA_pointer + batch_head * n_chunks + chunk, tl.sum(d_log_decay * dt, 0))


def _blocks(x: torch.Tensor, chunk: int, head_dim: int, state_size: int) -> dict:
    """Block sizes (powers of two, at least 16 for tl.dot) and the tl.dot precision for x's dtype."""
    return {"BLOCK_Q": max(16, triton.next_power_of_2(chunk)), "BLOCK_P": max(16, triton.next_power_of_2(head_dim)),
            "BLOCK_N": max(16, triton.next_power_of_2(state_size)),
            "DOT_PRECISION": "ieee" if x.dtype == torch.float32 else "tf32"}


def _pass_states(increments, initial, dt, A, dims, BLOCK_Q, reverse):
    """Step 3 over all (batch, head) states: -> the state each chunk starts from (b, c, h, p, n), the last one."""
    batch, n_chunks, heads, head_dim, state_size = increments.shape
    length, chunk = dims[0], dims[5]
    passed, final = torch.empty_like(increments), torch.empty_like(initial)
    BLOCK_STATE = 256
    grid = (batch * heads, triton.cdiv(head_dim * state_size, BLOCK_STATE))
    _state_passing_kernel[grid](increments, initial, dt, A, passed, final, length, heads, head_dim * state_size, chunk,
                                n_chunks, REVERSE=reverse, BLOCK_Q=BLOCK_Q, BLOCK_STATE=BLOCK_STATE)
    return passed, final


class ChunkedSSD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, B, C, chunk_size, initial_state):
        x, dt, A, B, C = (t.contiguous() for t in (x, dt, A, B, C))
        batch, length, heads, head_dim = x.shape
        groups, state_size = B.shape[2:]
        chunk = min(chunk_size, length, MAX_CHUNK)
        n_chunks = triton.cdiv(length, chunk)
        dims = (length, heads, head_dim, groups, state_size, chunk, n_chunks)
        blocks = _blocks(x, chunk, head_dim, state_size)
        grid = (batch * heads, n_chunks)
        if initial_state is None:
            initial = x.new_zeros(batch, heads, head_dim, state_size, dtype=torch.float32)
        else:
            initial = initial_state.float().contiguous()

        chunk_states = torch.empty(batch, n_chunks, heads, head_dim, state_size, device=x.device)
        _chunk_state_kernel[grid](x, dt, A, B, chunk_states, *dims, TO_CHUNK_END=True, **blocks)
        starts, final = _pass_states(chunk_states, initial, dt, A, dims, blocks["BLOCK_Q"], reverse=False)
        y = torch.empty_like(x)
        _chunk_output_kernel[grid](x, dt, A, B, C, starts, y, *dims, **blocks)

        ctx.save_for_backward(x, dt, A, B, C, starts)
        ctx.dims, ctx.blocks = dims, blocks
        ctx.initial_dtype = None if initial_state is None else initial_state.dtype
        return y, final

    @staticmethod
    def backward(ctx, dy, d_final):
        x, dt, A, B, C, starts = ctx.saved_tensors
        dims, blocks = ctx.dims, ctx.blocks
        batch, length, heads, _ = x.shape
        groups, state_size, n_chunks = dims[3], dims[4], dims[6]
        grid = (batch * heads, n_chunks)
        dy, d_final = dy.contiguous(), d_final.float().contiguous()

        readouts = torch.empty_like(starts)  # Σ_t exp(cum_t) dy_t ⊗ C_t per chunk
        _chunk_state_kernel[grid](dy, dt, A, C, readouts, *dims, TO_CHUNK_END=False, **blocks)
        end_gradients, d_initial = _pass_states(readouts, d_final, dt, A, dims, blocks["BLOCK_Q"], reverse=True)

        dx, ddt = torch.empty_like(x), torch.empty_like(dt)
        dB_per_head = torch.empty(batch, length, heads, state_size, device=x.device)
        dC_per_head = torch.empty_like(dB_per_head)
        dA_per_chunk = torch.empty(batch, heads, n_chunks, device=x.device)
        _chunk_backward_kernel[grid](x, dt, A, B, C, dy, starts, end_gradients, dx, ddt, dB_per_head, dC_per_head,
                                     dA_per_chunk, *dims, **blocks)
        # B and C are shared by the heads of a group: their gradients add up.
        dB = dB_per_head.unflatten(2, (groups, heads // groups)).sum(3).to(B.dtype)
        dC = dC_per_head.unflatten(2, (groups, heads // groups)).sum(3).to(C.dtype)
        dA = dA_per_chunk.sum((0, 2)).to(A.dtype)
        d_initial = None if ctx.initial_dtype is None else d_initial.to(ctx.initial_dtype)
        return dx, ddt, dA, dB, dC, None, d_initial


@ops.register("ssd", "triton", devices=DEVICES, dtypes=DTYPES)
def ssd_chunked(x, dt, A, B, C, chunk_size, initial_state=None):
    """Same as nanohybrid.ssd.ssd_chunked: y (b, l, h, p) in x's dtype and the final state (b, h, p, n) in fp32."""
    return ChunkedSSD.apply(x, dt, A, B, C, chunk_size, initial_state)
