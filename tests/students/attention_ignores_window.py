"""A student's attention that attends to every earlier key, window or not: broken on purpose."""

from nanohybrid.attention import attention_mask, scaled_dot_product_attention


def attention(q, k, v, query_index, key_index, query_document, key_document, max_distance, n_meta, scale):
    mask = attention_mask(query_index, key_index, query_document, key_document, None, n_meta)
    return scaled_dot_product_attention(q, k, v, mask, scale)
