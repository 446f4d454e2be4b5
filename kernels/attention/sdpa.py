"""Attention through PyTorch's fused scaled_dot_product_attention (SDPA): the fast CPU path of the
attention op, whose readable form is nanohybrid/attention.py::attention (explicit scores, mask, softmax).

SDPA computes softmax(Q Kᵀ · scale + mask) V without exposing the scores. What this adds around it:
  - a call whose mask is the plain lower triangle (training, a prefill over its own keys) takes SDPA's
    causal path, with no mask tensor at all (plainly_causal);
  - every other long call (a sliding window, keys cached before it, packed documents, rows at different
    lengths) runs in blocks of queries (query_blocks), each with its own mask over the keys it may see:
    a block holds block × keys scores at a time, never l × l, and with a window the cost is
    O(l · (window + block)) instead of O(l²);
  - value heads wider than the query heads (Hymba's are 2·hd) are met by zero-padding q and k to their
    width (fused), so that PyTorch's fused kernel runs instead of its math fallback, which holds every
    (l × s) score.

Shape glossary
  b batch   l queries in this call   s keys   h query heads   h_kv key/value heads
  q (b, h, l, hd)   k (b, h_kv, s, hd)   v (b, h_kv, s, hd_v)   indices and documents (b, l), (b, s)
"""

import torch
import torch.nn.functional as F

from nanohybrid import ops
from nanohybrid.attention import attention_mask


def plainly_causal(query_index, key_index, key_document, max_distance, n_meta: int = 0) -> bool:
    """True when the mask is the plain lower triangle: the queries are the keys, in stream order, all in
    one document per row (meta tokens, visible to every document, aside), and no window cuts anything off."""
    one_document = (key_document == key_document[:, -1:]) | (key_index < n_meta)
    return (query_index.shape == key_index.shape and torch.equal(query_index, key_index)
            and bool((key_index.diff(dim=1) > 0).all()) and bool(one_document.all())
            and (max_distance is None or bool((key_index[:, -1] - key_index[:, 0] <= max_distance).all())))


def query_blocks(query_index, key_index, max_distance, n_meta, block: int):
    """Per block of `block` queries: (query slice, the key columns that block may see). When the queries are
    the last l keys of one stream (in order, alike in every row; a prefill after cached meta tokens, or one
    over its own keys), the columns are only those the block can see: every earlier one, or with a window
    the meta tokens' and those within it. Otherwise (a ring buffer, rows at different lengths) every key.
    The mask still decides; this only bounds what one block holds to block × keys scores, and with a
    window the cost to O(l · (window + block))."""
    length, keys = query_index.shape[1], key_index.shape[1]
    rows = [slice(start, min(start + block, length)) for start in range(0, length, block)]
    index, offset = key_index[0], keys - length  # (s,); the first query's column
    if not (torch.equal(query_index, key_index[:, offset:]) and bool((key_index == index).all())
            and bool((index.diff() > 0).all())):
        return [(queries, slice(None)) for queries in rows]
    n_meta_columns = int((index < n_meta).sum())
    blocks = []
    for queries in rows:
        window_start = 0 if max_distance is None else int(torch.searchsorted(index, index[offset + queries.start] - max_distance))
        meta = torch.arange(min(n_meta_columns, window_start), device=index.device)  # those the window left behind
        blocks.append((queries, torch.cat([meta, torch.arange(window_start, offset + queries.stop, device=index.device)])))
    return blocks


def fused(q, k, v, scale: float, **mask) -> torch.Tensor:
    """F.scaled_dot_product_attention with GQA, `mask` being is_causal=True or attn_mask. When q, k and v
    differ in head dim, all are zero-padded to the widest and the output cut back to v's: PyTorch's fused
    CPU kernel (flash attention, memory linear in l) takes one head dim only, and for unequal ones falls
    back to its math path, which holds all (l × s) scores. Zero channels add nothing to q · kᵀ."""
    width, value_width = max(q.shape[-1], v.shape[-1]), v.shape[-1]
    q, k, v = (x if x.shape[-1] == width else F.pad(x, (0, width - x.shape[-1])) for x in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=True, **mask)[..., :value_width]


QUERY_BLOCK = 512  # queries per SDPA call in a long prefill that is not plainly causal (see query_blocks)
MIN_WINDOW_BLOCK = 64  # with a sliding window, the block shrinks to the window's size, but not below this


@ops.register("attention", "sdpa", devices=("cpu", "cuda"))
def attention_sdpa(q, k, v, query_index, key_index, query_document, key_document, max_distance, n_meta, scale):
    """ops.attention through PyTorch's fused scaled_dot_product_attention. A training or prefill call whose
    mask is the plain lower triangle uses SDPA's own causal path instead of a mask; any other call of more
    than one block of queries runs block by block, each over the keys it may see (query_blocks)."""
    if plainly_causal(query_index, key_index, key_document, max_distance, n_meta):
        return fused(q, k, v, scale, is_causal=True)
    # With a window of w, blocks of about w queries see at most about 2w keys each, instead of all of them.
    block = QUERY_BLOCK if max_distance is None else min(QUERY_BLOCK, max(max_distance, MIN_WINDOW_BLOCK))
    if q.shape[2] > block:
        return torch.cat([attention_sdpa(q[:, :, rows], k[:, :, columns], v[:, :, columns], query_index[:, rows],
                                         key_index[:, columns], query_document[:, rows], key_document[:, columns],
                                         max_distance, n_meta, scale)
                          for rows, columns in query_blocks(query_index, key_index, max_distance, n_meta, block)], dim=2)
    mask = attention_mask(query_index, key_index, query_document, key_document, max_distance, n_meta)
    return fused(q, k, v, scale, attn_mask=mask)
