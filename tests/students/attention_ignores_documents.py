"""A student's attention that looks across document boundaries: broken on purpose."""

import torch

from nanohybrid.attention import attention_mask, scaled_dot_product_attention


def attention(q, k, v, query_index, key_index, query_document, key_document, max_distance, n_meta, scale):
    one_document = torch.zeros_like(query_document), torch.zeros_like(key_document)
    mask = attention_mask(query_index, key_index, *one_document, max_distance, n_meta)
    return scaled_dot_product_attention(q, k, v, mask, scale)
