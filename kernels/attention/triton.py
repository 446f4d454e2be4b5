"""Masked softmax attention as FlashAttention-style Triton kernels, with a hand-written backward pass.

References: Dao et al. 2022, "FlashAttention" (arXiv 2205.14135), and Dao 2023, "FlashAttention-2"
(arXiv 2307.08691), Algorithms 1 and 2; the readable version is nanohybrid/attention.py::attention.
Per batch row and query head, with scores s_ij = scale · q_i·k_j where key j is visible to query i
(−∞ where it is not):

    P_ij = exp(s_ij − L_i),    L_i = log Σ_j exp(s_ij)  (the row's log-sum-exp),    o_i = Σ_j P_ij v_j

The mask is built inside the kernels, one tile (BLOCK_M queries × BLOCK_N keys) at a time, from the
stream indices and documents; no (l, s) mask ever exists in memory. Key j is visible to query i when

    key ≤ query   and   (same document or key < n_meta)
                  and   (no window or query − key ≤ max_distance or key < n_meta)

Indices are compared in int64: a cache slot never written holds EMPTY = int64 max, later than every
query. The window test is written query − max_distance ≤ key, which cannot overflow.

Forward (_forward_kernel), a program per (query block, batch · head), walks the key blocks keeping, per
query row, the running max m of its scores, the running sum ℓ of exp(s − m) and the unnormalised output
acc (the online softmax). A key block with scores s and new max m' = max(m, rowmax s) does

    ℓ ← exp(m − m') ℓ + Σ_j exp(s_j − m'),    acc ← exp(m − m') acc + exp(s − m') V,    m ← m'

and at the end o = acc / ℓ and L = m + log ℓ, which the backward keeps. While a row has seen no visible
key, m' = −∞: it subtracts 0 instead, so exp(−∞ − 0) = 0 and nothing becomes NaN. A row that never sees
a key (impossible with these masks: a query sees itself) would end with ℓ = 0: it gets o = 0, L = 0.

Backward (FlashAttention-2). With dO the gradient of O and D_i = dO_i · o_i (computed first, in PyTorch),
P is recomputed tile by tile from L, and

    dV = Pᵀ dO,    dP = dO Vᵀ,    dS = P ∘ (dP − D),    dQ = scale · dS K,    dK = scale · dSᵀ Q

_key_value_backward_kernel, a program per (key block, batch · kv head), loops over the query blocks and,
for each, over the query heads of its group (GQA: query head j uses kv head j // (h / h_kv)); dK and dV
of the shared kv head are summed in registers, without atomics. _query_backward_kernel, a program per
(query block, batch · head), loops over the key blocks.

Skipping tiles. Indices are arbitrary (a ring buffer's slots are out of order), so a tile is skipped on
the index values just loaded, never on block numbers. Let q_lo, q_hi be the least and greatest index of
the tile's real queries and k_lo, k_hi those of its real keys. A visible pair (q, k) needs k ≤ q, hence
k_lo ≤ k ≤ q ≤ q_hi; and in a window either k < n_meta, hence k_lo < n_meta, or k ≥ q − max_distance,
hence k_hi ≥ q_lo − max_distance. A tile failing these tests (_tile_may_see) has no visible pair: all its
probabilities are 0, so skipping it changes nothing. Causal prefill skips the tiles above the diagonal;
a window also skips those far below it.

Lengths that are not a multiple of a block are masked; head dims are padded to a power of two ≥ 16
(tl.dot's minimum) and masked. Everything is computed in fp32; on a GPU fp32 inputs multiply in full
fp32 ("ieee"), bf16/fp16 inputs in tf32.

Shape glossary
  b batch   h query heads   h_kv key/value heads   l queries   s keys   hd query/key head dim
  hd_v value head dim   BLOCK_M queries per tile   BLOCK_N keys per tile
  q, dq (b, h, l, hd)   o, do (b, h, l, hd_v)   k, dk (b, h_kv, s, hd)   v, dv (b, h_kv, s, hd_v)
  query_index, query_document (b, l), key_index, key_document (b, s), int64   L, D (b, h, l), fp32
"""

import torch
import triton
import triton.language as tl

from kernels import DEVICES, DTYPES
from nanohybrid import ops

BLOCK_M = 32  # queries per tile
BLOCK_N = 32  # keys per tile
INDEX_MAX = tl.constexpr(torch.iinfo(torch.int64).max)


@triton.jit
def _load_rows(pointer, rows, valid, width, BLOCK_WIDTH: tl.constexpr):
    """Rows `rows` of a contiguous (·, width) matrix, in fp32, zero where masked: (len(rows), BLOCK_WIDTH)."""
    columns = tl.arange(0, BLOCK_WIDTH)
    mask = valid[:, None] & (columns < width)[None, :]
    return tl.load(pointer + rows[:, None] * width + columns[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _store_rows(pointer, value, rows, valid, width, BLOCK_WIDTH: tl.constexpr):
    columns = tl.arange(0, BLOCK_WIDTH)
    mask = valid[:, None] & (columns < width)[None, :]
    tl.store(pointer + rows[:, None] * width + columns[None, :], value, mask=mask)


@triton.jit
def _load_positions(index_pointer, document_pointer, rows, valid):
    """Stream indices and documents (int64) of `rows`, and the least and greatest index of the real ones."""
    index = tl.load(index_pointer + rows, mask=valid, other=0)
    document = tl.load(document_pointer + rows, mask=valid, other=0)
    lowest = tl.min(tl.where(valid, index, INDEX_MAX), 0)
    highest = tl.max(tl.where(valid, index, -INDEX_MAX), 0)
    return index, document, lowest, highest


@triton.jit
def _tile_may_see(query_lowest, query_highest, key_lowest, key_highest, max_distance, n_meta, WINDOWED: tl.constexpr):
    """False only when no query of the tile can see any of its keys (module docstring, "Skipping tiles")."""
    may_see = key_lowest <= query_highest
    if WINDOWED:
        may_see = may_see & ((key_lowest < n_meta) | (query_lowest - max_distance <= key_highest))
    return may_see


@triton.jit
def _visible(query_index, query_document, query_valid, key_index, key_document, key_valid, max_distance, n_meta,
             WINDOWED: tl.constexpr):
    """The mask of one tile, True where the key is visible to the query: (BLOCK_M, BLOCK_N)."""
    query, key = query_index[:, None], key_index[None, :]
    meta = key < n_meta
    visible = (key <= query) & ((query_document[:, None] == key_document[None, :]) | meta)
    if WINDOWED:
        visible = visible & ((query - max_distance <= key) | meta)
    return visible & query_valid[:, None] & key_valid[None, :]


@triton.jit
def _probabilities(q, k, log_sum_exp, visible, scale, DOT_PRECISION: tl.constexpr):
    """P = exp(scale · q kᵀ − L) where visible, else 0: (BLOCK_M, BLOCK_N)."""
    scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale
    return tl.where(visible, tl.exp(scores - log_sum_exp[:, None]), 0.0)


@triton.jit
def _forward_kernel(q_pointer, k_pointer, v_pointer, query_index_pointer, key_index_pointer, query_document_pointer,
                    key_document_pointer, out_pointer, log_sum_exp_pointer,
                    heads, kv_heads, n_queries, n_keys, head_dim, value_dim, max_distance, n_meta, scale,
                    WINDOWED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                    BLOCK_DV: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """One query block of one (batch, head): the online softmax over every key block; grid (l / BLOCK_M, b·h)."""
    block, batch_head = tl.program_id(0), tl.program_id(1)
    batch, head = batch_head // heads, batch_head % heads
    batch_kv_head = batch * kv_heads + head // (heads // kv_heads)
    queries = block * BLOCK_M + tl.arange(0, BLOCK_M)
    query_valid = queries < n_queries
    query_index, query_document, query_lowest, query_highest = _load_positions(
        query_index_pointer + batch * n_queries, query_document_pointer + batch * n_queries, queries, query_valid)
    q = _load_rows(q_pointer + batch_head * n_queries * head_dim, queries, query_valid, head_dim, BLOCK_D)  # (M, hd)

    row_max = tl.full((BLOCK_M,), float("-inf"), tl.float32)  # m
    row_sum = tl.zeros((BLOCK_M,), tl.float32)  # ℓ
    acc = tl.zeros((BLOCK_M, BLOCK_DV), tl.float32)  # Σ_j exp(s_j − m) v_j
    for start in range(0, n_keys, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        key_valid = keys < n_keys
        key_index, key_document, key_lowest, key_highest = _load_positions(
            key_index_pointer + batch * n_keys, key_document_pointer + batch * n_keys, keys, key_valid)
        if _tile_may_see(query_lowest, query_highest, key_lowest, key_highest, max_distance, n_meta, WINDOWED):
            k = _load_rows(k_pointer + batch_kv_head * n_keys * head_dim, keys, key_valid, head_dim, BLOCK_D)  # (N, hd)
            v = _load_rows(v_pointer + batch_kv_head * n_keys * value_dim, keys, key_valid, value_dim, BLOCK_DV)
            visible = _visible(query_index, query_document, query_valid, key_index, key_document, key_valid,
                               max_distance, n_meta, WINDOWED)
            scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale  # (M, N)
            scores = tl.where(visible, scores, float("-inf"))
            new_max = tl.maximum(row_max, tl.max(scores, 1))
            shift = tl.where(new_max == float("-inf"), 0.0, new_max)  # nothing seen yet: subtract 0, not −∞
            p = tl.exp(scores - shift[:, None])  # (M, N), 0 where hidden
            rescale = tl.exp(row_max - shift)  # exp(m − m'), (M,)
            row_sum = row_sum * rescale + tl.sum(p, 1)
            acc = acc * rescale[:, None] + tl.dot(p, v, input_precision=DOT_PRECISION)
            row_max = new_max

    seen = row_sum > 0.0
    out = acc / tl.where(seen, row_sum, 1.0)[:, None]  # (M, hd_v)
    _store_rows(out_pointer + batch_head * n_queries * value_dim, out, queries, query_valid, value_dim, BLOCK_DV)
    log_sum_exp = tl.where(seen, row_max + tl.log(tl.where(seen, row_sum, 1.0)), 0.0)  # L
    tl.store(log_sum_exp_pointer + batch_head * n_queries + queries, log_sum_exp, mask=query_valid)


@triton.jit
def _key_value_backward_kernel(q_pointer, k_pointer, v_pointer, query_index_pointer, key_index_pointer,
                               query_document_pointer, key_document_pointer, d_out_pointer, log_sum_exp_pointer,
                               delta_pointer, dk_pointer, dv_pointer,
                               heads, kv_heads, n_queries, n_keys, head_dim, value_dim, max_distance, n_meta, scale,
                               WINDOWED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                               BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """dK, dV of one key block of one (batch, kv head), summed over its query heads; grid (s / BLOCK_N, b·h_kv)."""
    block, batch_kv_head = tl.program_id(0), tl.program_id(1)
    batch, kv_head = batch_kv_head // kv_heads, batch_kv_head % kv_heads
    group = heads // kv_heads  # query heads per kv head
    keys = block * BLOCK_N + tl.arange(0, BLOCK_N)
    key_valid = keys < n_keys
    key_index, key_document, key_lowest, key_highest = _load_positions(
        key_index_pointer + batch * n_keys, key_document_pointer + batch * n_keys, keys, key_valid)
    k = _load_rows(k_pointer + batch_kv_head * n_keys * head_dim, keys, key_valid, head_dim, BLOCK_D)  # (N, hd)
    v = _load_rows(v_pointer + batch_kv_head * n_keys * value_dim, keys, key_valid, value_dim, BLOCK_DV)  # (N, hd_v)

    dk = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_DV), tl.float32)
    for start in range(0, n_queries, BLOCK_M):
        queries = start + tl.arange(0, BLOCK_M)
        query_valid = queries < n_queries
        query_index, query_document, query_lowest, query_highest = _load_positions(
            query_index_pointer + batch * n_queries, query_document_pointer + batch * n_queries, queries, query_valid)
        if _tile_may_see(query_lowest, query_highest, key_lowest, key_highest, max_distance, n_meta, WINDOWED):
            visible = _visible(query_index, query_document, query_valid, key_index, key_document, key_valid,
                               max_distance, n_meta, WINDOWED)  # the same for every head of the group
            for head in range(kv_head * group, (kv_head + 1) * group):
                batch_head = batch * heads + head
                q = _load_rows(q_pointer + batch_head * n_queries * head_dim, queries, query_valid, head_dim, BLOCK_D)
                d_out = _load_rows(d_out_pointer + batch_head * n_queries * value_dim, queries, query_valid,
                                   value_dim, BLOCK_DV)  # dO, (M, hd_v)
                rows = batch_head * n_queries + queries
                log_sum_exp = tl.load(log_sum_exp_pointer + rows, mask=query_valid, other=0.0)  # L, (M,)
                delta = tl.load(delta_pointer + rows, mask=query_valid, other=0.0)  # D, (M,)
                p = _probabilities(q, k, log_sum_exp, visible, scale, DOT_PRECISION)  # (M, N)
                dv += tl.dot(tl.trans(p), d_out, input_precision=DOT_PRECISION)
                dp = tl.dot(d_out, tl.trans(v), input_precision=DOT_PRECISION)  # (M, N)
                ds = p * (dp - delta[:, None])
                dk += tl.dot(tl.trans(ds), q, input_precision=DOT_PRECISION)
    _store_rows(dk_pointer + batch_kv_head * n_keys * head_dim, dk * scale, keys, key_valid, head_dim, BLOCK_D)
    _store_rows(dv_pointer + batch_kv_head * n_keys * value_dim, dv, keys, key_valid, value_dim, BLOCK_DV)


@triton.jit
def _query_backward_kernel(q_pointer, k_pointer, v_pointer, query_index_pointer, key_index_pointer,
                           query_document_pointer, key_document_pointer, d_out_pointer, log_sum_exp_pointer,
                           delta_pointer, dq_pointer,
                           heads, kv_heads, n_queries, n_keys, head_dim, value_dim, max_distance, n_meta, scale,
                           WINDOWED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                           BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """dQ of one query block of one (batch, head), over every key block; grid (l / BLOCK_M, b·h)."""
    block, batch_head = tl.program_id(0), tl.program_id(1)
    batch, head = batch_head // heads, batch_head % heads
    batch_kv_head = batch * kv_heads + head // (heads // kv_heads)
    queries = block * BLOCK_M + tl.arange(0, BLOCK_M)
    query_valid = queries < n_queries
    query_index, query_document, query_lowest, query_highest = _load_positions(
        query_index_pointer + batch * n_queries, query_document_pointer + batch * n_queries, queries, query_valid)
    q = _load_rows(q_pointer + batch_head * n_queries * head_dim, queries, query_valid, head_dim, BLOCK_D)  # (M, hd)
    d_out = _load_rows(d_out_pointer + batch_head * n_queries * value_dim, queries, query_valid, value_dim, BLOCK_DV)
    log_sum_exp = tl.load(log_sum_exp_pointer + batch_head * n_queries + queries, mask=query_valid, other=0.0)
    delta = tl.load(delta_pointer + batch_head * n_queries + queries, mask=query_valid, other=0.0)

    dq = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for start in range(0, n_keys, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        key_valid = keys < n_keys
        key_index, key_document, key_lowest, key_highest = _load_positions(
            key_index_pointer + batch * n_keys, key_document_pointer + batch * n_keys, keys, key_valid)
        if _tile_may_see(query_lowest, query_highest, key_lowest, key_highest, max_distance, n_meta, WINDOWED):
            k = _load_rows(k_pointer + batch_kv_head * n_keys * head_dim, keys, key_valid, head_dim, BLOCK_D)
            v = _load_rows(v_pointer + batch_kv_head * n_keys * value_dim, keys, key_valid, value_dim, BLOCK_DV)
            visible = _visible(query_index, query_document, query_valid, key_index, key_document, key_valid,
                               max_distance, n_meta, WINDOWED)
            p = _probabilities(q, k, log_sum_exp, visible, scale, DOT_PRECISION)  # (M, N)
            dp = tl.dot(d_out, tl.trans(v), input_precision=DOT_PRECISION)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds, k, input_precision=DOT_PRECISION)
    _store_rows(dq_pointer + batch_head * n_queries * head_dim, dq * scale, queries, query_valid, head_dim, BLOCK_D)


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, query_index, key_index, query_document, key_document, max_distance, n_meta, scale):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        positions = [t.long().contiguous() for t in (query_index, key_index, query_document, key_document)]
        batch, heads, n_queries, head_dim = q.shape
        kv_heads, n_keys, value_dim = k.shape[1], k.shape[2], v.shape[3]
        dims = (heads, kv_heads, n_queries, n_keys, head_dim, value_dim, max_distance or 0, n_meta, scale)
        blocks = {"WINDOWED": max_distance is not None, "BLOCK_M": BLOCK_M, "BLOCK_N": BLOCK_N,
                  "BLOCK_D": max(16, triton.next_power_of_2(head_dim)),
                  "BLOCK_DV": max(16, triton.next_power_of_2(value_dim)),
                  "DOT_PRECISION": "ieee" if q.dtype == torch.float32 else "tf32"}
        out = torch.empty(batch, heads, n_queries, value_dim, device=q.device, dtype=v.dtype)
        log_sum_exp = torch.empty(batch, heads, n_queries, device=q.device, dtype=torch.float32)
        _forward_kernel[(triton.cdiv(n_queries, BLOCK_M), batch * heads)](q, k, v, *positions, out, log_sum_exp,
                                                                         *dims, **blocks)
        ctx.save_for_backward(q, k, v, *positions, out, log_sum_exp)
        ctx.dims, ctx.blocks = dims, blocks
        return out

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, query_index, key_index, query_document, key_document, out, log_sum_exp = ctx.saved_tensors
        positions = (query_index, key_index, query_document, key_document)
        batch, heads, n_queries, _ = q.shape
        kv_heads, n_keys = k.shape[1], k.shape[2]
        d_out = d_out.contiguous()
        delta = (d_out.float() * out.float()).sum(-1)  # D_i = dO_i · o_i, (b, h, l)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        _key_value_backward_kernel[(triton.cdiv(n_keys, BLOCK_N), batch * kv_heads)](
            q, k, v, *positions, d_out, log_sum_exp, delta, dk, dv, *ctx.dims, **ctx.blocks)
        _query_backward_kernel[(triton.cdiv(n_queries, BLOCK_M), batch * heads)](
            q, k, v, *positions, d_out, log_sum_exp, delta, dq, *ctx.dims, **ctx.blocks)
        return dq, dk, dv, None, None, None, None, None, None, None


@ops.register("attention", "triton", devices=DEVICES, dtypes=DTYPES)
def attention(q, k, v, query_index, key_index, query_document, key_document, max_distance, n_meta, scale):
    """Same as nanohybrid.attention.attention: q (b, h, l, hd), k (b, h_kv, s, hd), v (b, h_kv, s, hd_v),
    indices and documents (b, l), (b, s) -> (b, h, l, hd_v) in v's dtype, the mask built inside the kernels."""
    return _FlashAttention.apply(q, k, v, query_index, key_index, query_document, key_document, max_distance, n_meta,
                                 scale)
