"""The Hymba hybrid-head mixer: attention heads and SSM heads in parallel on the same input.

Reference: Dong et al. 2024, "Hymba: A Hybrid-head Architecture for Small Language Models"
(arXiv 2411.13676), §2.1, Eq. 3; layout of the official `HymbaBlock` (`modeling_hymba.py` of Hymba-1.5B;
docs/conventions.md, "Hymba layout"):

    [Q, K, V, X_ssm, G] = W_in X̃                     one fused projection (no K, V in a KV consumer)
    Y_attn = softmax(Q Kᵀ / sqrt(hd)) V               value heads are 2·hd wide, so Y_attn has d_inner channels
    Y_ssm  = SiLU(G) ⊙ SSM(X_ssm)                     Mamba-1 selective scan (RMSNorm on dt, B, C), gated by z = G
    Y      = W_out( (β1 ⊙ norm(Y_attn) + β2 ⊙ norm(Y_ssm)) / 2 )

β1 and β2 are the weights of the two RMSNorms, so zeroing one removes that branch exactly. The
attention has no output projection of its own: W_out is shared by both branches.

Initialising β. The released code starts β at 1 (the paper does not say how it trained). Then every
head sends unit-RMS vectors through W_out into the residual stream: hymba-small's first layer writes
3.9× the RMS of the token embeddings at step 0, where llama3-small's attention writes 0.42×. That
output, nearly the same at every position, drowns which token is where: a 2-layer Hymba did not learn
associative recall (MQAR) in 2800 steps. Starting β at 0.1, as LayerScale starts its per-channel
residual scales (Touvron et al. 2021, CaiT), brings the write to 0.39×, and a 2-layer Hymba without
meta tokens learns MQAR in 400 steps (Llama 3: 1200; diagnostic runs at l = 32, D = 4, batch 64,
lr 1e-3). `fusion_beta_init` sets it; 1 gives the released code's init.

Shape glossary
  b batch   l length   d d_model   E d_inner = expand·d   h query heads   h_kv key/value heads
  hd = d / h query/key head dim    hd_v = E / h value head dim
"""

import torch
import torch.nn as nn

from .attention import AttentionCore
from .cache import ForwardContext
from .config import LayerSpec, ModelConfig
from .layers import RMSNorm
from .mamba import SelectiveSSM


class HybridHead(nn.Module):
    def __init__(self, config: ModelConfig, spec: LayerSpec, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        inner, heads, kv_heads, head_dim = config.d_inner, config.n_heads, config.n_kv_heads, config.qk_head_dim
        value_head_dim = inner // heads
        self.shape_q, self.shape_k, self.shape_v = (heads, head_dim), (kv_heads, head_dim), (kv_heads, value_head_dim)
        self.owns_kv = spec.kv_producer is None
        kv_sizes = [kv_heads * head_dim, kv_heads * value_head_dim] if self.owns_kv else []
        self.split_sizes = [heads * head_dim, *kv_sizes, inner, inner]  # Q, (K, V), X_ssm, gate
        self.in_proj = nn.Linear(config.d_model, sum(self.split_sizes), bias=False)
        self.attention = AttentionCore(config, spec, layer_idx)
        self.ssm = SelectiveSSM(config)
        self.attention_norm = RMSNorm(inner, config.norm_eps)  # weight = β1
        self.ssm_norm = RMSNorm(inner, config.norm_eps)  # weight = β2
        self.out_proj = nn.Linear(inner, config.d_model, bias=False)
        self.beta_init = config.fusion_beta_init

    def init_weights(self) -> None:
        nn.init.constant_(self.attention_norm.weight, self.beta_init)
        nn.init.constant_(self.ssm_norm.weight, self.beta_init)

    def forward(self, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:  # (b, l, d) -> (b, l, d)
        parts = self.in_proj(hidden).split(self.split_sizes, dim=-1)
        if self.owns_kv:
            q, k, v, x, gate = parts
            k, v = k.unflatten(-1, self.shape_k), v.unflatten(-1, self.shape_v)
        else:
            (q, x, gate), k, v = parts, None, None
        attention_out = self.attention(q.unflatten(-1, self.shape_q), k, v, ctx)  # (b, l, E)
        ssm_out, state = self.ssm(x, gate, ctx.state((self.layer_idx, "ssm")))  # (b, l, E)
        ctx.save((self.layer_idx, "ssm"), state)
        return self.out_proj((self.attention_norm(attention_out) + self.ssm_norm(ssm_out)) / 2)
