"""Assignment: attention with a sliding window, a meta-token prefix, GQA and packed documents.
Prerequisites: lessons 04 (the hybrid head), 05 (meta tokens) and 06 (the KV cache).

Copy this file, fill in `attention`, and grade it:

    cp lessons/assignments/attention.py my_attention.py
    python -m lessons.assignments.grade attention my_attention.py:attention

The task. One op serves every attention layer of every model here: global or sliding-window (Mistral,
Griffin, Hymba's SWA layers), grouped-query (GQA/MQA), with Hymba's meta tokens (§2.3) and with
several documents packed in a row. Keys and queries come with their stream index (their position in
the stream, meta tokens first: 0 .. n_meta-1) and their document id. Query i sees key j when

    key_index[j] <= query_index[i]                                  causal
    and (query_document[i] == key_document[j]  or  key_index[j] < n_meta)
    and (max_distance is None  or  query_index[i] - key_index[j] <= max_distance  or  key_index[j] < n_meta)

and then, for query head h and its key/value head h // (H / H_kv) (GQA: consecutive query heads share):

    out[h, i] = Σ_j softmax_j(q[h, i] · k[h // group, j] · scale  over visible j) · v[h // group, j]

The window follows the "distance" convention (Hymba, DeepMind's Griffin): max_distance + 1 keys,
the query's own included. Meta tokens are visible to every query, window or not.

Shapes
  b batch   H query heads   H_kv key/value heads (H is a multiple)   l queries   s keys
  hd query/key head dim     hd_v value head dim (may differ from hd)
  q (b, H, l, hd)    k (b, H_kv, s, hd)    v (b, H_kv, s, hd_v)
  query_index, query_document (b, l)    key_index, key_document (b, s), int64
  max_distance int or None    n_meta int    scale float
  returns (b, H, l, hd_v) in v's dtype

The keys may be fewer or more than the queries, and not in stream order: when decoding from the KV
cache (lesson 06) they are the slots of a ring buffer, and a slot never written holds the index
EMPTY (nanohybrid.cache.EMPTY, the largest int64), later than every query.

What is graded: nanohybrid/tools/parity.py compares your output and the gradients of q, k and v with the
reference in float64 (relative error at most 1e-4, on the CPU in float32), on four cases: causal GQA
(4 query heads, 2 key/value heads) at an odd length; a window of 8 with 4 meta tokens, MQA and value
heads twice as wide; 3 queries decoding from a ring buffer that has wrapped in one row and still has
EMPTY slots in the other; three packed documents. While your code runs, torch.empty is NaN.

Write it in PyTorch (autograd gives you the backward) or as a Triton kernel with your own backward
(lesson 08; without a GPU the grader runs Triton's interpreter, TRITON_INTERPRET=1). Keep the name
and the parameters: the grader, like the model, checks them against the reference's.

Hints, from the first line to the pitfalls
  1. Build the mask first: a bool tensor (b, l, s), True where visible, from query_index[:, :, None]
     against key_index[:, None, :] (and the same for documents). Then the scores, masked_fill of the
     hidden ones with -inf, a softmax over the keys, and the weighted sum of v.
  2. Always use the given indices, never torch.arange: the queries are the last l tokens, and in the
     decoding case the keys are out of order. EMPTY slots need nothing special: key <= query hides them.
  3. The window is q - k <= max_distance, not < (that would be the "keys" convention, one key fewer).
  4. A meta token (key_index < n_meta) passes both the window test and the document test. Apply the
     window to it and Hymba loses its meta tokens after max_distance steps.
  5. GQA: group = H // H_kv; query head h uses key/value head h // group, which is what
     k.repeat_interleave(group, dim=1) lines up. k.repeat(1, group, 1, 1) pairs head h with h % H_kv.
  6. Use the scale you are given. Compute the scores and the softmax in float32; the output has v's
     head dim hd_v, which is not hd in one case.
"""


def attention(q, k, v, query_index, key_index, query_document, key_document, max_distance, n_meta, scale):
    """The attention op: the mask built from stream indices and documents, then explicit softmax attention.
    q (b, h, l, hd), k (b, h_kv, s, hd), v (b, h_kv, s, hd_v); indices and documents (b, l), (b, s) -> (b, h, l, hd_v)."""
    raise NotImplementedError("attention: not written yet (the task and hints are at the top of this file)")
