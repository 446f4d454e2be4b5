"""Causal self-attention: global or sliding window, GQA/MQA, RoPE, meta-token prefix, KV sharing.

References
  Attention       Vaswani et al. 2017: softmax(Q Kᵀ / sqrt(hd)) V with a causal mask.
  GQA / MQA       Ainslie et al. 2023 / Shazeer 2019: consecutive query heads share one key/value head.
  Sliding window  Mistral, Griffin's local attention, Hymba's SWA layers. Conventions differ by one:
                  "keys" (Mistral, transformers' RecurrentGemma, Samba): a query sees W keys, itself
                  included (q - k < W); "distance" (Hymba, DeepMind's RecurrentGemma): q - k <= W.
  Meta tokens     Hymba §2.3: the first n_meta stream entries stay visible to every query, window or not.
  KV sharing      Hymba §2.2 (after Brandon et al. 2024): a consumer layer has no K/V projection and
                  attends to its producer's keys and values (RoPE already applied), with its own mask.
  Gated attention Qwen3-Next (after Qiu et al. 2025, "Gated Attention for Large Language Models"): each
                  head's output is gated by σ(W_g x) before o_proj; an RMSNorm on every query and key
                  head; RoPE on a quarter of each head (docs/delta_rule.md, "The Qwen3-Next layer").

The op's reference builds the mask and the scores explicitly; its fast forms are kernels/attention/sdpa.py
(PyTorch's fused attention) and kernels/attention/triton.py (a FlashAttention-style kernel).

Shape glossary
  b batch   l queries in this call   s keys   h query heads   h_kv key/value heads   d d_model
  hd query/key head dim   hd_v value head dim (2·hd in Hymba)
"""

import torch
import torch.nn as nn

from . import ops
from .cache import ForwardContext, KVCache
from .config import LayerSpec, ModelConfig
from .layers import RMSNorm, RotaryEmbedding


def attention_mask(query_index, key_index, query_document, key_document, max_distance: int | None, n_meta: int):
    """Stream indices and document ids of the queries (b, l) and keys (b, s) -> (b, 1, l, s), True where visible.

    A query sees earlier keys of its own document (and all meta tokens), within the window if there is one.
    """
    query, key = query_index[:, :, None], key_index[:, None, :]
    meta = key < n_meta
    visible = (key <= query) & ((query_document[:, :, None] == key_document[:, None, :]) | meta)
    if max_distance is not None:
        visible = visible & ((query - key <= max_distance) | meta)
    return visible[:, None]


def scaled_dot_product_attention(q, k, v, mask, scale: float) -> torch.Tensor:
    """q (b, h, l, hd), k (b, h_kv, s, hd), v (b, h_kv, s, hd_v), mask (b, 1, l, s) -> (b, h, l, hd_v).

    Explicit scores, mask and softmax (in fp32), so every step can be printed and checked.
    """
    group = q.shape[1] // k.shape[1]  # query heads per key/value head
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = torch.einsum("bhld,bhsd->bhls", q.float(), k.float()) * scale
    probabilities = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
    return torch.einsum("bhls,bhsd->bhld", probabilities, v.float()).to(v.dtype)


@ops.register("attention", "reference")
def attention(q, k, v, query_index, key_index, query_document, key_document, max_distance, n_meta, scale):
    """The attention op: the mask built from stream indices and documents, then explicit softmax attention.
    q (b, h, l, hd), k (b, h_kv, s, hd), v (b, h_kv, s, hd_v); indices and documents (b, l), (b, s) -> (b, h, l, hd_v)."""
    mask = attention_mask(query_index, key_index, query_document, key_document, max_distance, n_meta)
    return scaled_dot_product_attention(q, k, v, mask, scale)


class AttentionCore(nn.Module):
    """Everything between the projections: RoPE, KV cache, KV sharing, the mask and the softmax."""

    def __init__(self, config: ModelConfig, spec: LayerSpec, layer_idx: int):
        super().__init__()
        self.layer_idx, self.kv_producer = layer_idx, spec.kv_producer
        head_dim = config.qk_head_dim
        rotary_dim = int(config.rotary_fraction * head_dim)
        self.rope = RotaryEmbedding(rotary_dim, config.rope_theta) if rotary_dim else None
        self.max_distance = config.max_distance(spec.sliding_window)
        self.cache_distance = None if spec.kv_producer is not None else config.kv_cache_distance(layer_idx)
        self.scale = head_dim**-0.5

    def _rotate(self, x, ctx: ForwardContext):
        return x if self.rope is None else self.rope(x, ctx.positions, ctx.rotary_angles(self.rope))

    def forward(self, q, k, v, ctx: ForwardContext) -> torch.Tensor:
        """q (b, l, h, hd); k (b, l, h_kv, hd), v (b, l, h_kv, hd_v), both None for a consumer -> (b, l, h·hd_v)."""
        q = self._rotate(q.transpose(1, 2), ctx)
        if self.kv_producer is not None:
            k, v, key_index, key_document = ctx.shared_kv[self.kv_producer]
        else:
            k, v = self._rotate(k.transpose(1, 2), ctx), v.transpose(1, 2)
            key_index, key_document = ctx.index, ctx.document
            if ctx.cache is not None:
                cache = ctx.state((self.layer_idx, "kv"))
                if cache is None:
                    cache = KVCache.empty(k, v, ctx.n_meta, self.cache_distance)  # what every reader can see
                    ctx.save((self.layer_idx, "kv"), cache)
                k, v, key_index, key_document = cache.extend(k, v, key_index, key_document)
            ctx.shared_kv[self.layer_idx] = (k, v, key_index, key_document)
        out = ops.attention(q, k, v, ctx.index, key_index, ctx.document, key_document,  # (b, h, l, hd_v)
                            self.max_distance, ctx.n_meta, self.scale)
        return out.transpose(1, 2).flatten(2)


class Attention(nn.Module):
    """Multi-head attention with its own q/k/v/o projections (Llama, Mistral, Jamba, Samba, Griffin)."""

    def __init__(self, config: ModelConfig, spec: LayerSpec, layer_idx: int):
        super().__init__()
        heads, kv_heads, head_dim = config.n_heads, config.n_kv_heads, config.qk_head_dim
        self.shape_q, self.shape_kv = (heads, head_dim), (kv_heads, head_dim)
        self.q_proj = nn.Linear(config.d_model, heads * head_dim, bias=config.attention_bias)
        if spec.kv_producer is None:
            self.k_proj = nn.Linear(config.d_model, kv_heads * head_dim, bias=config.attention_bias)
            self.v_proj = nn.Linear(config.d_model, kv_heads * head_dim, bias=config.attention_bias)
        self.core = AttentionCore(config, spec, layer_idx)
        self.o_proj = nn.Linear(heads * head_dim, config.d_model, bias=config.attention_out_bias)

    def forward(self, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:  # (b, l, d) -> (b, l, d)
        q = self.q_proj(hidden).unflatten(-1, self.shape_q)
        k = v = None
        if self.core.kv_producer is None:
            k = self.k_proj(hidden).unflatten(-1, self.shape_kv)
            v = self.v_proj(hidden).unflatten(-1, self.shape_kv)
        return self.o_proj(self.core(q, k, v, ctx))


class GatedAttention(nn.Module):
    """Qwen3-Next's attention: q_proj gives each head its query and an output gate side by side, q and k
    get an RMSNorm per head before RoPE, and the heads' outputs are multiplied by σ(gate) before o_proj."""

    def __init__(self, config: ModelConfig, spec: LayerSpec, layer_idx: int):
        super().__init__()
        heads, kv_heads, head_dim = config.n_heads, config.n_kv_heads, config.qk_head_dim
        self.shape_q, self.shape_kv = (heads, 2 * head_dim), (kv_heads, head_dim)
        self.q_proj = nn.Linear(config.d_model, heads * 2 * head_dim, bias=config.attention_bias)  # [query | gate]
        self.k_proj = nn.Linear(config.d_model, kv_heads * head_dim, bias=config.attention_bias)
        self.v_proj = nn.Linear(config.d_model, kv_heads * head_dim, bias=config.attention_bias)
        self.q_norm = RMSNorm(head_dim, config.norm_eps, config.norm_offset)
        self.k_norm = RMSNorm(head_dim, config.norm_eps, config.norm_offset)
        self.core = AttentionCore(config, spec, layer_idx)
        self.o_proj = nn.Linear(heads * head_dim, config.d_model, bias=config.attention_out_bias)

    def forward(self, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:  # (b, l, d) -> (b, l, d)
        q, gate = self.q_proj(hidden).unflatten(-1, self.shape_q).chunk(2, dim=-1)  # (b, l, h, hd) each
        k = self.k_norm(self.k_proj(hidden).unflatten(-1, self.shape_kv))
        v = self.v_proj(hidden).unflatten(-1, self.shape_kv)
        out = self.core(self.q_norm(q), k, v, ctx)  # (b, l, h·hd)
        return self.o_proj(out * torch.sigmoid(gate.flatten(-2)))
