"""The inference cache: cached generation equals the full forward pass for every architecture (chunked
prefill, token-by-token decoding, windows that wrap, meta tokens, KV sharing, MoE, document resets,
batched prompts of different lengths); the bytes it allocates equal the accounting formula; the
published cache sizes come out of that formula; the meta-token prefix is computed once."""

from dataclasses import dataclass

import pytest
import torch

from nanohybrid.cache import InferenceCache
from nanohybrid.config import ARCHITECTURES, LayerSpec, ModelConfig
from nanohybrid.generate import decode, prefill, prefill_prompts
from nanohybrid.model import LanguageModel
from nanohybrid.presets import PRESETS, get_config
from nanohybrid.tools.analysis import cache_bytes, published_cache_table
from nanohybrid.tools.testing import SAME_MATH, assert_close

TINY = [f"{arch}-tiny" for arch in ARCHITECTURES]


def build(name, **overrides):
    torch.manual_seed(0)
    return LanguageModel(get_config(name, **overrides)).eval()


def generate_logits(model, tokens, chunks):
    """Feed `tokens` in consecutive chunks of the given sizes through one cache; returns all logits."""
    cache, logits, start = InferenceCache(), [], 0
    for size in chunks:
        logits.append(model(tokens[:, start : start + size], cache=cache).logits)
        start += size
    assert start == tokens.shape[1]
    return torch.cat(logits, dim=1)


DECODING_CASES = [(name, {}) for name in TINY] + [
    ("hymba-tiny", {"n_meta_tokens": 0}),
    ("hymba-tiny", {"share_kv": False}),
    ("griffin-tiny", {"window_convention": "keys"}),
    ("llama3-tiny", {"sliding_window": 8}),  # Mistral
    ("mamba2-tiny", {"mamba2_n_groups": 1, "chunk_size": 5}),
    ("gated-deltanet-tiny", {"n_meta_tokens": 4, "chunk_size": 5}),  # meta tokens ahead of a delta-rule state
]


@pytest.mark.parametrize("name, overrides", DECODING_CASES, ids=[f"{n}{o or ''}" for n, o in DECODING_CASES])
def test_chunked_prefill_and_decoding_equal_the_full_forward(name, overrides):
    """Length 27 passes the window (8) several times; chunks of 11 and 5 are not multiples of anything."""
    model = build(name, **overrides)
    tokens = torch.randint(0, model.config.vocab_size, (2, 27), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(tokens).logits
        chunked = generate_logits(model, tokens, [11, 5, 11])
        decoded = generate_logits(model, tokens, [3] + [1] * 24)
    assert_close(chunked, full, SAME_MATH, "chunked prefill")
    assert_close(decoded, full, SAME_MATH, "token by token")


@pytest.mark.parametrize("name", ["griffin-tiny", "llama3-tiny"])
def test_decoding_across_a_document_start_equals_the_full_forward(name):
    """Positions restart at token 10 of row 1: RG-LRU resets, Griffin's conv does not reach back, and
    attention stays inside each document; so the second document's logits are those it gets alone."""
    model = build(name)
    tokens = torch.randint(0, model.config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(5))
    positions = torch.arange(20).repeat(2, 1)
    positions[1, 10:] -= 10
    with torch.no_grad():
        full = model(tokens, positions=positions).logits
        cache = InferenceCache()
        decoded = [model(tokens[:, :4], positions=positions[:, :4], cache=cache).logits]
        for t in range(4, 20):
            decoded.append(model(tokens[:, t : t + 1], positions=positions[:, t : t + 1], cache=cache).logits)
        cache, chunked = InferenceCache(), []
        for start, end in ((0, 4), (4, 11), (11, 20)):  # the second chunk ends on the new document's first token
            chunked.append(model(tokens[:, start:end], positions=positions[:, start:end], cache=cache).logits)
        second_document_alone = model(tokens[1:, 10:]).logits
    assert_close(torch.cat(decoded, dim=1), full, SAME_MATH, "decoded")
    assert_close(torch.cat(chunked, dim=1), full, SAME_MATH, "chunked")
    assert_close(full[1:, 10:], second_document_alone, SAME_MATH, "a document does not see the one before")


def random_tokens(model, *shape, seed=0):
    return torch.randint(0, model.config.vocab_size, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", TINY)
def test_batched_prompts_of_different_lengths_decode_like_batches_of_one(name):
    """Prompts of 3, 12 and 21 tokens (the window is 8), then 6 teacher-forced steps together."""
    model = build(name)
    prompts = [random_tokens(model, n, seed=n).tolist() for n in (3, 12, 21)]
    continuation = random_tokens(model, 3, 6, seed=7)
    with torch.no_grad():
        logits, cache = prefill_prompts(model, prompts)
        batched = [logits] + [model(continuation[:, t : t + 1], cache=cache).logits[:, -1] for t in range(6)]
        for row, prompt in enumerate(prompts):
            alone_logits, alone_cache = prefill(model, torch.tensor([prompt]))
            alone = [alone_logits] + [model(continuation[row : row + 1, t : t + 1], cache=alone_cache).logits[:, -1]
                                      for t in range(6)]
            for step, (together, by_itself) in enumerate(zip(batched, alone)):
                assert_close(together[row : row + 1], by_itself, SAME_MATH, f"row {row} step {step}")


def test_chunked_prefill_equals_one_shot_prefill():
    model = build("hymba-tiny")
    prompt = random_tokens(model, 2, 23)
    one_shot, one_cache = prefill(model, prompt)
    chunked, chunked_cache = prefill(model, prompt, chunk_size=5)
    assert_close(chunked, one_shot, SAME_MATH, "last logits")
    assert one_cache.nbytes() == chunked_cache.nbytes()
    assert torch.equal(one_cache.length, chunked_cache.length)


def test_greedy_generation_is_deterministic_and_streams_one_token_per_row():
    model = build("samba-tiny")
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12, 13]]
    first = torch.stack(list(decode(model, *prefill_prompts(model, prompts), 12, temperature=0)))
    second = torch.stack(list(decode(model, *prefill_prompts(model, prompts, chunk_size=4), 12, temperature=0)))
    assert first.shape == (12, 2) and torch.equal(first, second)


@pytest.mark.parametrize("name, overrides", [(name, {}) for name in TINY] + [("hymba-tiny", {"n_meta_tokens": 0})])
def test_allocated_bytes_equal_the_accounting_formula(name, overrides):
    model = build(name, **overrides)
    cache = InferenceCache()
    seen = 0
    for chunk in (3, 5, 1, 14, 1, 1):  # lengths 3, 8, 9, 23, 24, 25: below, at and past the window
        with torch.no_grad():
            model(random_tokens(model, 2, chunk, seed=seen), cache=cache)
        seen += chunk
        assert cache.nbytes() == cache_bytes(model.config, seen, batch=2), f"after {seen} tokens"


@pytest.mark.parametrize("name", ["mamba-tiny", "mamba2-tiny", "hawk-tiny", "gated-deltanet-tiny"])
def test_state_space_caches_do_not_grow(name):
    model = build(name)
    sizes = []
    for length in (1, 7, 40):
        _, cache = prefill(model, random_tokens(model, 1, length))
        sizes.append(sum(cache.nbytes().values()))
    assert sizes[0] == sizes[1] == sizes[2] > 0


def test_sliding_window_caches_stop_growing_at_window_plus_meta_prefix():
    model = build("hymba-tiny")  # window 8 ("distance": 8 past keys kept), 8 meta tokens
    config = model.config
    per_slot = config.n_kv_heads * (config.qk_head_dim + config.d_inner // config.n_heads) * 4
    window_layers = {}
    for length in (4, 8, 9, 30):
        _, cache = prefill(model, random_tokens(model, 1, length))
        window_layers[length] = {layer: size for (layer, kind), size in cache.nbytes().items() if kind == "kv-window"}
    assert sorted(window_layers[30]) == [1, 4]  # the two sliding-window producers
    assert all(size == (8 + 4) * per_slot for size in window_layers[4].values())
    assert window_layers[8] == window_layers[9] == window_layers[30]
    assert all(size == (8 + 8) * per_slot for size in window_layers[30].values())


def test_published_cache_sizes_are_reproduced_within_one_percent():
    _, differences = published_cache_table()
    assert len(differences) == 4 and all(abs(d) <= 0.01 for d in differences), differences


def test_hymba_1_5b_cache_is_78_6_mb_exactly_as_published():
    sizes = cache_bytes(get_config("hymba-paper"), 8192, dtype=torch.float16, state_dtype=torch.float16,
                        meta_entries=False, index_entries=False)
    # 74,711,040 KV + 3,276,800 SSM + 614,400 conv (docs/conventions.md, "Hymba layout")
    assert sum(sizes.values()) == 78_602_240
    assert sum(1 for _, kind in sizes if kind.startswith("kv")) == 17


def test_meta_prefix_is_computed_once_and_again_after_the_weights_change():
    model = build("hymba-tiny")
    runs = []
    original = model.run_blocks
    model.run_blocks = lambda *args: runs.append(args[0].shape[1]) or original(*args)
    prompts = [[5, 6, 7], [8, 9]]
    first, _ = prefill_prompts(model, prompts)
    again, _ = prefill_prompts(model, prompts)
    assert runs.count(model.config.n_meta_tokens) == 1  # one meta-prefix run for four prefills
    assert torch.equal(first, again)
    with torch.no_grad():
        model.blocks[0].mixer.in_proj.weight.mul_(1.5)  # an in-place update, as an optimizer step makes
    changed, _ = prefill_prompts(model, prompts)
    assert runs.count(model.config.n_meta_tokens) == 2
    with torch.no_grad():
        assert_close(changed[:1], model(torch.tensor([prompts[0]])).logits[:, -1], SAME_MATH, "after the change")



@dataclass
class OwnLayout(ModelConfig):
    """A ModelConfig given its own layer list instead of its architecture's pattern."""

    own_layers: tuple[LayerSpec, ...] = ()

    @property
    def layers(self) -> tuple[LayerSpec, ...]:
        return self.own_layers


# Sliding-window producers (window 4) whose consumers see more: a global consumer, and a wider window (12).
WIDER_CONSUMERS = (LayerSpec("hymba", "mlp"), LayerSpec("hymba", "mlp", 4), LayerSpec("hymba", "mlp", None, kv_producer=1),
                   LayerSpec("hymba", "mlp", 4), LayerSpec("hymba", "mlp", 12, kv_producer=3))


def test_a_producer_keeps_what_its_widest_consumer_sees():
    """A KV producer's cache holds what its widest consumer can see: every key for a global consumer, 12 past
    keys for a consumer with a wider window, not the producer's own 4. So cached generation (chunked prefill,
    token by token, prompts of different lengths decoded together) equals the full forward pass, with meta
    tokens and batch 2, long after the producers' own windows have moved on; the bytes equal the formula."""
    torch.manual_seed(0)
    config = OwnLayout(**{**PRESETS["hymba-tiny"], "n_layers": len(WIDER_CONSUMERS)}, own_layers=WIDER_CONSUMERS)
    model = LanguageModel(config).eval()
    tokens = random_tokens(model, 2, 27, seed=3)
    with torch.no_grad():
        full = model(tokens).logits
        assert_close(generate_logits(model, tokens, [3] + [1] * 24), full, SAME_MATH, "token by token")
        cache, chunked = InferenceCache(), []
        for start, end in ((0, 11), (11, 16), (16, 27)):
            chunked.append(model(tokens[:, start:end], cache=cache).logits)
        assert_close(torch.cat(chunked, dim=1), full, SAME_MATH, "chunked prefill")
        assert cache.nbytes() == cache_bytes(config, 27, batch=2)
        logits, cache = prefill_prompts(model, [tokens[0, :20].tolist(), tokens[1, :9].tolist()])
        for step in range(6):  # row 0 continues at token 20, row 1 at token 9
            assert_close(logits, torch.stack([full[0, 19 + step], full[1, 8 + step]]), SAME_MATH, f"step {step}")
            logits = model(torch.stack([tokens[0, 20 + step], tokens[1, 9 + step]])[:, None], cache=cache).logits[:, -1]



def hymba_reading(producer, window=4):
    return LayerSpec("hymba", "mlp", window, kv_producer=producer)


BAD_PRODUCERS = {  # layer 0 is an attention layer, layer 1 a hymba producer
    "a later layer": (hymba_reading(3), LayerSpec("hymba", "mlp", 4)),
    "a consumer": (hymba_reading(1), hymba_reading(2)),
    "another mixer": (hymba_reading(1), hymba_reading(0)),
}


@pytest.mark.parametrize("case", BAD_PRODUCERS)
def test_a_layout_whose_kv_producer_cannot_serve_is_refused(case):
    layers = (LayerSpec("attention", "mlp"), LayerSpec("hymba", "mlp", 4), *BAD_PRODUCERS[case])
    with pytest.raises(ValueError, match=r"layer \d reads keys and values from layer \d, which must be an earlier hymba"):
        OwnLayout(**{**PRESETS["hymba-tiny"], "n_layers": 4}, own_layers=layers)
