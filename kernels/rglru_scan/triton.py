"""The RG-LRU recurrence of Griffin as Triton kernels, with a hand-written backward pass.

Reference: De et al. 2024, "Griffin: Mixing Gated Linear Recurrences with Local Attention"
(arXiv 2402.19427), §2.4; the readable version is nanohybrid/rglru.py::rglru_scan (docs/conventions.md,
"RG-LRU parametrisation"). The gates are computed outside, in PyTorch; this kernel is only the scan.
Per channel:

    a_t = exp(log a_t),    m_t = sqrt(1 − a_t²)         (the normaliser)
    at a reset (a document's first token): a_t = 0, m_t = 1
    h_t = a_t h_{t-1} + m_t x_t                          (x_t is already the gated input i_t ⊙ x_t)

Every channel is its own scalar recurrence: nothing mixes channels, so each program owns a block of
BLOCK_R channels of one batch row and walks the sequence in time with that block of h in registers.

Forward (_forward_kernel). Load h_0 from the initial state; for t = 0 … l−1 load x_t, log a_t and the
reset flag, form a_t and m_t, update h and store it. The last h is the final state.

Backward (_backward_kernel), the same programs walking time in reverse. Let G be the gradient of the
state the walk has reached, starting from G = d(final state). Step t does:

    G          += dh_t                 (h_t is also an output: G is now the whole gradient of h_t)
    dx_t        = m_t G
    d log a_t   = G (h_{t-1} a_t + x_t dm_t/dlog a_t)          (0 at a reset: there a and m are constants)
    G           = a_t G                (the gradient of h_{t-1}; 0 after a reset)

The G left after step 0 is d(initial state). The derivative of the normaliser goes through u = 1 − a_t²:
du/dlog a = −2 a_t², and dm/du is sqrt's derivative 1/(2 sqrt(u)) clipped at MAX_SQRT_GRADIENT, exactly as
the reference's SqrtBoundedGradient (RecurrentGemma clips it for bf16 stability as a_t → 1):

    dm_t/dlog a_t = −2 a_t² / sqrt(max(4u, MAX_SQRT_GRADIENT⁻²))

The backward needs every h_{t-1}. The forward already computes them all, so it keeps them: the kernel
writes h in fp32 into `states`, which the backward reads at t − 1 (and the initial state at t = 0). In
fp32 that buffer is the output itself; in bf16 the output is a rounded copy, and the backward still reads
the exact fp32 h. Nothing is recomputed, and the state is never run backward (h_{t-1} = (h_t − m_t x_t)
/ a_t would divide by a_t, which is 0 at a reset).

A missing initial state is zeros here (and gets no gradient back). Channel counts that are not a multiple
of BLOCK_R are masked. Everything is computed in fp32; h is returned in x's dtype, the states in fp32.

Shape glossary
  b  batch    l  length    r  channels (lru_width)    BLOCK_R  channels per program
  x, log_a, h, dh (b, l, r)   reset (b, l) bool   initial and final state (b, r), fp32
"""

import torch
import triton
import triton.language as tl

from kernels import DEVICES, DTYPES
from nanohybrid import ops
from nanohybrid.rglru import MAX_SQRT_GRADIENT

BLOCK_R = 128  # one channel per thread of a program's 4 warps
MIN_FOUR_U = tl.constexpr(MAX_SQRT_GRADIENT**-2)  # the floor of 4u in the clipped sqrt derivative


@triton.jit
def _load_step(x_pointer, log_a_pointer, reset_pointer, row, channel, channel_mask, channels):
    """Step `row` (= batch · l + t) of one channel block, in fp32: x_t, a_t, m_t, the reset flag, and
    exp(2 log a_t), which is a_t² before the reset sets a_t to 0."""
    x = tl.load(x_pointer + row * channels + channel, mask=channel_mask, other=0.0).to(tl.float32)
    log_a = tl.load(log_a_pointer + row * channels + channel, mask=channel_mask, other=0.0).to(tl.float32)
    reset = tl.load(reset_pointer + row) != 0  # one flag for the whole row
    decay_squared = tl.exp(2.0 * log_a)  # as the reference computes a_t² inside the normaliser
    a = tl.where(reset, 0.0, tl.exp(log_a))  # a_t, (BLOCK_R,)
    normaliser = tl.where(reset, 1.0, tl.sqrt(1.0 - decay_squared))  # m_t = sqrt(1 − a_t²)
    return x, a, normaliser, decay_squared, reset


@triton.jit
def _forward_kernel(x_pointer, log_a_pointer, reset_pointer, initial_state_pointer, states_pointer,
                    final_state_pointer, length, channels, BLOCK_R: tl.constexpr):
    """Program (batch, channel block): h_t for every step, into `states`, and the final state."""
    batch, block = tl.program_id(0), tl.program_id(1)
    channel = block * BLOCK_R + tl.arange(0, BLOCK_R)
    channel_mask = channel < channels
    state = tl.load(initial_state_pointer + batch * channels + channel, mask=channel_mask, other=0.0)  # h_{-1}
    for t in range(length):
        row = batch * length + t
        x, a, normaliser, _, _ = _load_step(x_pointer, log_a_pointer, reset_pointer, row, channel, channel_mask,
                                            channels)
        state = a * state + normaliser * x  # h_t = a_t h_{t-1} + m_t x_t
        tl.store(states_pointer + row * channels + channel, state, mask=channel_mask)
    tl.store(final_state_pointer + batch * channels + channel, state, mask=channel_mask)


@triton.jit
def _backward_kernel(x_pointer, log_a_pointer, reset_pointer, initial_state_pointer, states_pointer, dh_pointer,
                     d_final_state_pointer, dx_pointer, d_log_a_pointer, d_initial_state_pointer, length, channels,
                     BLOCK_R: tl.constexpr):
    """Program (batch, channel block): the steps from last to first, carrying G, the gradient of the state."""
    batch, block = tl.program_id(0), tl.program_id(1)
    channel = block * BLOCK_R + tl.arange(0, BLOCK_R)
    channel_mask = channel < channels
    initial_state = tl.load(initial_state_pointer + batch * channels + channel, mask=channel_mask, other=0.0)
    grad_state = tl.load(d_final_state_pointer + batch * channels + channel, mask=channel_mask, other=0.0)  # G
    for reverse_t in range(length):
        t = length - 1 - reverse_t
        row = batch * length + t
        x, a, normaliser, decay_squared, reset = _load_step(x_pointer, log_a_pointer, reset_pointer, row, channel,
                                                            channel_mask, channels)
        previous = initial_state  # h_{t-1}: the initial state at t = 0, else what the forward stored at t − 1
        if t > 0:
            previous = tl.load(states_pointer + (row - 1) * channels + channel, mask=channel_mask, other=0.0)
        dh = tl.load(dh_pointer + row * channels + channel, mask=channel_mask, other=0.0).to(tl.float32)
        grad_state += dh  # now the whole gradient of h_t
        tl.store(dx_pointer + row * channels + channel, (normaliser * grad_state).to(dx_pointer.dtype.element_ty),
                 mask=channel_mask)
        # dm_t/dlog a_t = dm/du · du/dlog a_t with u = 1 − a_t², dm/du clipped as the reference's SqrtBoundedGradient
        d_normaliser = -2.0 * decay_squared / tl.sqrt(tl.maximum(4.0 * (1.0 - decay_squared), MIN_FOUR_U))
        d_log_a = tl.where(reset, 0.0, grad_state * (previous * a + x * d_normaliser))
        tl.store(d_log_a_pointer + row * channels + channel, d_log_a.to(d_log_a_pointer.dtype.element_ty),
                 mask=channel_mask)
        grad_state = a * grad_state  # now the gradient of h_{t-1}
    tl.store(d_initial_state_pointer + batch * channels + channel, grad_state, mask=channel_mask)


class _RGLRUScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, log_a, reset, initial_state):
        batch, length, channels = x.shape
        ctx.initial_state_dtype = None if initial_state is None else initial_state.dtype
        fp32 = dict(device=x.device, dtype=torch.float32)
        if initial_state is None:
            initial_state = torch.zeros(batch, channels, **fp32)
        x, log_a, reset = x.contiguous(), log_a.contiguous(), reset.contiguous()
        initial_state = initial_state.float().contiguous()
        states = torch.empty(batch, length, channels, **fp32)  # every h_t, kept for the backward
        final_state = torch.empty(batch, channels, **fp32)
        _forward_kernel[(batch, triton.cdiv(channels, BLOCK_R))](
            x, log_a, reset, initial_state, states, final_state, length, channels, BLOCK_R=BLOCK_R)
        ctx.save_for_backward(x, log_a, reset, initial_state, states)
        return states.to(x.dtype), final_state

    @staticmethod
    def backward(ctx, dh, d_final_state):
        x, log_a, reset, initial_state, states = ctx.saved_tensors
        batch, length, channels = x.shape
        dx = torch.empty_like(x)
        d_log_a = torch.empty_like(log_a)
        d_initial_state = torch.empty(batch, channels, device=x.device, dtype=torch.float32)
        _backward_kernel[(batch, triton.cdiv(channels, BLOCK_R))](
            x, log_a, reset, initial_state, states, dh.contiguous(), d_final_state.float().contiguous(),
            dx, d_log_a, d_initial_state, length, channels, BLOCK_R=BLOCK_R)
        has_initial_state = ctx.initial_state_dtype is not None
        return dx, d_log_a, None, d_initial_state.to(ctx.initial_state_dtype) if has_initial_state else None


@ops.register("rglru_scan", "triton", devices=DEVICES, dtypes=DTYPES)
def rglru_scan(x, log_a, reset, initial_state=None):
    """nanohybrid/rglru.py's rglru_scan as Triton kernels: h (b, l, r) in x's dtype, final state (b, r) fp32."""
    return _RGLRUScan.apply(x, log_a, reset, initial_state)
