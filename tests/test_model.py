"""Whole models: causality for every preset; the full forward, chunked continuation and token-by-token
decoding agree for every architecture; published parameter counts; clear errors for bad input."""

import pytest
import torch

from nanohybrid.cache import ForwardContext, InferenceCache, RecurrentState
from nanohybrid.config import ARCHITECTURES, PRESETS, get_config
from nanohybrid.model import LanguageModel
from nanohybrid.testing import SAME_MATH, assert_close

TRAINABLE_PRESETS = [name for name in PRESETS if not name.endswith(("-paper", "-paper-3b"))]
TINY = [f"{arch}-tiny" for arch in ARCHITECTURES]


def build(name, **overrides):
    torch.manual_seed(0)
    return LanguageModel(get_config(name, **overrides)).eval()


@pytest.mark.parametrize("name", TRAINABLE_PRESETS)
def test_changing_a_token_never_changes_earlier_logits(name):
    model = build(name)
    length, changed = 14, 9
    tokens = torch.randint(0, model.config.vocab_size, (2, length), generator=torch.Generator().manual_seed(1))
    edited = tokens.clone()
    edited[:, changed] = (edited[:, changed] + 1) % model.config.vocab_size
    with torch.no_grad():
        before, after = model(tokens).logits, model(edited).logits
    assert_close(after[:, :changed], before[:, :changed], 1e-6, "logits before the edit")
    assert (after[:, changed] - before[:, changed]).abs().max() > 1e-4, "the edited token itself must matter"


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
    """Positions restart at token 10 of row 1: RG-LRU resets and attention stays inside each document.
    (Griffin's conv still reads the last 3 tokens of the previous document, as in transformers.)"""
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
        second_document_alone = model(tokens[1:, 10:]).logits
    assert_close(torch.cat(decoded, dim=1), full, SAME_MATH, "decoded")
    if name == "llama3-tiny":
        assert_close(full[1:, 10:], second_document_alone, SAME_MATH, "a document does not see the one before")


@pytest.mark.parametrize("name", ["mamba-tiny", "mamba2-tiny", "hawk-tiny", "hymba-tiny"])
def test_recurrent_mixer_continues_from_a_random_nonzero_state(name):
    """Every recurrent mixer, started from a random (not prefix-produced) state: one call == token by token."""
    model = build(name)
    mixer = model.blocks[1].mixer
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 13, model.config.d_model, generator=generator)
    with torch.no_grad():  # learn the state shapes from a zero-state call, then randomise them
        first = torch.ones(2, 1, dtype=torch.long)
        probe = ForwardContext(first, first, first, 0, InferenceCache())
        mixer(x[:, :1], probe)
    shapes = probe.cache.states[(1, "ssm")]
    def start():
        state = RecurrentState(*(torch.randn(t.shape, generator=torch.Generator().manual_seed(4)) for t in shapes))
        return InferenceCache(states={(1, "ssm"): state})
    positions = torch.arange(1, 14).expand(2, 13)  # no position 0: no RG-LRU reset
    with torch.no_grad():
        cache = start()
        one_call = mixer(x, ForwardContext(positions, positions, torch.ones_like(positions), 0, cache))
        cache_steps = start()
        steps = [mixer(x[:, t : t + 1], ForwardContext(positions[:, t : t + 1], positions[:, t : t + 1], torch.ones(2, 1, dtype=torch.long), 0, cache_steps))
                 for t in range(13)]
    assert_close(torch.cat(steps, dim=1), one_call, SAME_MATH, "token by token")
    for one, other in zip(cache.states[(1, "ssm")], cache_steps.states[(1, "ssm")]):
        assert_close(other, one, SAME_MATH, "final state")


PUBLISHED = [  # (preset, published total, bound, published active)
    ("hymba-paper", 1.52e9, 0.01, None),  # Hymba-1.5B
    ("llama3-paper", 1.24e9, 0.01, None),  # Llama-3.2-1B
    ("llama3-paper-3b", 3.21e9, 0.01, None),  # Llama-3.2-3B
    ("jamba-paper", 52e9, 0.03, 12e9),  # Jamba-v0.1: 52B total, 12B active
    ("griffin-paper", 2.7e9, 0.03, None),  # RecurrentGemma-2B
]


@pytest.mark.parametrize("name, total, bound, active", PUBLISHED)
def test_paper_presets_have_the_published_parameter_counts(name, total, bound, active):
    with torch.device("meta"):
        model = LanguageModel(get_config(name))
    assert abs(model.num_parameters() / total - 1) <= bound
    if active is not None:
        assert abs(model.num_parameters(active=True) / active - 1) <= bound


@pytest.mark.parametrize("arch", ["hymba", "mamba2", "mamba2-ffn", "llama3", "samba"])
def test_apples_to_apples_presets_are_100m_at_equal_depth(arch):
    with torch.device("meta"):
        model = LanguageModel(get_config(f"{arch}-100m"))
    assert abs(model.num_parameters() / 100e6 - 1) <= 0.05
    assert model.config.n_layers == 12 and model.config.vocab_size == 49152 and model.config.tie_embeddings


def test_tiny_presets_stay_under_one_million_parameters():
    for name in TINY:
        assert build(name).num_parameters() < 1e6, name


def test_unknown_preset_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"unknown preset 'hymba-huge'; valid presets: hymba-tiny, .*llama3-100m"):
        get_config("hymba-huge")


def test_unknown_override_is_an_error():
    with pytest.raises(ValueError, match="unknown config field.*d_modle"):
        get_config("llama3-tiny", d_modle=32)


@pytest.mark.parametrize("overrides, message", [
    (dict(n_heads=5), "n_heads=5 must divide d_model=64"),
    (dict(n_kv_heads=3), "n_kv_heads=3 must divide n_heads=4"),
    (dict(rotary_fraction=0.3), "rotary_fraction=0.3"),
    (dict(window_convention="inclusive"), "window_convention"),
])
def test_inconsistent_attention_config_fails_at_construction(overrides, message):
    with pytest.raises(ValueError, match=message):
        get_config("llama3-tiny", **overrides)


@pytest.mark.parametrize("name, overrides, message", [
    ("mamba2-tiny", dict(mamba2_head_dim=24), "mamba2_head_dim=24 must divide d_inner=128"),
    ("mamba2-tiny", dict(mamba2_n_groups=3), "mamba2_n_groups=3 must divide"),
    ("jamba-tiny", dict(experts_per_token=5), "experts_per_token=5 must be between 1 and n_experts=4"),
    ("griffin-tiny", dict(lru_width=66), "must divide lru_width=66"),
    ("samba-tiny", dict(sliding_window=None), "samba needs sliding_window"),
])
def test_inconsistent_mixer_config_fails_at_construction(name, overrides, message):
    with pytest.raises(ValueError, match=message):
        get_config(name, **overrides)


def test_too_long_sequence_is_refused_with_its_length():
    model = build("llama3-tiny")
    with pytest.raises(ValueError, match="sequence of 513 tokens exceeds max_seq_len=512"):
        model(torch.zeros(1, 513, dtype=torch.long))
    cache = InferenceCache()
    model(torch.zeros(1, 512, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="sequence of 513 tokens"):
        model(torch.zeros(1, 1, dtype=torch.long), cache=cache)
