"""The Gated DeltaNet mixer, as Qwen3-Next builds it, on the gated delta rule of delta_rule.py.

References: Yang, Kautz & Hatamizadeh 2024 (arXiv 2412.06464), §3.3 and Figure 1 (the block: short
convolutions and SiLU on q, k, v; L2-normalised q and k; an output gate and norm); the conventions of
Qwen3-Next's layer (transformers' `Qwen3NextGatedDeltaNet`; docs/delta_rule.md, "The Qwen3-Next layer"):

    [q | k | v | z | b | a] = in_proj(x)
    [q | k | v] = SiLU(causal_conv1d([q | k | v]))           one depthwise conv over the three, no bias
    q = q / ‖q‖ / √d_k,  k = k / ‖k‖                          per head (‖·‖ with eps 1e-6 under the root)
    β_t = σ(b_t),  g_t = −exp(A_log) · softplus(a_t + dt_bias)  per value head: α_t = exp(g_t), Mamba-2's gate
    o = gated_delta_rule(q, k, v, g, β)                       value head j reads query/key head j // (H_v/H)
    y = out_proj(RMSNorm(o) ⊙ SiLU(z))                        the norm per value head, weight from 1

Shape glossary
  b batch   l length   d d_model   H query/key heads   H_v value heads   d_k key head dim   d_v value head dim
  K conv width   state (b, H_v, d_k, d_v)
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops
from .cache import ForwardContext, RecurrentState
from .config import ModelConfig
from .layers import CausalConv1d, RMSNorm
from .mamba import init_dt_bias


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(‖x‖² + eps) over the last axis, computed in fp32 at least."""
    x32 = x.to(ops.compute_dtype(x))
    return (x32 * torch.rsqrt(x32.pow(2).sum(-1, keepdim=True) + eps)).to(x.dtype)


class GatedDeltaNet(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx, self.chunk_size = layer_idx, config.chunk_size
        self.heads, self.value_heads = config.gdn_n_heads, config.gdn_value_heads
        self.key_head_dim, self.value_head_dim = config.gdn_head_dim, config.gdn_v_head_dim
        key_width, value_width = self.heads * self.key_head_dim, self.value_heads * self.value_head_dim
        self.qkv_sizes = [key_width, key_width, value_width]
        self.split_sizes = [sum(self.qkv_sizes), value_width, self.value_heads, self.value_heads]  # [q | k | v], z, b, a
        self.in_proj = nn.Linear(config.d_model, sum(self.split_sizes), bias=False)
        self.conv1d = CausalConv1d(2 * key_width + value_width, config.d_conv, bias=False)
        self.A_log = nn.Parameter(torch.empty(self.value_heads))
        self.dt_bias = nn.Parameter(torch.empty(self.value_heads))
        self.norm = RMSNorm(self.value_head_dim, config.norm_eps)
        self.out_proj = nn.Linear(value_width, config.d_model, bias=False)

    def init_weights(self) -> None:
        """Mamba-2's: A ~ U[1, 16], softplus(dt_bias) log-uniform in [1e-3, 1e-1] (the GDN paper keeps its gate)."""
        with torch.no_grad():
            self.A_log.copy_(torch.log(torch.empty_like(self.A_log).uniform_(1, 16)))
            init_dt_bias(self.dt_bias)

    def forward(self, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:  # (b, l, d) -> (b, l, d)
        state = ctx.state((self.layer_idx, "ssm"))
        qkv, z, b, a = self.in_proj(hidden).split(self.split_sizes, dim=-1)
        qkv, conv_state = self.conv1d(qkv, None if state is None else state.conv)
        q, k, v = F.silu(qkv).split(self.qkv_sizes, dim=-1)
        q, k = (t.unflatten(-1, (self.heads, self.key_head_dim)) for t in (q, k))  # (b, l, H, d_k)
        v = v.unflatten(-1, (self.value_heads, self.value_head_dim))  # (b, l, H_v, d_v)
        q, k = l2_normalize(q) * self.key_head_dim**-0.5, l2_normalize(k)
        group = self.value_heads // self.heads  # value heads per query/key head
        q, k = q.repeat_interleave(group, dim=2), k.repeat_interleave(group, dim=2)  # (b, l, H_v, d_k)
        dtype = ops.compute_dtype(a)  # fp32, or fp64 for an fp64 model
        beta = torch.sigmoid(b.to(dtype))  # (b, l, H_v)
        g = -torch.exp(self.A_log.to(dtype)) * F.softplus(a.to(dtype) + self.dt_bias.to(dtype))  # log α ≤ 0
        o, delta_state = ops.gated_delta_rule(q, k, v, g, beta, self.chunk_size, None if state is None else state.ssm)
        ctx.save((self.layer_idx, "ssm"), RecurrentState(conv_state, delta_state))
        y = self.norm(o) * F.silu(z.unflatten(-1, (self.value_heads, self.value_head_dim)))
        return self.out_proj(y.flatten(-2))
