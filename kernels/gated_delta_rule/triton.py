"""The gated delta rule, chunked, as Triton kernels with a hand-written backward pass.

References: Yang, Kautz & Hatamizadeh 2024, "Gated Delta Networks" (arXiv 2412.06464), §3; the chunked form
of Yang et al. 2024 (arXiv 2406.06484), §3; the readable version is nanohybrid/delta_rule.py. Per head,

    S_t = α_t (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,   o_t = S_tᵀ q_t,   α_t = exp(g_t).

One program per (batch, head) holds the (d_k × d_v) state in registers and walks the chunks of C positions
(_forward_kernel). Inside a chunk, with S the state at its start, Γ[t, s] = exp(Σ_{s<j≤t} g_j) for s ≤ t
(else 0), γ_t = exp(Σ_{j≤t} g_j), e_s = exp(Σ_{j>s} g_j) and γ_C = exp(Σ_j g_j):

    A = strictly_lower(β ⊙ (K Kᵀ ∘ Γ))      T = (I + A)⁻¹, by forward substitution (_ut_inverse)
    W = T (β γ ⊙ K)     U = T (β ⊙ V) − W S     P = Q Kᵀ ∘ Γ
    O = γ ⊙ (Q S) + P U                      S ← γ_C S + (e ⊙ K)ᵀ U

The forward writes the state each chunk starts from; the backward (_backward_kernel), the same programs
walking the chunks from the last to the first, reloads it, recomputes the chunk's A, T, W, U and P, and
carries D = ∂L/∂(the chunk's end state), from d(final state) (kernels/gated_delta_rule/cpu.py derives it):

    dU = Pᵀ dO + (e ⊙ K) D          dP = lower(dO Uᵀ)          dR_v = Tᵀ dU      dR_k = −dR_v Sᵀ
    dA = −strictly_lower(dR_v Uᵀ)   E = β ⊙ (dA ∘ Γ)
    dQ = (dP ∘ Γ) K + γ ⊙ (dO Sᵀ)   dK = (dP ∘ Γ)ᵀ Q + e ⊙ (U Dᵀ) + β γ ⊙ dR_k + (E + Eᵀ) K     dV = β ⊙ dR_v
    dβ = Σ_v V ⊙ dR_v + γ Σ_k K ⊙ dR_k + Σ_s (dA ∘ Γ ∘ K Kᵀ)[·, s]
    D ← γ_C D + Qᵀ (γ ⊙ dO) − Wᵀ dU   (the gradient of the state the chunk starts from)

and the decays' gradient, each exponent passing it to the g's it sums: G = dP ∘ P + β ⊙ (dA ∘ Γ ∘ K Kᵀ),
plus e ⊙ Σ_k K ⊙ (U Dᵀ) in the last row (e is Γ's last row), for the segments; c = γ ⊙ (Σ_k Q ⊙ (dO Sᵀ) +
β Σ_k K ⊙ dR_k), plus γ_C ⟨D, S⟩ at the last position, for the cumulative sums:

    dg_j = Σ_{t≥j} Σ_{s<j} G[t, s] + Σ_{t≥j} c_t     (a reversed cumulative sum down G's columns, a masked row sum)

The D left after the first chunk is d(initial state). Every exponent is a sum of exactly its own g's, never
a difference of cumulative sums (nanohybrid/delta_rule.py). Positions past the end load as zeros (g = 0,
β = 0: the state is left as it is), as the reference's padding does. The chunk is min(chunk_size, 64): any
chunk length gives the same result. Blocks are padded to at least 16 (tl.dot's minimum) and masked.
Everything is computed in fp32; on a GPU fp32 inputs multiply in full fp32 ("ieee"), bf16/fp16 in tf32.

Shape glossary
  b batch   l length   h heads   d_k key (and query) head dim   d_v value head dim   C chunk length   c chunks
  q, k, dq, dk (b, l, h, d_k)   v, o, do, dv (b, l, h, d_v)   g, beta (b, l, h)
  states (b, h, d_k, d_v), fp32   the chunks' start states (b, h, c, d_k, d_v), fp32
"""

import torch
import triton
import triton.language as tl

from kernels import DEVICES, DTYPES
from kernels.ssd.triton import _decay_matrix, _load_rows, _state_offsets, _store_rows, _sums_to_end
from nanohybrid import ops

MAX_CHUNK = 64


@triton.jit
def _ut_inverse(A, BLOCK_C: tl.constexpr):
    """T = (I + A)⁻¹ for A strictly lower triangular, (BLOCK_C, BLOCK_C): forward substitution, row i of
    (I + A) T = I giving T_i = e_i − Σ_{j<i} A[i, j] T_j from the rows above it."""
    rows, columns = tl.arange(0, BLOCK_C)[:, None], tl.arange(0, BLOCK_C)[None, :]
    inverse = tl.where(rows == columns, 1.0, 0.0)
    for i in range(1, BLOCK_C):
        row = tl.sum(tl.where(rows == i, A, 0.0), 0)  # A[i, :], which is 0 from column i on
        inverse = tl.where(rows == i, inverse - tl.sum(row[:, None] * inverse, 0)[None, :], inverse)
    return inverse


@triton.jit
def _load_chunk(q_pointer, k_pointer, v_pointer, g_pointer, beta_pointer, batch, head, chunk, length, heads, d_k, d_v,
                chunk_size, BLOCK_C: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr):
    """One chunk's positions, which are real, and q, k (C, d_k), v (C, d_v), g, β (C,) in fp32, zeros past the end."""
    offsets = tl.arange(0, BLOCK_C)
    positions = chunk * chunk_size + offsets
    valid = (offsets < chunk_size) & (positions < length)
    key_rows, value_rows = (batch * length * heads + head) * d_k, (batch * length * heads + head) * d_v
    q = _load_rows(q_pointer + key_rows, positions, valid, heads * d_k, d_k, BLOCK_DK)
    k = _load_rows(k_pointer + key_rows, positions, valid, heads * d_k, d_k, BLOCK_DK)
    v = _load_rows(v_pointer + value_rows, positions, valid, heads * d_v, d_v, BLOCK_DV)
    scalars = (batch * length + positions) * heads + head
    g = tl.load(g_pointer + scalars, mask=valid, other=0.0).to(tl.float32)
    beta = tl.load(beta_pointer + scalars, mask=valid, other=0.0).to(tl.float32)
    return positions, valid, q, k, v, g, beta


@triton.jit
def _chunk_forward(q, k, v, g, beta, state, BLOCK_C: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """A chunk's Γ, γ, e, γ_C, K Kᵀ, T, W, U, P (module docstring), from the state S it starts from."""
    rows, columns = tl.arange(0, BLOCK_C)[:, None], tl.arange(0, BLOCK_C)[None, :]
    decay_ratio = _decay_matrix(g, BLOCK_C)  # Γ
    from_start = tl.exp(tl.cumsum(g, 0))  # γ
    to_end = tl.exp(_sums_to_end(g, BLOCK_C))  # e
    total = tl.exp(tl.sum(g, 0))  # γ_C
    key_products = tl.dot(k, tl.trans(k), input_precision=DOT_PRECISION)  # K Kᵀ
    inverse = _ut_inverse(tl.where(rows > columns, beta[:, None] * key_products * decay_ratio, 0.0), BLOCK_C)
    w = tl.dot(inverse, k * (beta * from_start)[:, None], input_precision=DOT_PRECISION)  # (C, d_k)
    u = tl.dot(inverse, v * beta[:, None], input_precision=DOT_PRECISION)
    u -= tl.dot(w, state, input_precision=DOT_PRECISION)  # (C, d_v)
    scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * decay_ratio  # P
    return decay_ratio, from_start, to_end, total, key_products, inverse, w, u, scores


@triton.jit
def _forward_kernel(q_pointer, k_pointer, v_pointer, g_pointer, beta_pointer, initial_pointer, o_pointer,
                    starts_pointer, final_pointer, length, heads, d_k, d_v, chunk_size, n_chunks,
                    BLOCK_C: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
                    DOT_PRECISION: tl.constexpr):
    """Program (batch · h + head): O for every chunk, each chunk's start state into `starts`, the final state."""
    batch_head = tl.program_id(0)
    batch, head = batch_head // heads, batch_head % heads
    offsets, mask = _state_offsets(d_k, d_v, BLOCK_DK, BLOCK_DV)
    state = tl.load(initial_pointer + batch_head * d_k * d_v + offsets, mask=mask, other=0.0)  # S, (d_k, d_v)
    for chunk in range(n_chunks):
        positions, valid, q, k, v, g, beta = _load_chunk(q_pointer, k_pointer, v_pointer, g_pointer, beta_pointer,
                                                         batch, head, chunk, length, heads, d_k, d_v, chunk_size,
                                                         BLOCK_C, BLOCK_DK, BLOCK_DV)
        _, from_start, to_end, total, _, _, _, u, scores = _chunk_forward(q, k, v, g, beta, state, BLOCK_C,
                                                                          DOT_PRECISION)
        o = from_start[:, None] * tl.dot(q, state, input_precision=DOT_PRECISION)
        o += tl.dot(scores, u, input_precision=DOT_PRECISION)
        _store_rows(o_pointer + (batch * length * heads + head) * d_v, o, positions, valid, heads * d_v, d_v,
                    BLOCK_DV)
        tl.store(starts_pointer + (batch_head * n_chunks + chunk) * d_k * d_v + offsets, state, mask=mask)
        state = total * state + tl.dot(tl.trans(k * to_end[:, None]), u, input_precision=DOT_PRECISION)
    tl.store(final_pointer + batch_head * d_k * d_v + offsets, state, mask=mask)


@triton.jit
def _backward_kernel(q_pointer, k_pointer, v_pointer, g_pointer, beta_pointer, do_pointer, starts_pointer,
                     d_final_pointer, dq_pointer, dk_pointer, dv_pointer, dg_pointer, dbeta_pointer, d_initial_pointer,
                     length, heads, d_k, d_v, chunk_size, n_chunks, BLOCK_C: tl.constexpr, BLOCK_DK: tl.constexpr,
                     BLOCK_DV: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Program (batch · h + head): every input's gradient, chunk by chunk from the last (module docstring)."""
    batch_head = tl.program_id(0)
    batch, head = batch_head // heads, batch_head % heads
    rows, columns = tl.arange(0, BLOCK_C)[:, None], tl.arange(0, BLOCK_C)[None, :]
    last = tl.arange(0, BLOCK_C) == BLOCK_C - 1  # the chunk's end (past the length, g = 0 leaves it unchanged)
    offsets, mask = _state_offsets(d_k, d_v, BLOCK_DK, BLOCK_DV)
    grad_state = tl.load(d_final_pointer + batch_head * d_k * d_v + offsets, mask=mask, other=0.0)  # D
    key_rows, value_rows = (batch * length * heads + head) * d_k, (batch * length * heads + head) * d_v
    for step in range(n_chunks):
        chunk = n_chunks - 1 - step
        positions, valid, q, k, v, g, beta = _load_chunk(q_pointer, k_pointer, v_pointer, g_pointer, beta_pointer,
                                                         batch, head, chunk, length, heads, d_k, d_v, chunk_size,
                                                         BLOCK_C, BLOCK_DK, BLOCK_DV)
        do = _load_rows(do_pointer + value_rows, positions, valid, heads * d_v, d_v, BLOCK_DV)
        state = tl.load(starts_pointer + (batch_head * n_chunks + chunk) * d_k * d_v + offsets, mask=mask, other=0.0)
        decay_ratio, from_start, to_end, total, key_products, inverse, w, u, scores = _chunk_forward(
            q, k, v, g, beta, state, BLOCK_C, DOT_PRECISION)

        grad_u = tl.dot(tl.trans(scores), do, input_precision=DOT_PRECISION)
        grad_u += tl.dot(k * to_end[:, None], grad_state, input_precision=DOT_PRECISION)  # dU
        grad_scores = tl.where(rows >= columns, tl.dot(do, tl.trans(u), input_precision=DOT_PRECISION), 0.0)  # dP
        grad_qk = grad_scores * decay_ratio
        from_state = tl.dot(do, tl.trans(state), input_precision=DOT_PRECISION)  # dO Sᵀ, (C, d_k)
        u_end = tl.dot(u, tl.trans(grad_state), input_precision=DOT_PRECISION)  # U Dᵀ, (C, d_k)
        grad_rhs_v = tl.dot(tl.trans(inverse), grad_u, input_precision=DOT_PRECISION)  # dR_v = Tᵀ dU
        grad_rhs_k = -tl.dot(grad_rhs_v, tl.trans(state), input_precision=DOT_PRECISION)  # dR_k = −dR_v Sᵀ
        grad_A = -tl.dot(grad_rhs_v, tl.trans(u), input_precision=DOT_PRECISION)
        masked = tl.where(rows > columns, grad_A * decay_ratio, 0.0)  # dA ∘ Γ
        pulls = masked * key_products  # dA ∘ Γ ∘ K Kᵀ
        weighted = beta[:, None] * masked  # E

        grad_q = tl.dot(grad_qk, k, input_precision=DOT_PRECISION) + from_start[:, None] * from_state
        grad_k = tl.dot(tl.trans(grad_qk), q, input_precision=DOT_PRECISION) + to_end[:, None] * u_end
        grad_k += (beta * from_start)[:, None] * grad_rhs_k
        grad_k += tl.dot(weighted + tl.trans(weighted), k, input_precision=DOT_PRECISION)
        keys_rhs = tl.sum(k * grad_rhs_k, 1)  # Σ_k K ⊙ dR_k
        grad_beta = tl.sum(v * grad_rhs_v, 1) + from_start * keys_rhs + tl.sum(pulls, 1)
        grad_segments = grad_scores * scores + beta[:, None] * pulls  # G
        grad_segments += tl.where(rows == BLOCK_C - 1, (to_end * tl.sum(k * u_end, 1))[None, :], 0.0)
        grad_cumulative = from_start * (tl.sum(q * from_state, 1) + beta * keys_rhs)  # c
        grad_cumulative += tl.where(last, total * tl.sum(grad_state * state), 0.0)
        grad_g = tl.sum(tl.where(columns < rows, tl.cumsum(grad_segments, 0, reverse=True), 0.0), 1)
        grad_g += tl.cumsum(grad_cumulative, 0, reverse=True)

        _store_rows(dq_pointer + key_rows, grad_q, positions, valid, heads * d_k, d_k, BLOCK_DK)
        _store_rows(dk_pointer + key_rows, grad_k, positions, valid, heads * d_k, d_k, BLOCK_DK)
        _store_rows(dv_pointer + value_rows, beta[:, None] * grad_rhs_v, positions, valid, heads * d_v, d_v, BLOCK_DV)
        scalars = (batch * length + positions) * heads + head
        tl.store(dg_pointer + scalars, grad_g, mask=valid)
        tl.store(dbeta_pointer + scalars, grad_beta, mask=valid)
        grad_state = (total * grad_state + tl.dot(tl.trans(q * from_start[:, None]), do, input_precision=DOT_PRECISION)
                      - tl.dot(tl.trans(w), grad_u, input_precision=DOT_PRECISION))
    tl.store(d_initial_pointer + batch_head * d_k * d_v + offsets, grad_state, mask=mask)


class ChunkedGatedDeltaRule(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, beta, chunk_size, initial_state):
        q, k, v, g, beta = (t.contiguous() for t in (q, k, v, g, beta))
        batch, length, heads, d_k = q.shape
        d_v = v.shape[-1]
        chunk = min(chunk_size, length, MAX_CHUNK)
        n_chunks = triton.cdiv(length, chunk)
        dims = (length, heads, d_k, d_v, chunk, n_chunks)
        blocks = {"BLOCK_C": max(16, triton.next_power_of_2(chunk)), "BLOCK_DK": max(16, triton.next_power_of_2(d_k)),
                  "BLOCK_DV": max(16, triton.next_power_of_2(d_v)),
                  "DOT_PRECISION": "ieee" if v.dtype == torch.float32 else "tf32"}
        if initial_state is None:
            initial = q.new_zeros(batch, heads, d_k, d_v, dtype=torch.float32)
        else:
            initial = initial_state.float().contiguous()
        o = torch.empty_like(v)
        starts = torch.empty(batch, heads, n_chunks, d_k, d_v, device=q.device)
        final = torch.empty_like(initial)
        _forward_kernel[(batch * heads,)](q, k, v, g, beta, initial, o, starts, final, *dims, **blocks)
        ctx.save_for_backward(q, k, v, g, beta, starts)
        ctx.dims, ctx.blocks, ctx.initial_dtype = dims, blocks, getattr(initial_state, "dtype", None)
        return o, final

    @staticmethod
    def backward(ctx, do, d_final):
        q, k, v, g, beta, starts = ctx.saved_tensors
        do, d_final = do.contiguous(), d_final.float().contiguous()
        dq, dk, dv, dg, dbeta = (torch.empty_like(t) for t in (q, k, v, g, beta))
        d_initial = torch.empty_like(d_final)
        _backward_kernel[(q.shape[0] * q.shape[2],)](q, k, v, g, beta, do, starts, d_final, dq, dk, dv, dg, dbeta,
                                                     d_initial, *ctx.dims, **ctx.blocks)
        d_initial = None if ctx.initial_dtype is None else d_initial.to(ctx.initial_dtype)
        return dq, dk, dv, dg, dbeta, None, d_initial


@ops.register("gated_delta_rule", "triton", devices=DEVICES, dtypes=DTYPES)
def gated_delta_rule(q, k, v, g, beta, chunk_size, initial_state=None):
    """Same as nanohybrid.delta_rule.gated_delta_rule: o (b, l, h, d_v) in v's dtype and the final state
    (b, h, d_k, d_v) in fp32."""
    return ChunkedGatedDeltaRule.apply(q, k, v, g, beta, chunk_size, initial_state)
