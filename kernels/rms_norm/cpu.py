"""RMSNorm, the CPU fast path: nanohybrid/layers.py::rms_norm with its backward pass written out.

Zhang & Sennrich 2019, "Root Mean Square Layer Normalization" (arXiv 1910.07467), Eq. 4, over each group
of channels (Mamba-2's grouped norm). With x̂ = x · r, r = 1/sqrt(mean(x²) + eps), y = x̂ ⊙ s and
ĝ = ∂L/∂y ⊙ s (the means over each group):

    ∂L/∂x = r · (ĝ - x̂ · mean(ĝ ⊙ x̂))        ∂L/∂s = Σ over tokens of ∂L/∂y ⊙ x̂

Autograd, differentiating the square, the mean, the rsqrt and two products one by one, passes over the
activations about twice as often; a norm runs twice in every layer. When nothing needs a gradient the
forward runs without the Function, whose call costs more than a decode step's norm.

Shape glossary
  x, y (..., D)   scale s (D,), fp32 or wider   groups of group_size channels: (..., D / group_size, group_size)
  x̂ (..., D) and r (..., groups, 1), in s's dtype
"""

import torch

from nanohybrid import ops


def normalise(x, scale, group_size: int, eps: float):
    """y (..., D) in x's dtype, x̂ (..., D) and r (..., groups, 1), the last two in scale's dtype."""
    grouped = x.to(scale.dtype).unflatten(-1, (-1, group_size))  # (..., groups, group_size)
    rstd = torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + eps)
    normed = (grouped * rstd).flatten(-2)
    return (normed * scale).to(x.dtype), normed, rstd


class RMSNormFunction(torch.autograd.Function):
    """normalise's y, with the backward pass of the module's docstring."""

    @staticmethod
    def forward(ctx, x, scale, group_size: int, eps: float):
        y, normed, rstd = normalise(x, scale, group_size, eps)
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


@ops.register("rms_norm", "cpu", devices=("cpu",))
def rms_norm(x, scale, group_size, eps):
    """ops.rms_norm: y (..., D) in x's dtype."""
    if torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad):
        return RMSNormFunction.apply(x, scale, group_size, eps)
    return normalise(x, scale, group_size, eps)[0]
