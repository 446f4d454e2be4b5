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


@ops.register("rms_norm", "reference")
def rms_norm(x, scale, group_size, eps):
    """y = x / sqrt(mean(x²) + eps) ⊙ scale, the mean over each group of `group_size` channels, computed in
    scale's dtype (fp32, or fp64 in fp64 tests) and returned in x's. x (..., D); scale (D,) -> y (..., D).
    The CPU fast form, with the backward written out, is kernels/rms_norm/cpu.py."""
    grouped = x.to(scale.dtype).unflatten(-1, (-1, group_size))  # (..., groups, group_size)
    normed = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + eps)
    return (normed.flatten(-2) * scale).to(x.dtype)


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * w, computed in fp32 and cast back (the op ops.rms_norm).

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
        weight = self.weight.to(ops.compute_dtype(self.weight))  # fp32, or fp64 in fp64 tests
        scale = weight + 1.0 if self.offset else weight
        return ops.rms_norm(x, scale, self.group_size, self.eps)


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


@ops.register("causal_conv1d", "reference")
def causal_conv1d(x, weight, bias=None, initial_state=None, starts=None):
    """Depthwise causal convolution over time: y_t = bias + Σ_k w[k] ⊙ x_{t-K+1+k}.

    x (b, l, c); weight (c, K), the last tap multiplying the current token; bias (c,) or None;
    initial_state (b, c, K-1), the K-1 inputs before x (None: zeros, the same as left zero padding);
    starts (b, l) bool or None, True at a document's first token, cuts the taps at document boundaries
    (DeepMind's RecurrentGemma; transformers does not): y_t only reads inputs of its own document.
    Returns y (b, l, c) in x's dtype and the final state (b, c, K-1): the last K-1 inputs, those of the
    last document. The fast forms: kernels/causal_conv1d/cpu.py and triton.py.
    """
    padded, document = padded_inputs(x, weight, initial_state, starts)  # (b, K-1+l, c), (b, K-1+l) or None
    length, last = x.shape[1], weight.shape[1] - 1  # l; K-1
    y = 0.0 if bias is None else bias
    for k in range(last + 1):  # tap k reads padded row t + k, that is x_{t-K+1+k}
        tap = padded[:, k : k + length]
        if document is not None:  # ... only from t's own document
            tap = tap * (document[:, k : k + length] == document[:, last:])[..., None]
        y = y + tap * weight[:, k]
    return y.to(x.dtype), next_state(padded, document, last)


def padded_inputs(x, weight, initial_state=None, starts=None):
    """The K-1 inputs of the state, then x: padded (b, K-1+l, c) in x's dtype; and, if documents are given,
    the document of every padded input (b, K-1+l), else None."""
    last = weight.shape[1] - 1
    if initial_state is None:
        initial_state = x.new_zeros(x.shape[0], x.shape[2], last)
    padded = torch.cat([initial_state.transpose(1, 2).to(x.dtype), x], dim=1)
    return padded, None if starts is None else input_documents(starts, last)


def next_state(padded, document, last: int) -> torch.Tensor:
    """The conv's state after the call (b, c, K-1): the last K-1 inputs, those of the last document."""
    if document is None:
        return padded[:, padded.shape[1] - last :].transpose(1, 2)
    return last_document_inputs(padded.transpose(1, 2), document, last)


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
