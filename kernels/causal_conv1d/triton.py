"""The depthwise causal convolution of Mamba and Griffin as Triton kernels, with a hand-written backward.

The readable version is nanohybrid/layers.py::causal_conv1d. Per channel c, with K taps w[c, 0..K-1]
(the last multiplies the current token) and the K-1 inputs before the call (the initial state) put in
front of x, so that `padded` has K-1+l rows and row p holds input p - (K-1):

    y[t, c] = bias[c] + Σ_k w[c, k] · padded[t + k, c] · same(t, t + k)

where same(t, p) is 1 when padded row p belongs to output t's document (the document of padded row
t + K - 1) and 0 across a document start; without document starts it is always 1. Document ids are
counted in PyTorch before the kernel (a cumulative sum of the starts; the state's rows are document 0).

Forward (_forward_kernel): a program owns BLOCK_L outputs × BLOCK_C channels and sums the K taps.

Backward, three gradients from the same sum read the other way round:
    d padded[p, c] = Σ_k w[c, k] · dy[p - k, c] · same(p - k, p)      for 0 ≤ p - k < l  (_input_kernel)
    d w[c, k]      = Σ_{b, t} dy[t, c] · padded[t + k, c] · same(t, t + k)              (_weight_kernel)
    d bias[c]      = Σ_{b, t} dy[t, c]                                                   (PyTorch)
The first K-1 rows of d padded are the gradient of the initial state, the rest that of x. The final
state (the last K-1 rows of padded, those of the last document) is a slice taken in PyTorch, whose
autograd adds its gradient to these.

Everything is computed in fp32; y and the gradients are returned in the inputs' dtypes.

Shape glossary
  b batch   l length   c channels   K taps   x, y (b, l, c)   weight (c, K)   state (b, c, K-1)
"""

import torch
import triton
import triton.language as tl

from kernels import DEVICES, DTYPES
from nanohybrid import ops
from nanohybrid.layers import input_documents, last_document_inputs

BLOCK_L, BLOCK_C = 16, 32


@triton.jit
def _forward_kernel(padded_pointer, document_pointer, weight_pointer, bias_pointer, y_pointer, length, channels,
                    TAPS: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr):
    """Program (batch, time block, channel block): y for BLOCK_L outputs × BLOCK_C channels."""
    batch, time_block, channel_block = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t = time_block * BLOCK_L + tl.arange(0, BLOCK_L)  # (BLOCK_L,) outputs
    channel = channel_block * BLOCK_C + tl.arange(0, BLOCK_C)  # (BLOCK_C,)
    mask = (t < length)[:, None] & (channel < channels)[None, :]
    padded_rows = length + TAPS - 1
    own_document = tl.load(document_pointer + batch * padded_rows + t + TAPS - 1, mask=t < length, other=0)
    y = tl.zeros((BLOCK_L, BLOCK_C), dtype=tl.float32)
    for k in tl.static_range(TAPS):
        row = t + k  # the padded row tap k reads
        inputs = tl.load(padded_pointer + (batch * padded_rows + row)[:, None] * channels + channel[None, :],
                         mask=mask, other=0.0).to(tl.float32)
        same = tl.load(document_pointer + batch * padded_rows + row, mask=t < length, other=0) == own_document
        tap = tl.load(weight_pointer + channel * TAPS + k, mask=channel < channels, other=0.0).to(tl.float32)
        y += tl.where(same[:, None], inputs * tap[None, :], 0.0)
    if HAS_BIAS:
        y += tl.load(bias_pointer + channel, mask=channel < channels, other=0.0).to(tl.float32)[None, :]
    tl.store(y_pointer + (batch * length + t)[:, None] * channels + channel[None, :],
             y.to(y_pointer.dtype.element_ty), mask=mask)


@triton.jit
def _input_kernel(dy_pointer, document_pointer, weight_pointer, d_padded_pointer, length, channels,
                  TAPS: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr):
    """Program (batch, padded-row block, channel block): d padded for BLOCK_L rows × BLOCK_C channels."""
    batch, row_block, channel_block = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    padded_rows = length + TAPS - 1
    p = row_block * BLOCK_L + tl.arange(0, BLOCK_L)  # (BLOCK_L,) padded rows
    channel = channel_block * BLOCK_C + tl.arange(0, BLOCK_C)
    row_mask = p < padded_rows
    document = tl.load(document_pointer + batch * padded_rows + p, mask=row_mask, other=0)
    grad = tl.zeros((BLOCK_L, BLOCK_C), dtype=tl.float32)
    for k in tl.static_range(TAPS):
        t = p - k  # the output that read row p through tap k
        valid = row_mask & (t >= 0) & (t < length)
        readers_document = tl.load(document_pointer + batch * padded_rows + t + TAPS - 1, mask=valid, other=0)
        valid = valid & (readers_document == document)
        dy = tl.load(dy_pointer + (batch * length + t)[:, None] * channels + channel[None, :],
                     mask=valid[:, None] & (channel < channels)[None, :], other=0.0).to(tl.float32)
        tap = tl.load(weight_pointer + channel * TAPS + k, mask=channel < channels, other=0.0).to(tl.float32)
        grad += dy * tap[None, :]
    tl.store(d_padded_pointer + (batch * padded_rows + p)[:, None] * channels + channel[None, :], grad,
             mask=row_mask[:, None] & (channel < channels)[None, :])


@triton.jit
def _weight_kernel(dy_pointer, padded_pointer, document_pointer, d_weight_pointer, batches, length, channels,
                   TAPS: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr):
    """Program (channel block, tap k): d w[:, k] for BLOCK_C channels, summed over every batch row and output."""
    channel_block, k = tl.program_id(0), tl.program_id(1)
    channel = channel_block * BLOCK_C + tl.arange(0, BLOCK_C)
    padded_rows = length + TAPS - 1
    total = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for batch in range(batches):
        for start in range(0, length, BLOCK_L):
            t = start + tl.arange(0, BLOCK_L)
            mask = (t < length)[:, None] & (channel < channels)[None, :]
            own_document = tl.load(document_pointer + batch * padded_rows + t + TAPS - 1, mask=t < length, other=0)
            same = tl.load(document_pointer + batch * padded_rows + t + k, mask=t < length, other=0) == own_document
            dy = tl.load(dy_pointer + (batch * length + t)[:, None] * channels + channel[None, :], mask=mask,
                         other=0.0).to(tl.float32)
            inputs = tl.load(padded_pointer + (batch * padded_rows + t + k)[:, None] * channels + channel[None, :],
                             mask=mask, other=0.0).to(tl.float32)
            total += tl.sum(tl.where(same[:, None], dy * inputs, 0.0), axis=0)
    tl.store(d_weight_pointer + channel * TAPS + k, total, mask=channel < channels)


class _CausalConv1d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, padded, document, weight, bias):
        """padded (b, K-1+l, c), document (b, K-1+l) int32 -> y (b, l, c)."""
        batch, padded_rows, channels = padded.shape
        taps = weight.shape[1]
        length = padded_rows - (taps - 1)
        y = torch.empty(batch, length, channels, device=padded.device, dtype=padded.dtype)
        grid = (batch, triton.cdiv(length, BLOCK_L), triton.cdiv(channels, BLOCK_C))
        _forward_kernel[grid](padded, document, weight, weight if bias is None else bias, y, length, channels,
                              TAPS=taps, HAS_BIAS=bias is not None, BLOCK_L=BLOCK_L, BLOCK_C=BLOCK_C)
        ctx.save_for_backward(padded, document, weight)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        padded, document, weight = ctx.saved_tensors
        batch, padded_rows, channels = padded.shape
        taps = weight.shape[1]
        length = padded_rows - (taps - 1)
        dy = dy.contiguous()
        d_padded = torch.empty(batch, padded_rows, channels, device=padded.device, dtype=torch.float32)
        grid = (batch, triton.cdiv(padded_rows, BLOCK_L), triton.cdiv(channels, BLOCK_C))
        _input_kernel[grid](dy, document, weight, d_padded, length, channels, TAPS=taps, BLOCK_L=BLOCK_L,
                            BLOCK_C=BLOCK_C)
        d_weight = torch.empty(channels, taps, device=padded.device, dtype=torch.float32)
        _weight_kernel[(triton.cdiv(channels, BLOCK_C), taps)](dy, padded, document, d_weight, batch, length, channels,
                                                               TAPS=taps, BLOCK_L=BLOCK_L, BLOCK_C=BLOCK_C)
        d_bias = dy.float().sum(dim=(0, 1)).to(weight.dtype) if ctx.has_bias else None
        return d_padded.to(padded.dtype), None, d_weight.to(weight.dtype), d_bias


@ops.register("causal_conv1d", "triton", devices=DEVICES, dtypes=DTYPES)
def causal_conv1d(x, weight, bias=None, initial_state=None, starts=None):
    """nanohybrid/layers.py's causal_conv1d as Triton kernels: y (b, l, c), final state (b, c, K-1)."""
    batch, length, channels = x.shape
    last = weight.shape[1] - 1
    if initial_state is None:
        initial_state = x.new_zeros(batch, channels, last)
    padded = torch.cat([initial_state.to(x.dtype).transpose(1, 2), x], dim=1).contiguous()  # (b, K-1+l, c)
    starts = torch.zeros(batch, length, dtype=torch.bool, device=x.device) if starts is None else starts
    document = input_documents(starts, last).to(torch.int32).contiguous()  # (b, K-1+l)
    y = _CausalConv1d.apply(padded, document, weight.contiguous(), None if bias is None else bias.contiguous())
    return y, last_document_inputs(padded.transpose(1, 2), document, last)
