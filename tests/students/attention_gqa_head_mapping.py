"""A student's attention that pairs query head h with key/value head h % h_kv (k.repeat) instead of
h // group (k.repeat_interleave): broken on purpose."""

import torch

from nanohybrid.attention import attention_mask


def attention(q, k, v, query_index, key_index, query_document, key_document, max_distance, n_meta, scale):
    mask = attention_mask(query_index, key_index, query_document, key_document, max_distance, n_meta)
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat(1, group, 1, 1), v.repeat(1, group, 1, 1)
    scores = torch.einsum("bhld,bhsd->bhls", q, k) * scale
    return torch.einsum("bhls,bhsd->bhld", scores.masked_fill(~mask, float("-inf")).softmax(-1), v)
