"""A student's attention that takes the keys to be the stream in order (torch.arange) instead of reading
key_index, which is wrong for a ring-buffer cache: broken on purpose."""

import torch

from nanohybrid.attention import attention_mask, scaled_dot_product_attention


def attention(q, k, v, query_index, key_index, query_document, key_document, max_distance, n_meta, scale):
    key_index = torch.arange(k.shape[2]).expand_as(key_index)
    mask = attention_mask(key_index[:, -q.shape[2]:], key_index, query_document, key_document, max_distance, n_meta)
    return scaled_dot_product_attention(q, k, v, mask, scale)
