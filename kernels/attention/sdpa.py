"""Attention through PyTorch's fused scaled_dot_product_attention (SDPA): the fast CPU path of the
attention op, whose readable form is nanohybrid/attention.py::attention (explicit scores, mask, softmax).

SDPA computes softmax(Q Kᵀ · scale + mask) V without exposing the scores. What this adds around it:
  - a call whose mask is the plain lower triangle (training, a prefill over its own keys) takes SDPA's
    causal path, with no mask tensor at all (plainly_causal);
  - a long prefill with a sliding window, or after cached keys, runs in blocks of queries, each over only
    the keys it can see (query_blocks): the mask still decides, but a block holds block × keys scores at
    a time, and with a window the cost is O(l · (window + block)) instead of O(l²).

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
    """When the queries are the last l keys of one stream (in order, alike in every row; a prefill after
    cached meta tokens, or one over its own keys): per block of `block` queries, (query slice, the key
    columns that block can see: every earlier one, or with a window the meta tokens' and those within it).
    None for any other call. The mask still decides; this only drops keys that no query of the block can
    see, so a long prefill holds block × keys scores at a time, and with a window costs O(l · (window + block))."""
    length, keys = query_index.shape[1], key_index.shape[1]
    index, offset = key_index[0], keys - length  # (s,); the first query's column
    if not (torch.equal(query_index, key_index[:, offset:]) and bool((key_index == index).all())
            and bool((index.diff() > 0).all())):
        return None
    n_meta_columns = int((index < n_meta).sum())
    blocks = []
    for start in range(0, length, block):
        end = min(start + block, length)
        window_start = 0 if max_distance is None else int(torch.searchsorted(index, index[offset + start] - max_distance))
        meta = torch.arange(min(n_meta_columns, window_start), device=index.device)  # those the window left behind
        blocks.append((slice(start, end), torch.cat([meta, torch.arange(window_start, offset + end, device=index.device)])))
    return blocks


QUERY_BLOCK = 512  # queries per SDPA call in a long prefill that is not plainly causal (see query_blocks)
MIN_WINDOW_BLOCK = 64  # with a sliding window, the block shrinks to the window's size, but not below this


@ops.register("attention", "sdpa", devices=("cpu", "cuda"))
def attention_sdpa(q, k, v, query_index, key_index, query_document, key_document, max_distance, n_meta, scale):
    """ops.attention through PyTorch's fused scaled_dot_product_attention. A training
    or prefill call whose mask is the plain lower triangle uses SDPA's own causal path instead of a mask;
    a call with a sliding window, or another long prefill, runs block by block over the keys each block
    can see (query_blocks)."""
    if plainly_causal(query_index, key_index, key_document, max_distance, n_meta):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
    # With a window of w, blocks of about w queries see at most about 2w keys each, instead of all of them.
    block = QUERY_BLOCK if max_distance is None else min(QUERY_BLOCK, max(max_distance, MIN_WINDOW_BLOCK))
    blocks = None if q.shape[2] <= block else query_blocks(query_index, key_index, max_distance, n_meta, block)
    if blocks is not None:
        return torch.cat([attention_sdpa(q[:, :, rows], k[:, :, columns], v[:, :, columns], query_index[:, rows],
                                         key_index[:, columns], query_document[:, rows], key_document[:, columns],
                                         max_distance, n_meta, scale) for rows, columns in blocks], dim=2)
    mask = attention_mask(query_index, key_index, query_document, key_document, max_distance, n_meta)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
