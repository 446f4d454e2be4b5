"""The depthwise causal conv of Mamba and Griffin, the CPU fast path: the K taps as K shifted multiply-adds
in x's own (b, l, c) layout, with the backward pass written out.

The readable form is nanohybrid/layers.py::causal_conv1d; this one computes the same sum,
y_t = bias + Σ_k w[k] ⊙ padded_{t+k}, where visible_k[t] cuts tap k at a document boundary. With K = 4
that is faster on a CPU than F.conv1d, whose (b, c, l) layout costs two transposes and leaves y
non-contiguous.

The backward (ShiftedTaps). Read backwards, each input padded_s fed the outputs y_{s-k}, so its gradient
is the same taps run the other way in time (an anti-causal conv): ∂L/∂padded_s = Σ_k w[k] ⊙ ∂L/∂y_{s-k};
and tap k's gradient is Σ over batch and time of ∂L/∂y_t ⊙ padded_{t+k}. Written this way, each tap costs
one multiply-add into a single gradient buffer, where autograd gives every shifted slice of `padded` its
own zero-filled, full-size gradient to sum. When nothing needs a gradient the taps run without the
Function, whose call costs more than a decode step's arithmetic.

Shape glossary
  b batch   l length   c channels   K taps   x, y (b, l, c)   padded (b, K-1+l, c)   weight (c, K)
  visible (K-1, b, l, 1): 1 where tap k may read   state (b, c, K-1)
"""

import torch

from nanohybrid import ops
from nanohybrid.layers import next_state, padded_inputs


def shifted_taps(padded, weight, bias, visible):
    """y_t = bias + Σ_k w[k] ⊙ padded_{t+k} (tap k cut where visible[k] is 0): ShiftedTaps' forward."""
    length, last = padded.shape[1] - weight.shape[1] + 1, weight.shape[1] - 1  # l; K-1
    y = padded[:, last:] * weight[:, last]  # tap K-1: the current token, never cut
    if bias is not None:
        y += bias
    for k in range(last):
        tap = padded[:, k : k + length] if visible is None else padded[:, k : k + length] * visible[k]
        y.addcmul_(tap, weight[:, k])
    return y


class ShiftedTaps(torch.autograd.Function):
    """shifted_taps with the backward pass written out (see the module's docstring)."""

    @staticmethod
    def forward(ctx, padded, weight, bias, visible):
        ctx.save_for_backward(padded, weight, visible)
        ctx.has_bias = bias is not None
        return shifted_taps(padded, weight, bias, visible)

    @staticmethod
    def backward(ctx, grad_y):
        padded, weight, visible = ctx.saved_tensors
        length, last = grad_y.shape[1], weight.shape[1] - 1
        grad_padded = torch.zeros_like(padded, dtype=grad_y.dtype)
        grad_weight = torch.empty_like(weight, dtype=grad_y.dtype)
        for k in range(last + 1):
            grad_tap = grad_y if visible is None or k == last else grad_y * visible[k]  # ∂L/∂(tap k's inputs) / w[k]
            grad_padded[:, k : k + length].addcmul_(grad_tap, weight[:, k])
            grad_weight[:, k] = (grad_tap * padded[:, k : k + length]).sum(dim=(0, 1))
        grad_bias = grad_y.sum(dim=(0, 1)).to(weight.dtype) if ctx.has_bias else None
        return grad_padded.to(padded.dtype), grad_weight.to(weight.dtype), grad_bias, None


@ops.register("causal_conv1d", "cpu", devices=("cpu",))
def causal_conv1d(x, weight, bias=None, initial_state=None, starts=None):
    """ops.causal_conv1d as shifted taps: y (b, l, c) in x's dtype and the final state (b, c, K-1)."""
    padded, document = padded_inputs(x, weight, initial_state, starts)
    length, last = x.shape[1], weight.shape[1] - 1  # l; K-1
    visible = None if document is None else torch.stack(  # tap k reads x_{t-K+1+k} only from t's own document
        [document[:, k : k + length, None] == document[:, last:, None] for k in range(last)]).to(x.dtype)
    needs_gradient = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (padded, weight, bias))
    taps = ShiftedTaps.apply if needs_gradient else shifted_taps
    # In x's dtype, as F.conv1d returns it: under bf16 autocast, the fp32 weights promote the products.
    return taps(padded, weight, bias, visible).to(x.dtype), next_state(padded, document, last)
