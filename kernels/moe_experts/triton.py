"""Jamba's mixture-of-experts layer (the experts, after routing) as token-sorted grouped GEMMs in Triton,
with a hand-written backward pass.

Reference: Jamba (arXiv 2403.19887) §2; the readable version is nanohybrid/moe.py::moe_experts, the router
of transformers' Jamba (docs/conventions.md, "Jamba layout"). The layout is the one production MoE kernels
use (MegaBlocks, Gale et al. 2022, arXiv 2211.15841; vLLM's fused_moe): sort the (token, slot) pairs by
expert, so that each expert's rows are contiguous, and run one "grouped" matmul whose row blocks each
belong to a single expert.

Every (token, slot) pair is a row r, with token t_r, weight w_r and expert e = e_r. Forward:

    g_r = W_gate,e x_t     u_r = W_up,e x_t     h_r = silu(g_r) ⊙ u_r     y_r = W_down,e h_r
    out_t = Σ_{rows r of token t} w_r y_r                  (the k slots; w is not renormalised)

Backward, given dout:

    dw_r = ⟨dout_t, y_r⟩          dy_r = w_r dout_t          dh_r = dy_r W_down,e
    du_r = dh_r ⊙ silu(g_r)       dg_r = dh_r ⊙ u_r ⊙ silu'(g_r),   silu'(g) = σ(g) (1 + g (1 − σ(g)))
    dx_t = Σ_{rows r of token t} (dg_r W_gate,e + du_r W_up,e)
    dW_down,e = Σ_r dy_rᵀ h_r     dW_gate,e = Σ_r dg_rᵀ x_t     dW_up,e = Σ_r du_rᵀ x_t   (over the rows of e)

Layout (in PyTorch, _sort_by_expert). Flatten the pairs (pair p = token · k + slot), sort them by expert
with a stable argsort, and find each expert's segment [start_e, end_e) of sorted rows. The row kernels run
one program per block of at most BLOCK_M sorted rows, and a block never straddles two experts: the block
table lists, per block, (expert, first row, end row). An expert with c rows gets ⌈c / BLOCK_M⌉ blocks,
its last one partly filled (masked), so no padding rows are ever stored. The number of blocks is only
known on the GPU; the grid is its upper bound ⌈rows / BLOCK_M⌉ + n (each expert wastes at most one block),
and the table's surplus blocks are empty (first row = end row), so nothing waits for the host.

Kernels, each a loop over K of tl.dot on (BLOCK_M × BLOCK_K) rows and (BLOCK_K × BLOCK_N) expert weights:
    _gate_up_kernel          g, u and h (the SwiGLU in the epilogue); g, u, h are kept for the backward
    _down_kernel             y = h W_downᵀ
    _down_backward_kernel    dh = dy W_down, then dg, du through the SwiGLU in the epilogue
    _input_gradient_kernel   dx per row = dg W_gate + du W_up
    _weight_gradient_kernel  dW_e = Σ aᵀ b over expert e's segment (zeros for an expert with no rows)
The gather of x into sorted rows and the combine back to tokens (a weighted sum over the k slots) are
PyTorch gathers and a reshape-sum: deterministic, no atomics. Everything accumulates in fp32; on a GPU
fp32 inputs multiply in full fp32 ("ieee"), bf16/fp16 inputs in tf32.

Shape glossary
  t tokens   k experts per token   R = t · k rows (pairs)   d d_model   I expert hidden width   n experts
  x, out (t, d)   expert_weights, experts (t, k)   gate_proj, up_proj (n, I, d)   down_proj (n, d, I)
  sorted rows: x_rows, y, dy, dx_rows (R, d); g, u, h, dg, du (R, I), fp32
  block table (blocks, 3) int32: expert, first row, end row   segments (n + 1,): expert e has rows [s_e, s_e+1)
"""

import torch
import triton
import triton.language as tl

from kernels import DEVICES, DTYPES
from nanohybrid import ops

BLOCK_M = 64  # sorted rows per program
BLOCK_N = 64  # output columns per program
BLOCK_K = 32  # the reduction step of the matmul loop


@triton.jit
def _block_of_rows(table_pointer, BLOCK_M: tl.constexpr):
    """This program's expert, its sorted rows (BLOCK_M,) and which of them are real, from the block table."""
    block = tl.program_id(0)
    expert = tl.load(table_pointer + 3 * block).to(tl.int64)
    start = tl.load(table_pointer + 3 * block + 1).to(tl.int64)
    end = tl.load(table_pointer + 3 * block + 2)
    rows = start + tl.arange(0, BLOCK_M)
    return expert, rows, rows < end


@triton.jit
def _rows_times_weight(a_pointer, rows, row_mask, weight_pointer, columns, column_mask, K, stride_n, stride_k,
                       BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Σ_k a[rows, k] W[k, columns] in fp32, (BLOCK_M, BLOCK_N); a is (R, K) contiguous, the expert's matrix W
    is read through strides, so one function does a Wᵀ (nn.Linear's layout) and a W."""
    accumulator = tl.zeros((rows.shape[0], columns.shape[0]), dtype=tl.float32)
    for k_start in range(0, K, BLOCK_K):
        ks = k_start + tl.arange(0, BLOCK_K)
        k_mask = ks < K
        a = tl.load(a_pointer + rows[:, None] * K + ks[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(weight_pointer + ks[:, None] * stride_k + columns[None, :] * stride_n,
                    mask=k_mask[:, None] & column_mask[None, :], other=0.0)  # (BLOCK_K, BLOCK_N)
        accumulator += tl.dot(a.to(tl.float32), w.to(tl.float32), input_precision=DOT_PRECISION)
    return accumulator


@triton.jit
def _store_rows(pointer, value, rows, row_mask, columns, column_mask, width):
    """value (BLOCK_M, BLOCK_N) into rows × columns of a contiguous (R, width) matrix."""
    tl.store(pointer + rows[:, None] * width + columns[None, :], value.to(pointer.dtype.element_ty),
             mask=row_mask[:, None] & column_mask[None, :])


@triton.jit
def _load_rows(pointer, rows, row_mask, columns, column_mask, width):
    """rows × columns of a contiguous (R, width) matrix, in fp32, zeros where masked."""
    return tl.load(pointer + rows[:, None] * width + columns[None, :], mask=row_mask[:, None] & column_mask[None, :],
                   other=0.0).to(tl.float32)


@triton.jit
def _gate_up_kernel(x_pointer, gate_pointer, up_pointer, table_pointer, g_pointer, u_pointer, h_pointer, d, hidden,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """g = x W_gateᵀ, u = x W_upᵀ, h = silu(g) ⊙ u for one row block, BLOCK_N hidden columns; grid (blocks, I)."""
    expert, rows, row_mask = _block_of_rows(table_pointer, BLOCK_M)
    columns = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    column_mask = columns < hidden
    matrix = expert * hidden * d  # where the expert's (I, d) matrices start; W[i, k] is at i · d + k
    g = _rows_times_weight(x_pointer, rows, row_mask, gate_pointer + matrix, columns, column_mask, d, d, 1,
                           BLOCK_K, DOT_PRECISION)
    u = _rows_times_weight(x_pointer, rows, row_mask, up_pointer + matrix, columns, column_mask, d, d, 1,
                           BLOCK_K, DOT_PRECISION)
    _store_rows(g_pointer, g, rows, row_mask, columns, column_mask, hidden)
    _store_rows(u_pointer, u, rows, row_mask, columns, column_mask, hidden)
    _store_rows(h_pointer, g * tl.sigmoid(g) * u, rows, row_mask, columns, column_mask, hidden)


@triton.jit
def _down_kernel(h_pointer, down_pointer, table_pointer, y_pointer, d, hidden,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """y = h W_downᵀ for one row block and BLOCK_N model columns; grid (blocks, d)."""
    expert, rows, row_mask = _block_of_rows(table_pointer, BLOCK_M)
    columns = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    column_mask = columns < d
    matrix = down_pointer + expert * d * hidden  # (d, I): W[j, i] is at j · I + i
    y = _rows_times_weight(h_pointer, rows, row_mask, matrix, columns, column_mask, hidden, hidden, 1,
                           BLOCK_K, DOT_PRECISION)
    _store_rows(y_pointer, y, rows, row_mask, columns, column_mask, d)


@triton.jit
def _down_backward_kernel(dy_pointer, down_pointer, g_pointer, u_pointer, table_pointer, dg_pointer, du_pointer,
                          d, hidden, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                          DOT_PRECISION: tl.constexpr):
    """dh = dy W_down, then du = dh ⊙ silu(g), dg = dh ⊙ u ⊙ silu'(g); grid (blocks, I)."""
    expert, rows, row_mask = _block_of_rows(table_pointer, BLOCK_M)
    columns = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    column_mask = columns < hidden
    matrix = down_pointer + expert * d * hidden  # (d, I), read untransposed: W[k = j, n = i] at j · I + i
    dh = _rows_times_weight(dy_pointer, rows, row_mask, matrix, columns, column_mask, d, 1, hidden,
                            BLOCK_K, DOT_PRECISION)
    g = _load_rows(g_pointer, rows, row_mask, columns, column_mask, hidden)
    u = _load_rows(u_pointer, rows, row_mask, columns, column_mask, hidden)
    sigmoid = tl.sigmoid(g)
    _store_rows(du_pointer, dh * g * sigmoid, rows, row_mask, columns, column_mask, hidden)
    _store_rows(dg_pointer, dh * u * sigmoid * (1.0 + g * (1.0 - sigmoid)), rows, row_mask, columns, column_mask,
                hidden)


@triton.jit
def _input_gradient_kernel(dg_pointer, du_pointer, gate_pointer, up_pointer, table_pointer, dx_pointer, d, hidden,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                           DOT_PRECISION: tl.constexpr):
    """dx per row = dg W_gate + du W_up for one row block and BLOCK_N model columns; grid (blocks, d)."""
    expert, rows, row_mask = _block_of_rows(table_pointer, BLOCK_M)
    columns = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    column_mask = columns < d
    matrix = expert * hidden * d  # (I, d), read untransposed: W[k = i, n = j] at i · d + j
    dx = _rows_times_weight(dg_pointer, rows, row_mask, gate_pointer + matrix, columns, column_mask, hidden, 1, d,
                            BLOCK_K, DOT_PRECISION)
    dx += _rows_times_weight(du_pointer, rows, row_mask, up_pointer + matrix, columns, column_mask, hidden, 1, d,
                             BLOCK_K, DOT_PRECISION)
    _store_rows(dx_pointer, dx, rows, row_mask, columns, column_mask, d)


@triton.jit
def _weight_gradient_kernel(a_pointer, b_pointer, segments_pointer, dw_pointer, a_width, b_width,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """dW_e = Σ_r a_rᵀ b_r over expert e's sorted rows, a (BLOCK_N × BLOCK_N) tile of the (a_width, b_width)
    matrix; grid (n, a_width, b_width). An expert without rows runs no step and writes zeros."""
    expert = tl.program_id(0)
    a_columns = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    b_columns = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    a_mask, b_mask = a_columns < a_width, b_columns < b_width
    start = tl.load(segments_pointer + expert).to(tl.int64)
    end = tl.load(segments_pointer + expert + 1).to(tl.int64)
    accumulator = tl.zeros((BLOCK_N, BLOCK_N), dtype=tl.float32)
    for row_start in range(start, end, BLOCK_M):
        rows = row_start + tl.arange(0, BLOCK_M)
        row_mask = rows < end
        a = _load_rows(a_pointer, rows, row_mask, a_columns, a_mask, a_width)  # (BLOCK_M, BLOCK_N)
        b = _load_rows(b_pointer, rows, row_mask, b_columns, b_mask, b_width)
        accumulator += tl.dot(tl.trans(a), b, input_precision=DOT_PRECISION)
    tile = expert.to(tl.int64) * a_width * b_width + a_columns[:, None] * b_width + b_columns[None, :]
    tl.store(dw_pointer + tile, accumulator.to(dw_pointer.dtype.element_ty), mask=a_mask[:, None] & b_mask[None, :])


def _sort_by_expert(experts: torch.Tensor, n_experts: int):
    """experts (t, k) -> order (R,): the pair p = token · k + slot of each sorted row; segments (n + 1,);
    the block table (⌈R / BLOCK_M⌉ + n, 3) int32 of (expert, first row, end row). No host synchronisation."""
    flat = experts.flatten()
    order = torch.argsort(flat, stable=True)  # stable: within an expert, rows keep token order
    boundaries = torch.arange(n_experts + 1, device=flat.device)
    segments = torch.searchsorted(flat[order], boundaries)  # expert e's rows are [segments[e], segments[e + 1])
    counts = segments[1:] - segments[:-1]
    blocks_per_expert = (counts + BLOCK_M - 1) // BLOCK_M
    blocks_end = blocks_per_expert.cumsum(0)  # e owns blocks [blocks_end[e] − blocks_per_expert[e], blocks_end[e])
    block = torch.arange(triton.cdiv(flat.numel(), BLOCK_M) + n_experts, device=flat.device)
    expert = torch.searchsorted(blocks_end, block, right=True).clamp(max=n_experts - 1)  # surplus blocks: the last
    first = segments[expert] + (block - (blocks_end - blocks_per_expert)[expert]) * BLOCK_M
    end = torch.minimum(first + BLOCK_M, segments[expert + 1])  # a surplus block has end ≤ first: no rows
    return order, segments.to(torch.int32), torch.stack([expert, first, end], 1).to(torch.int32).contiguous()


def _launch(kernel, table, width, *args, precision):
    """A row kernel over every block of the table and every BLOCK_N columns of its `width`-wide output."""
    kernel[(table.shape[0], triton.cdiv(width, BLOCK_N))](*args, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K,
                                                          DOT_PRECISION=precision)


def _weight_gradient(a, b, segments, weight, precision):
    """dW (n, a_width, b_width) in weight's dtype, dW_e = Σ aᵀ b over expert e's sorted rows."""
    dw = torch.empty_like(weight)
    n_experts, a_width, b_width = weight.shape
    grid = (n_experts, triton.cdiv(a_width, BLOCK_N), triton.cdiv(b_width, BLOCK_N))
    _weight_gradient_kernel[grid](a, b, segments, dw, a_width, b_width, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
                                  DOT_PRECISION=precision)
    return dw


def _unsort(rows, order):
    """Sorted rows (R, width) back in (token, slot) pair order: row i of the sorted layout is pair order[i]."""
    return torch.empty_like(rows).index_copy_(0, order, rows)


class MixtureOfExperts(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, expert_weights, experts, gate_proj, up_proj, down_proj):
        tokens, d = x.shape
        n_experts, hidden, _ = gate_proj.shape
        k = experts.shape[1]
        x, gate_proj, up_proj, down_proj = (t.contiguous() for t in (x, gate_proj, up_proj, down_proj))
        precision = "ieee" if x.dtype == torch.float32 else "tf32"
        order, segments, table = _sort_by_expert(experts, n_experts)
        x_rows = x[order // k]  # (R, d): each sorted row's token
        fp32 = dict(device=x.device, dtype=torch.float32)
        g, u, h = (torch.empty(order.numel(), hidden, **fp32) for _ in range(3))
        _launch(_gate_up_kernel, table, hidden, x_rows, gate_proj, up_proj, table, g, u, h, d, hidden,
                precision=precision)
        y = torch.empty(order.numel(), d, **fp32)
        _launch(_down_kernel, table, d, h, down_proj, table, y, d, hidden, precision=precision)

        y_pairs = _unsort(y, order).view(tokens, k, d)
        out = (y_pairs * expert_weights.float()[:, :, None]).sum(1)
        ctx.save_for_backward(expert_weights, order, segments, table, x_rows, g, u, h, y_pairs, gate_proj, up_proj,
                              down_proj)
        ctx.precision = precision
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, dout):
        expert_weights, order, segments, table, x_rows, g, u, h, y_pairs, gate_proj, up_proj, down_proj = \
            ctx.saved_tensors
        tokens, k, d = y_pairs.shape
        hidden = gate_proj.shape[1]
        dout = dout.float()
        d_expert_weights = (y_pairs * dout[:, None, :]).sum(-1)  # ⟨dout_t, y_r⟩, (t, k)
        dy = expert_weights.float().flatten()[order, None] * dout[order // k]  # w_r dout_t, sorted (R, d)

        dg, du = torch.empty_like(g), torch.empty_like(u)
        _launch(_down_backward_kernel, table, hidden, dy, down_proj, g, u, table, dg, du, d, hidden,
                precision=ctx.precision)
        dx_rows = torch.empty_like(dy)
        _launch(_input_gradient_kernel, table, d, dg, du, gate_proj, up_proj, table, dx_rows, d, hidden,
                precision=ctx.precision)
        dx = _unsort(dx_rows, order).view(tokens, k, d).sum(1)  # summed over each token's k slots

        d_down = _weight_gradient(dy, h, segments, down_proj, ctx.precision)  # Σ dyᵀ h, (n, d, I)
        d_gate = _weight_gradient(dg, x_rows, segments, gate_proj, ctx.precision)  # Σ dgᵀ x, (n, I, d)
        d_up = _weight_gradient(du, x_rows, segments, up_proj, ctx.precision)  # Σ duᵀ x, (n, I, d)
        return (dx.to(x_rows.dtype), d_expert_weights.to(expert_weights.dtype), None, d_gate, d_up, d_down)


@ops.register("moe_experts", "triton", devices=DEVICES, dtypes=DTYPES)
def moe_experts(x, expert_weights, experts, gate_proj, up_proj, down_proj):
    """nanohybrid/moe.py's moe_experts as token-sorted grouped GEMMs: (t, d) in x's dtype."""
    return MixtureOfExperts.apply(x, expert_weights, experts, gate_proj, up_proj, down_proj)
