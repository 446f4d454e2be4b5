"""Building blocks shared by every architecture: RMSNorm, RoPE, gated MLPs, causal conv1d.

References
  RMSNorm        Zhang & Sennrich 2019; the Gemma form scales by (1 + w) (Griffin/RecurrentGemma).
  RoPE           Su et al. 2021, "rotate-half" pairing; partial rotary rotates only the first
                 `rotary_dim` channels of each head (RecurrentGemma rotates half of them).
  SwiGLU/GeGLU   Shazeer 2020: down(act(gate(x)) * up(x)), act = SiLU or tanh-approximated GELU.
  Conv1d         Mamba / Griffin: a depthwise causal convolution over time, kernel width K.

Shape glossary
  b  batch            l  sequence length        d  model width
  h  heads            hd head dim               c  conv channels     K  conv kernel width
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops


def rms_norm(x, scale, group_size: int, eps: float):
    """y = x̂ ⊙ s in x's dtype, with x̂ = x · r (..., D) and r = 1/sqrt(mean(x²) + eps) over each group of
    channels (..., groups, 1), computed in s's dtype. x (..., D), scale s (D,) -> y, x̂, r."""
    grouped = x.to(scale.dtype).unflatten(-1, (-1, group_size))  # (..., groups, group_size)
    rstd = torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + eps)
    normed = (grouped * rstd).flatten(-2)
    return (normed * scale).to(x.dtype), normed, rstd


class RMSNormFunction(torch.autograd.Function):
    """y = x̂ ⊙ s with x̂ = x · r and r = 1/sqrt(mean(x²) + eps) over each group of channels, in s's dtype, with
    the backward pass written out (ĝ = ∂L/∂y ⊙ s, the means over each group):

        ∂L/∂x = r · (ĝ - x̂ · mean(ĝ ⊙ x̂))        ∂L/∂s = Σ over tokens of ∂L/∂y ⊙ x̂

    Autograd, differentiating the square, the mean, the rsqrt and two products one by one, passes over
    the activations about twice as often; a norm runs twice in every layer.
    x (..., D); scale s (D,), fp32 or wider; returns y (..., D) in x's dtype.
    """

    @staticmethod
    def forward(ctx, x, scale, group_size: int, eps: float):
        y, normed, rstd = rms_norm(x, scale, group_size, eps)
        ctx.save_for_backward(normed, rstd, scale)
        return y

    @staticmethod
    def backward(ctx, grad):
        normed, rstd, scale = ctx.saved_tensors
        x_dtype, grad = grad.dtype, grad.to(scale.dtype)  # autograd hands the gradient in y's dtype, which is x's
        groups = rstd.shape[-2]
        grad_normed = (grad * scale).unflatten(-1, (groups, -1))  # ĝ, (..., groups, group_size)
        normed_grouped = normed.unflatten(-1, (groups, -1))
        mean_product = (grad_normed * normed_grouped).mean(-1, keepdim=True)  # mean(ĝ ⊙ x̂), (..., groups, 1)
        grad_x = torch.addcmul(grad_normed, normed_grouped, mean_product, value=-1.0).mul_(rstd).flatten(-2)
        grad_scale = (grad * normed).flatten(0, -2).sum(0)
        return grad_x.to(x_dtype), grad_scale, None, None


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * w, computed in fp32 and cast back (RMSNormFunction).

    With `offset=True` (Gemma) the scale is (1 + w) and w starts at 0, otherwise it is w, starting at 1.
    `group_size` normalises each group of channels on its own (Mamba-2's grouped norm).
    """

    def __init__(self, dim: int, eps: float, offset: bool = False, group_size: int | None = None):
        super().__init__()
        self.eps, self.offset = eps, offset
        self.group_size = group_size or dim
        if dim % self.group_size:
            raise ValueError(f"RMSNorm: group_size {group_size} must divide dim {dim}")
        self.weight = nn.Parameter(torch.zeros(dim) if offset else torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.to(torch.promote_types(self.weight.dtype, torch.float32))  # fp32, or fp64 in fp64 tests
        scale = weight + 1.0 if self.offset else weight
        if torch.is_grad_enabled():
            return RMSNormFunction.apply(x, scale, self.group_size, self.eps)
        return rms_norm(x, scale, self.group_size, self.eps)[0]  # inference: no Function, whose call costs ~7 µs


class RotaryEmbedding(nn.Module):
    """Rotary position embedding on the first `rotary_dim` channels of each head.

    Channel pairs are (i, i + rotary_dim/2) ("rotate half"), with frequency theta^(-2i/rotary_dim).
    Angles are computed in fp32 from integer positions, so any position works without a table.
    """

    def __init__(self, rotary_dim: int, theta: float):
        super().__init__()
        if rotary_dim % 2:
            raise ValueError(f"RoPE needs an even rotary_dim, got {rotary_dim}")
        self.rotary_dim, self.theta = rotary_dim, theta
        inv_freq = 1.0 / theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def angles(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (b, l) -> cos and sin of every channel's angle, each (b, 1, l, rotary_dim): channels i and
        i + rotary_dim/2 form a pair and turn by the same angle."""
        angles = positions[:, None, :, None].float() * self.inv_freq  # (b, 1, l, rotary_dim/2)
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos(), angles.sin()

    def forward(self, x: torch.Tensor, positions: torch.Tensor, angles=None) -> torch.Tensor:
        """x: (b, h, l, hd), positions: (b, l) -> same shape as x. `angles`: self.angles(positions), when
        already computed (ForwardContext.rotary_angles shares them between the layers of one call)."""
        cos, sin = self.angles(positions) if angles is None else angles
        rotated, passed = x[..., : self.rotary_dim].float(), x[..., self.rotary_dim :]
        x1, x2 = rotated.chunk(2, dim=-1)
        half_turned = torch.cat([-x2, x1], dim=-1)  # each pair (x1, x2) turned by 90°: (-x2, x1)
        rotated = (rotated * cos + half_turned * sin).to(x.dtype)  # (x1 cos - x2 sin, x2 cos + x1 sin)
        return torch.cat([rotated, passed], dim=-1) if passed.shape[-1] else rotated


def split_linear(x: torch.Tensor, weight: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """F.linear(x, weight).split(sizes, dim=-1), computed as one product per part: each part comes out
    contiguous, and the backward never concatenates the parts' gradients into one full-width tensor."""
    return [F.linear(x, part) for part in weight.split(sizes)]


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)): SwiGLU with act=SiLU (Llama, Hymba, Jamba), GeGLU with GELU-tanh (Griffin)."""

    def __init__(self, d_model: int, d_ff: int, activation: str, bias: bool):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (b, l, d) -> (b, l, d)
        gate = self.gate_proj(x)
        gate = F.silu(gate) if self.activation == "silu" else F.gelu(gate, approximate="tanh")
        return self.down_proj(gate * self.up_proj(x))


def shifted_taps(padded, weight, bias, visible):
    """ShiftedTaps' forward, y_t = bias + Σ_k w[k] ⊙ padded_{t+k}, also run directly when nothing needs a gradient."""
    length, last = padded.shape[1] - weight.shape[1] + 1, weight.shape[1] - 1  # l; K-1
    y = padded[:, last:] * weight[:, last]  # tap K-1: the current token, never cut
    if bias is not None:
        y += bias
    for k in range(last):
        tap = padded[:, k : k + length] if visible is None else padded[:, k : k + length] * visible[k]
        y.addcmul_(tap, weight[:, k])
    return y


class ShiftedTaps(torch.autograd.Function):
    """The taps of a causal conv, y_t = Σ_k w[k] ⊙ padded_{t+k} (visible_k[t] cuts tap k at a document
    boundary), with the backward pass written out.

    Read backwards, each input padded_s fed the outputs y_{s-k}, so its gradient is the same taps run
    the other way in time (an anti-causal conv): ∂L/∂padded_s = Σ_k w[k] ⊙ ∂L/∂y_{s-k}; and tap k's
    gradient is Σ over batch and time of ∂L/∂y_t ⊙ padded_{t+k}. Written this way, each tap costs one
    multiply-add into a single gradient buffer, where autograd would give every shifted slice of
    `padded` its own zero-filled, full-size gradient to sum.

    padded (b, K-1+l, c); weight (c, K); visible (K-1, b, l, 1), 1 where tap k may read, or None -> y (b, l, c).
    """

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


@ops.register("causal_conv1d", "reference")
def causal_conv1d(x, weight, bias=None, initial_state=None, starts=None):
    """Depthwise causal convolution over time: y_t = bias + sum_k w[k] * x_{t-K+1+k}.

    x (b, l, c); weight (c, K), the last tap multiplying the current token; bias (c,) or None;
    initial_state (b, c, K-1), the K-1 inputs before x (None: zeros, the same as left zero padding);
    starts (b, l) bool or None, True at a document's first token, cuts the taps at document boundaries
    (DeepMind's RecurrentGemma; transformers does not): y_t only reads inputs of its own document.
    Returns y (b, l, c) and the final state (b, c, K-1): the last K-1 inputs, those of the last document.

    The K taps are K shifted multiply-adds over (b, l, c), in x's own layout (ShiftedTaps): with K = 4
    that is faster on a CPU than F.conv1d, whose (b, c, l) layout costs two transposes and leaves y
    non-contiguous.
    """
    length, last = x.shape[1], weight.shape[1] - 1  # l; K-1
    if initial_state is None:
        initial_state = x.new_zeros(x.shape[0], x.shape[2], last)
    padded = torch.cat([initial_state.transpose(1, 2).to(x.dtype), x], dim=1)  # (b, K-1+l, c)
    document = None if starts is None else input_documents(starts, last)  # (b, K-1+l)
    visible = None if document is None else torch.stack(  # tap k reads x_{t-K+1+k} only from t's own document
        [document[:, k : k + length, None] == document[:, last:, None] for k in range(last)]).to(x.dtype)
    # In x's dtype, as F.conv1d returns it: under bf16 autocast, the fp32 weights promote the products.
    taps = ShiftedTaps.apply if torch.is_grad_enabled() else shifted_taps  # inference: skip the Function's call cost
    y = taps(padded, weight, bias, visible).to(x.dtype)
    if document is None:
        return y, padded[:, length:].transpose(1, 2)
    return y, last_document_inputs(padded.transpose(1, 2), document, last)


def input_documents(starts, last: int) -> torch.Tensor:
    """starts (b, l) -> the document of every padded input (b, K-1+l), counted from this call's start:
    the K-1 inputs of the state before it are document 0."""
    return F.pad(starts.long().cumsum(dim=1), (last, 0))


def last_document_inputs(padded, document, last: int) -> torch.Tensor:
    """The conv's next state: the last K-1 of the padded inputs (b, c, K-1+l), zeroed where their document
    (b, K-1+l) is not the last token's, so that a later call continues exactly as one long call would."""
    return padded[:, :, padded.shape[-1] - last :] * (document[:, None, -last:] == document[:, None, -1:])


class CausalConv1d(nn.Module):
    """The causal conv1d op (ops.causal_conv1d; the reference is causal_conv1d above) with its weights.

    The state is the last K-1 inputs, so a sequence can be continued (chunked prefill) or decoded one
    token at a time from where it stopped.
    """

    def __init__(self, channels: int, kernel_size: int, bias: bool = True):
        super().__init__()
        # (c, 1, K): PyTorch cross-correlation order, the last tap multiplies the current token.
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None,
                starts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (b, l, c), state: (b, c, K-1) or None, starts (b, l) or None -> y: (b, l, c), new state: (b, c, K-1)."""
        return ops.causal_conv1d(x, self.weight[:, 0], self.bias, state, starts)
