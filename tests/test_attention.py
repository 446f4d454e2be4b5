"""Attention: the two window conventions, the always-visible meta prefix, GQA head grouping, value heads
wider than query heads, and KV sharing, checked against PyTorch's own scaled_dot_product_attention."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from nanohybrid.attention import attention_mask, scaled_dot_product_attention
from nanohybrid.cache import EMPTY, ForwardContext
from nanohybrid.model import LanguageModel
from nanohybrid.presets import get_config
from nanohybrid.tools.testing import SAME_MATH, assert_close


def stream(length):
    return torch.arange(length)[None]


def mask(length, max_distance, n_meta=0, document=None):
    """The mask among `length` tokens of one stream; `document` (l,) ids, all one document by default."""
    document = torch.zeros(1, length, dtype=torch.long) if document is None else document[None]
    return attention_mask(stream(length), stream(length), document, document, max_distance, n_meta)[0, 0]


@pytest.mark.parametrize("window, convention, visible_keys", [(4, "keys", 4), (4, "distance", 5)])
def test_window_conventions_differ_by_one_key(window, convention, visible_keys):
    config = get_config("llama3-tiny", sliding_window=window, window_convention=convention)
    visible = mask(12, config.max_attention_distance)
    assert visible.sum(-1).tolist() == [min(q + 1, visible_keys) for q in range(12)]
    assert visible[11, 11] and not visible[11, 12 - visible_keys - 1]


def test_meta_tokens_stay_visible_outside_the_window():
    visible = mask(20, max_distance=3, n_meta=4)
    assert visible[19, :4].all()  # the meta prefix
    assert not visible[19, 4:16].any()  # real tokens beyond the window
    assert visible[19, 16:].all()  # the window, itself included
    assert not visible[2, 3]  # meta tokens are causal among themselves


def test_global_mask_is_causal():
    assert torch.equal(mask(6, max_distance=None), torch.tril(torch.ones(6, 6, dtype=torch.bool)))


def test_attention_stops_at_a_document_start_but_meta_tokens_stay_visible():
    document = torch.tensor([0, 0, 1, 1, 1, 2, 2])  # meta tokens 0-1, then documents starting at 2 and 5
    visible = mask(7, max_distance=None, n_meta=2, document=document)
    assert visible[6].tolist() == [True, True, False, False, False, True, True]
    assert visible[4].tolist() == [True, True, True, True, True, False, False]


@pytest.mark.parametrize("kv_heads", [1, 2, 6])
def test_matches_pytorch_sdpa_with_gqa_and_wide_value_heads(kv_heads):
    torch.manual_seed(0)
    q = torch.randn(2, 6, 10, 8)
    k = torch.randn(2, kv_heads, 10, 8)
    v = torch.randn(2, kv_heads, 10, 16)  # value heads twice as wide, as in Hymba
    visible = mask(10, max_distance=3, n_meta=2)[None, None]
    ours = scaled_dot_product_attention(q, k, v, visible, scale=8**-0.5)
    group = 6 // kv_heads  # query head h reads key/value head h // group
    expected = F.scaled_dot_product_attention(
        q, k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1), attn_mask=visible
    )
    assert_close(ours, expected, SAME_MATH, "attention")
    first_head_alone = F.scaled_dot_product_attention(q[:, group : group + 1], k[:, 1:2], v[:, 1:2], attn_mask=visible)
    if kv_heads > 1:
        assert_close(ours[:, group : group + 1], first_head_alone, SAME_MATH, "head group->kv head 1")


def test_kv_consumer_owns_no_projection_and_reads_its_producer():
    model = LanguageModel(get_config("hymba-tiny"))
    layers = model.config.layers
    consumers = [i for i, spec in enumerate(layers) if spec.kv_producer is not None]
    assert consumers == [2, 5, 6]  # pair [1, 2] and triple [4, 5, 6] between globals 0, 3, 7
    for i in consumers:
        mixer = model.blocks[i].mixer
        assert not mixer.owns_kv
        assert mixer.in_proj.out_features == mixer.split_sizes[0] + 2 * model.config.d_inner  # Q, X_ssm, gate
    producer = model.blocks[1].mixer
    assert producer.in_proj.out_features > model.blocks[2].mixer.in_proj.out_features


def test_consumer_attends_to_its_producers_keys_and_values():
    torch.manual_seed(0)
    config = get_config("hymba-tiny", n_meta_tokens=0)
    model = LanguageModel(config)
    producer, consumer = model.blocks[1].mixer, model.blocks[2].mixer
    x = torch.randn(1, 12, config.d_model)
    ctx = ForwardContext(positions=stream(12), index=stream(12), document=torch.zeros_like(stream(12)), n_meta=0)
    producer(x, ctx)
    k, v, key_index, _ = ctx.shared_kv[1]  # RoPE applied, not repeated over query-head groups
    assert k.shape == (1, config.n_kv_heads, 12, config.qk_head_dim)
    q = consumer.in_proj(x)[..., : consumer.split_sizes[0]].unflatten(-1, consumer.shape_q)
    out = consumer.attention(q, None, None, ctx)
    rotated_q = consumer.attention.rope(q.transpose(1, 2), ctx.positions)
    mask = attention_mask(ctx.index, key_index, ctx.document, ctx.document, consumer.attention.max_distance, n_meta=0)
    expected = scaled_dot_product_attention(rotated_q, k, v, mask, config.qk_head_dim**-0.5)
    assert_close(out, expected.transpose(1, 2).flatten(2), SAME_MATH, "consumer attention")
    ctx.shared_kv[1] = (torch.randn_like(k), v, key_index, ctx.document)
    assert not torch.allclose(consumer.attention(q, None, None, ctx), out, atol=1e-3)


def test_sdpa_takes_its_causal_path_only_for_the_plain_lower_triangle():
    """The parity suite's causal case runs SDPA's is_causal path; documents, a window that cuts, a
    decode call or a ring buffer must build the mask."""
    from kernels.attention.sdpa import plainly_causal

    index, one_document = torch.arange(12).expand(2, 12), torch.zeros(2, 12, dtype=torch.long)
    assert plainly_causal(index, index, one_document, None)
    assert plainly_causal(index, index, one_document, 11)  # a window wider than the call cuts nothing
    assert not plainly_causal(index, index, one_document, 10)
    assert not plainly_causal(index, index, (index >= 6).long(), None)  # two documents
    assert plainly_causal(index, index, (index >= 2).long(), None, n_meta=2)  # meta tokens, then one document
    assert not plainly_causal(index, index, (index >= 2).long(), 10, n_meta=2)  # the window cuts them off
    assert not plainly_causal(index[:, -1:], index, one_document, None)  # decoding: one query, many keys
    assert not plainly_causal(index.flip(1), index.flip(1), one_document, None)  # slots out of order


@pytest.mark.parametrize("max_distance", [5, None])
@pytest.mark.parametrize("cached_meta", [False, True])
def test_long_prefill_runs_block_by_block_and_matches_the_reference(monkeypatch, max_distance, cached_meta):
    """attention_sdpa's blocked path (query_blocks), with blocks of 8 queries: meta tokens (in the call, or
    cached before it), two documents and GQA, with and without a window, against the reference; each block
    reads only the keys it can see."""
    import kernels.attention.sdpa as module
    from nanohybrid.attention import attention

    monkeypatch.setattr(module, "QUERY_BLOCK", 8)
    torch.manual_seed(0)
    b, h, h_kv, s, hd, n_meta = 2, 4, 2, 45, 8, 3
    key_index = torch.arange(s).expand(b, s)
    query_index = key_index[:, n_meta:] if cached_meta else key_index
    key_document = (key_index >= 30).long()
    query_document = key_document[:, s - query_index.shape[1] :]
    q, k, v = torch.randn(b, h, query_index.shape[1], hd), torch.randn(b, h_kv, s, hd), torch.randn(b, h_kv, s, hd)
    arguments = (query_index, key_index, query_document, key_document, max_distance, n_meta, hd**-0.5)
    assert_close(module.attention_sdpa(q, k, v, *arguments), attention(q, k, v, *arguments), SAME_MATH, "blocked")
    blocks = module.query_blocks(query_index, key_index, max_distance, n_meta, 8)
    assert len(blocks) == -(-query_index.shape[1] // 8)
    if max_distance is not None:
        assert all(len(columns) <= n_meta + max_distance + 8 for _, columns in blocks)
    for queries, keys in [(key_index[:, 1:], key_index[:, :-1]), (key_index.flip(1), key_index.flip(1))]:
        # not the last keys; a ring buffer: blocks of queries still, each over every key
        assert all(columns == slice(None) for _, columns in module.query_blocks(queries, keys, max_distance, n_meta, 8))


def test_a_window_runs_in_blocks_of_about_its_size_with_the_reference_gradients(monkeypatch):
    """A training call with a sliding window (documents and meta tokens included) goes through query
    blocks of max(window, MIN_WINDOW_BLOCK) queries, and its output and gradients equal the reference's."""
    import kernels.attention.sdpa as module
    from nanohybrid.attention import attention

    monkeypatch.setattr(module, "MIN_WINDOW_BLOCK", 4)
    sizes = []
    query_blocks = module.query_blocks
    monkeypatch.setattr(module, "query_blocks", lambda *args: sizes.append(args[-1]) or query_blocks(*args))
    torch.manual_seed(0)
    b, h, h_kv, s, hd, n_meta, max_distance = 2, 4, 2, 45, 8, 3, 6
    index = torch.arange(s).expand(b, s)
    document = (index >= 30).long()
    arguments = (index, index, document, document, max_distance, n_meta, hd**-0.5)
    inputs = [torch.randn(b, heads, s, hd, requires_grad=True) for heads in (h, h_kv, h_kv)]
    grad = torch.randn(b, h, s, hd)
    blocked = torch.autograd.grad(module.attention_sdpa(*inputs, *arguments), inputs, grad)
    assert sizes == [max_distance]
    reference = torch.autograd.grad(attention(*inputs, *arguments), inputs, grad)
    for name, ours, expected in zip("qkv", blocked, reference):
        assert_close(ours, expected, SAME_MATH, f"gradient of {name}")


def test_rope_angles_are_computed_once_per_call_and_shared_by_every_layer(monkeypatch):
    from nanohybrid.layers import RotaryEmbedding

    calls = []
    angles = RotaryEmbedding.angles
    monkeypatch.setattr(RotaryEmbedding, "angles", lambda self, positions: calls.append(1) or angles(self, positions))
    model = LanguageModel(get_config("llama3-tiny"))
    assert model.config.n_layers > 1
    model(torch.randint(0, 320, (2, 9)))
    assert len(calls) == 1


class QueryByKeyTensors(TorchDispatchMode):
    """Records every tensor an op returns with two axes of at least `length` entries: a score or mask matrix
    of every query against every key, in a call of `length` queries."""

    def __init__(self, length: int):
        super().__init__()
        self.length, self.found = length, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and sum(size >= self.length for size in tensor.shape) >= 2:
                self.found.append(f"{func}: {tuple(tensor.shape)}")
        return out


@pytest.mark.parametrize("call", ["causal", "documents", "cached meta tokens", "rows at different lengths"])
def test_a_long_sdpa_call_holds_no_query_by_key_matrix(monkeypatch, call):
    """The sdpa rung's memory grows linearly in a long prefill: no tensor of all l queries against all keys,
    whatever the mask. The plain causal call reaches PyTorch's fused kernel even with Hymba's value heads
    twice as wide as the query heads (its math fallback would hold the l x l scores); any other call runs
    in blocks of queries (here 64), each with its own mask. The output is the reference's."""
    import kernels.attention.sdpa as module
    from nanohybrid.attention import attention

    monkeypatch.setattr(module, "QUERY_BLOCK", 64)
    torch.manual_seed(0)
    b, h, h_kv, l, hd, n_meta = 2, 4, 2, 200, 8, 3
    key_index = torch.arange(l).expand(b, l)
    key_document = torch.zeros(b, l, dtype=torch.long)
    if call == "documents":
        key_document = (key_index >= 120).long()
    if call == "cached meta tokens":
        key_index = torch.arange(n_meta + l).expand(b, -1)
        key_document = torch.zeros(b, n_meta + l, dtype=torch.long)
    if call == "rows at different lengths":  # a stacked cache: row 0 holds 10 tokens, row 1 holds 6 and 4 empty slots
        cached = torch.tensor([list(range(10)), list(range(6)) + [EMPTY] * 4])
        key_index = torch.cat([cached, torch.tensor([[10], [6]]) + torch.arange(l)], dim=1)
        key_document = torch.cat([torch.tensor([[0] * 10, [0] * 6 + [-1] * 4]), torch.zeros(b, l, dtype=torch.long)], dim=1)
    query_index, query_document = key_index[:, -l:], key_document[:, -l:]
    s = key_index.shape[1]
    q, k, v = torch.randn(b, h, l, hd), torch.randn(b, h_kv, s, hd), torch.randn(b, h_kv, s, 2 * hd)
    arguments = (query_index, key_index, query_document, key_document, None, n_meta, hd**-0.5)
    with QueryByKeyTensors(l) as recorder:
        out = module.attention_sdpa(q, k, v, *arguments)
    assert not recorder.found, f"{call}: l x s tensors {recorder.found[:3]}"
    assert_close(out, attention(q, k, v, *arguments), SAME_MATH, call)
