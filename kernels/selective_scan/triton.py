"""Mamba-1 selective scan (S6) as Triton kernels, with a hand-written backward pass.

Reference: Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", §3.2 and
Algorithm 2 (arXiv 2312.00752); the readable version is nanohybrid/scan.py::selective_scan, with Euler
for B as in mamba_ssm's kernels (docs/conventions.md, "S6 discretisation"). Per channel d and state
index n, with Δ_t = softplus(dt_t + dt_bias) (the bias and the softplus optional):

    α_t = exp(Δ_t A),    u_t = Δ_t x_t,    h_t = α_t ⊙ h_{t-1} + u_t B_t,    s_t = C_t · h_t
    y_t = (s_t + D x_t) ⊙ SiLU(z_t)                                           (the gate only if z is given)

Forward (_forward_kernel). One program per (batch row, block of BLOCK_D channels) walks the sequence
in time with its (BLOCK_D, n) state in registers and writes y and the final state. Every CHUNK steps it
also writes the state it has reached, a checkpoint: the backward needs every h_{t-1}, and the checkpoints
let it rebuild them one chunk at a time instead of keeping all l of them (b, l, d, n).

Backward (_backward_kernel), the same programs, walking the chunks from the last to the first. For each
chunk it replays the forward from the chunk's checkpoint, writing h_{t-1} of each step into a scratch
buffer, then walks those steps backward. With ds_t = dy_t ⊙ SiLU(z_t) (the gradient of s_t + D x_t) and
G the gradient of the state, starting from G = d(final state), step t does:

    G      += ds_t ⊗ C_t                        (y_t reads h_t; G is now the whole gradient of h_t)
    dC_t    = Σ_d ds_t h_t        dz_t = dy_t (s_t + D x_t) SiLU'(z_t)        dD += ds_t x_t
    du_t    = Σ_n G B_t           dB_t = Σ_d G u_t
    dlogα_t = G ⊙ h_{t-1} ⊙ α_t   (the gradient of Δ_t A, (d, n))
    dΔ_t    = Σ_n dlogα_t A + du_t x_t        dA += dlogα_t Δ_t          dx_t = ds_t D + du_t Δ_t
    G       = G ⊙ α_t             (the gradient of h_{t-1})

The G left after step 0 is d(initial state). dΔ reaches dt through softplus' derivative, the sigmoid:
ddt = dΔ σ(dt + dt_bias), and d(dt_bias) = Σ_{b,t} ddt. Sums over channels (dB, dC) cross programs, so
each channel block writes its own partial sums (blocks, b, l, n), d / BLOCK_D times the size of B, that
PyTorch then adds; sums over the batch (dA, dD) are per-batch partials (b, d, n) and (b, d) likewise. No atomics, so the result is
deterministic. The state is never run backward (h_{t-1} = (h_t − u_t B_t) / α_t divides by α_t, which
underflows for long steps): the checkpoints cost (b, l/CHUNK, d, n) and the scratch (b, CHUNK, d, n).

A missing D, dt_bias or initial state is zeros here (and gets no gradient back). Lengths and channel
counts that are not multiples of CHUNK or BLOCK_D are masked: padded channels load x = A = 0 and so
keep a zero state. Everything is computed in fp32; y is stored in x's dtype, the states in fp32.

Shape glossary
  b  batch    l  length    d  channels (d_inner)    n  state size (d_state)    CHUNK  steps per checkpoint
  x, dt, z, y (b, l, d)   A (d, n)   B, C (b, l, n)   D, dt_bias (d)   states (b, d, n), fp32
  checkpoints (b, chunks, d, n), fp32    scratch (b, CHUNK, d, n), fp32
"""

import torch
import triton
import triton.language as tl

from kernels import DEVICES, DTYPES
from nanohybrid import ops

CHUNK = 16  # steps between two checkpoints of the state
BLOCK_D = 8  # channels per program


@triton.jit
def _channel_block(block, channels, state_size, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's channels (BLOCK_D,), state indices (BLOCK_N,) and offsets into a (d, n) matrix, with masks."""
    channel = block * BLOCK_D + tl.arange(0, BLOCK_D)
    state_index = tl.arange(0, BLOCK_N)
    channel_mask, state_mask = channel < channels, state_index < state_size
    matrix = channel[:, None] * state_size + state_index[None, :]  # (BLOCK_D, BLOCK_N)
    return channel, channel_mask, state_index, state_mask, matrix, channel_mask[:, None] & state_mask[None, :]


@triton.jit
def _load_step(x_pointer, dt_pointer, B_pointer, C_pointer, row, channel, channel_mask, state_index, state_mask,
               channels, state_size, dt_bias, DT_SOFTPLUS: tl.constexpr):
    """The inputs of one step, row = batch · l + t: x, dt + dt_bias, Δ (BLOCK_D,) and B, C (BLOCK_N,), in fp32."""
    x = tl.load(x_pointer + row * channels + channel, mask=channel_mask, other=0.0).to(tl.float32)
    dt_biased = tl.load(dt_pointer + row * channels + channel, mask=channel_mask, other=0.0).to(tl.float32) + dt_bias
    dt = dt_biased
    if DT_SOFTPLUS:  # log(1 + e^v), and v itself above 20 as torch's softplus does
        dt = tl.where(dt_biased > 20.0, dt_biased, tl.log(1.0 + tl.exp(dt_biased)))
    B = tl.load(B_pointer + row * state_size + state_index, mask=state_mask, other=0.0).to(tl.float32)
    C = tl.load(C_pointer + row * state_size + state_index, mask=state_mask, other=0.0).to(tl.float32)
    return x, dt_biased, dt, B, C


@triton.jit
def _forward_kernel(x_pointer, dt_pointer, A_pointer, B_pointer, C_pointer, D_pointer, z_pointer, dt_bias_pointer,
                    initial_state_pointer, y_pointer, final_state_pointer, checkpoints_pointer,
                    length, channels, state_size, DT_SOFTPLUS: tl.constexpr, GATED: tl.constexpr,
                    CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """Program (batch, channel block): y for every step, the final state and a checkpoint every CHUNK steps."""
    batch, block = tl.program_id(0), tl.program_id(1)
    channel, channel_mask, state_index, state_mask, matrix, matrix_mask = _channel_block(
        block, channels, state_size, BLOCK_D, BLOCK_N)
    A = tl.load(A_pointer + matrix, mask=matrix_mask, other=0.0).to(tl.float32)  # (BLOCK_D, BLOCK_N)
    D = tl.load(D_pointer + channel, mask=channel_mask, other=0.0).to(tl.float32)
    dt_bias = tl.load(dt_bias_pointer + channel, mask=channel_mask, other=0.0).to(tl.float32)
    matrix_size = channels * state_size
    state = tl.load(initial_state_pointer + batch * matrix_size + matrix, mask=matrix_mask, other=0.0).to(tl.float32)
    chunks = tl.cdiv(length, CHUNK)
    for chunk in range(chunks):
        tl.store(checkpoints_pointer + (batch * chunks + chunk) * matrix_size + matrix, state, mask=matrix_mask)
        for t in range(chunk * CHUNK, tl.minimum(chunk * CHUNK + CHUNK, length)):
            row = batch * length + t
            x, _, dt, B, C = _load_step(x_pointer, dt_pointer, B_pointer, C_pointer, row, channel, channel_mask,
                                        state_index, state_mask, channels, state_size, dt_bias, DT_SOFTPLUS)
            state = tl.exp(dt[:, None] * A) * state + (dt * x)[:, None] * B[None, :]  # h_t = α_t h_{t-1} + u_t B_t
            y = tl.sum(state * C[None, :], 1) + D * x  # s_t + D x_t, (BLOCK_D,)
            if GATED:
                z = tl.load(z_pointer + row * channels + channel, mask=channel_mask, other=0.0).to(tl.float32)
                y = y * z * tl.sigmoid(z)
            tl.store(y_pointer + row * channels + channel, y.to(y_pointer.dtype.element_ty), mask=channel_mask)
    tl.store(final_state_pointer + batch * matrix_size + matrix, state, mask=matrix_mask)


@triton.jit
def _backward_kernel(x_pointer, dt_pointer, A_pointer, B_pointer, C_pointer, D_pointer, z_pointer, dt_bias_pointer,
                     checkpoints_pointer, dy_pointer, d_final_state_pointer, scratch_pointer,
                     dx_pointer, ddt_pointer, dz_pointer, dB_partial_pointer, dC_partial_pointer, dA_partial_pointer,
                     dD_partial_pointer, d_initial_state_pointer, length, channels, state_size,
                     DT_SOFTPLUS: tl.constexpr, GATED: tl.constexpr,
                     CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """Program (batch, channel block): the chunks from last to first, each replayed forward then walked backward."""
    batch, block = tl.program_id(0), tl.program_id(1)
    channel, channel_mask, state_index, state_mask, matrix, matrix_mask = _channel_block(
        block, channels, state_size, BLOCK_D, BLOCK_N)
    A = tl.load(A_pointer + matrix, mask=matrix_mask, other=0.0).to(tl.float32)
    D = tl.load(D_pointer + channel, mask=channel_mask, other=0.0).to(tl.float32)
    dt_bias = tl.load(dt_bias_pointer + channel, mask=channel_mask, other=0.0).to(tl.float32)
    matrix_size = channels * state_size
    partial_rows = block * tl.num_programs(0) * length  # this block's (b, l, n) slab of dB_partial and dC_partial
    # G, the gradient of the state the walk has reached, (BLOCK_D, BLOCK_N)
    grad_state = tl.load(d_final_state_pointer + batch * matrix_size + matrix, mask=matrix_mask, other=0.0)
    dA = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dD = tl.zeros((BLOCK_D,), dtype=tl.float32)
    chunks = tl.cdiv(length, CHUNK)
    for reverse_chunk in range(chunks):
        chunk = chunks - 1 - reverse_chunk
        start = chunk * CHUNK
        steps = tl.minimum(CHUNK, length - start)
        # Replay the forward from the checkpoint: scratch[i] = h_{start+i-1}, the state step start+i starts from.
        # On a GPU another thread may read what one wrote, hence the barriers around the scratch.
        checkpoint = checkpoints_pointer + (batch * chunks + chunk) * matrix_size
        state = tl.load(checkpoint + matrix, mask=matrix_mask, other=0.0)
        tl.debug_barrier()  # the later chunk's reads of the scratch are done
        for i in range(steps):
            tl.store(scratch_pointer + (batch * CHUNK + i) * matrix_size + matrix, state, mask=matrix_mask)
            x, _, dt, B, _ = _load_step(x_pointer, dt_pointer, B_pointer, C_pointer, batch * length + start + i,
                                        channel, channel_mask, state_index, state_mask, channels, state_size,
                                        dt_bias, DT_SOFTPLUS)
            state = tl.exp(dt[:, None] * A) * state + (dt * x)[:, None] * B[None, :]
        tl.debug_barrier()  # the scratch is written
        for reverse_i in range(steps):
            i = steps - 1 - reverse_i
            row = batch * length + start + i
            previous = tl.load(scratch_pointer + (batch * CHUNK + i) * matrix_size + matrix, mask=matrix_mask,
                               other=0.0)  # h_{t-1}
            x, dt_biased, dt, B, C = _load_step(x_pointer, dt_pointer, B_pointer, C_pointer, row, channel,
                                                channel_mask, state_index, state_mask, channels, state_size,
                                                dt_bias, DT_SOFTPLUS)
            decay = tl.exp(dt[:, None] * A)  # α_t
            weight = dt * x  # u_t
            state = decay * previous + weight[:, None] * B[None, :]  # h_t
            dy = tl.load(dy_pointer + row * channels + channel, mask=channel_mask, other=0.0).to(tl.float32)
            ds = dy
            if GATED:
                z = tl.load(z_pointer + row * channels + channel, mask=channel_mask, other=0.0).to(tl.float32)
                sigmoid_z = tl.sigmoid(z)
                ungated = tl.sum(state * C[None, :], 1) + D * x  # s_t + D x_t
                dz = dy * ungated * sigmoid_z * (1.0 + z * (1.0 - sigmoid_z))  # SiLU'(z) = σ(z)(1 + z(1 − σ(z)))
                tl.store(dz_pointer + row * channels + channel, dz.to(dz_pointer.dtype.element_ty), mask=channel_mask)
                ds = dy * z * sigmoid_z
            dD += ds * x
            grad_state += ds[:, None] * C[None, :]
            dC = tl.sum(ds[:, None] * state, 0)  # this block's channels only, (BLOCK_N,)
            tl.store(dC_partial_pointer + (partial_rows + row) * state_size + state_index, dC, mask=state_mask)
            d_weight = tl.sum(grad_state * B[None, :], 1)  # du_t, (BLOCK_D,)
            dB = tl.sum(grad_state * weight[:, None], 0)
            tl.store(dB_partial_pointer + (partial_rows + row) * state_size + state_index, dB, mask=state_mask)
            d_log_decay = grad_state * previous * decay  # (BLOCK_D, BLOCK_N)
            dA += d_log_decay * dt[:, None]
            d_dt = tl.sum(d_log_decay * A, 1) + d_weight * x  # dΔ_t
            if DT_SOFTPLUS:
                d_dt = d_dt * tl.sigmoid(dt_biased)
            tl.store(ddt_pointer + row * channels + channel, d_dt, mask=channel_mask)
            dx = ds * D + d_weight * dt
            tl.store(dx_pointer + row * channels + channel, dx.to(dx_pointer.dtype.element_ty), mask=channel_mask)
            grad_state = grad_state * decay  # now the gradient of h_{t-1}
    tl.store(d_initial_state_pointer + batch * matrix_size + matrix, grad_state, mask=matrix_mask)
    tl.store(dA_partial_pointer + batch * matrix_size + matrix, dA, mask=matrix_mask)
    tl.store(dD_partial_pointer + batch * channels + channel, dD, mask=channel_mask)


class _SelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state):
        batch, length, channels = x.shape
        state_size = A.shape[1]
        ctx.given = (D is not None, dt_bias is not None, initial_state is not None)
        ctx.initial_state_dtype = None if initial_state is None else initial_state.dtype
        fp32 = dict(device=x.device, dtype=torch.float32)
        D = torch.zeros(channels, **fp32) if D is None else D.contiguous()
        dt_bias = torch.zeros(channels, **fp32) if dt_bias is None else dt_bias.contiguous()
        if initial_state is None:
            initial_state = torch.zeros(batch, channels, state_size, **fp32)
        x, dt, A, B, C, initial_state = (t.contiguous() for t in (x, dt, A, B, C, initial_state))
        z = None if z is None else z.contiguous()
        y = torch.empty_like(x)
        final_state = torch.empty(batch, channels, state_size, **fp32)
        checkpoints = torch.empty(batch, triton.cdiv(length, CHUNK), channels, state_size, **fp32)
        _forward_kernel[(batch, triton.cdiv(channels, BLOCK_D))](
            x, dt, A, B, C, D, z, dt_bias, initial_state, y, final_state, checkpoints, length, channels, state_size,
            DT_SOFTPLUS=dt_softplus, GATED=z is not None, CHUNK=CHUNK, BLOCK_D=BLOCK_D,
            BLOCK_N=triton.next_power_of_2(state_size))
        ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, checkpoints)
        ctx.dt_softplus = dt_softplus
        return y, final_state

    @staticmethod
    def backward(ctx, dy, d_final_state):
        x, dt, A, B, C, D, z, dt_bias, checkpoints = ctx.saved_tensors
        batch, length, channels = x.shape
        state_size = A.shape[1]
        blocks = triton.cdiv(channels, BLOCK_D)
        fp32 = dict(device=x.device, dtype=torch.float32)
        dx = torch.empty_like(x)
        ddt = torch.empty(batch, length, channels, **fp32)  # fp32, so that d(dt_bias) sums unrounded values
        dz = None if z is None else torch.empty_like(z)
        dB_partial = torch.empty(blocks, batch, length, state_size, **fp32)
        dC_partial = torch.empty(blocks, batch, length, state_size, **fp32)
        dA_partial = torch.empty(batch, channels, state_size, **fp32)
        dD_partial = torch.empty(batch, channels, **fp32)
        d_initial_state = torch.empty(batch, channels, state_size, **fp32)
        scratch = torch.empty(batch, CHUNK, channels, state_size, **fp32)
        _backward_kernel[(batch, blocks)](
            x, dt, A, B, C, D, z, dt_bias, checkpoints, dy.contiguous(), d_final_state.float().contiguous(), scratch,
            dx, ddt, dz, dB_partial, dC_partial, dA_partial, dD_partial, d_initial_state, length, channels, state_size,
            DT_SOFTPLUS=ctx.dt_softplus, GATED=z is not None, CHUNK=CHUNK, BLOCK_D=BLOCK_D,
            BLOCK_N=triton.next_power_of_2(state_size))
        has_D, has_dt_bias, has_initial_state = ctx.given
        return (dx, ddt.to(dt.dtype), dA_partial.sum(0).to(A.dtype), dB_partial.sum(0).to(B.dtype),
                dC_partial.sum(0).to(C.dtype), dD_partial.sum(0).to(D.dtype) if has_D else None, dz,
                ddt.sum((0, 1)).to(dt_bias.dtype) if has_dt_bias else None, None,
                d_initial_state.to(ctx.initial_state_dtype) if has_initial_state else None)


@ops.register("selective_scan", "triton", devices=DEVICES, dtypes=DTYPES)
def selective_scan(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, initial_state=None):
    """nanohybrid/scan.py's selective_scan as Triton kernels: y (b, l, d) in x's dtype, final state (b, d, n) fp32."""
    return _SelectiveScan.apply(x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state)
