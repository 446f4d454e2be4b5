"""Whole models: causality for every preset; recurrent mixers continue from any state; published
parameter counts; clear errors for bad input. (Decoding against the full forward: test_cache.py.)"""

import pytest
import torch

from nanohybrid.cache import ForwardContext, InferenceCache, RecurrentState
from nanohybrid.config import ARCHITECTURES
from nanohybrid.model import LanguageModel
from nanohybrid.presets import PRESETS, get_config
from nanohybrid.tools.testing import SAME_MATH, assert_close

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
    # SAME_MATH, not 0: the edited token may go to other experts, and an expert's matmul over another set of
    # rows rounds differently (qwen3-next-100m: 1.6e-6); a future token that leaks in changes them by far more.
    assert_close(after[:, :changed], before[:, :changed], SAME_MATH, "logits before the edit")
    assert (after[:, changed] - before[:, changed]).abs().max() > 1e-4, "the edited token itself must matter"


@pytest.mark.parametrize("name", ["mamba-tiny", "mamba2-tiny", "hawk-tiny", "hymba-tiny", "gated-deltanet-tiny"])
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
    ("gated-deltanet-tiny", dict(gdn_n_value_heads=3), "gdn_n_heads=2 must divide gdn_n_value_heads=3"),
    ("qwen3-next-tiny", dict(chunk_size=0), "chunk_size must be >= 1"),
    ("gated-deltanet-tiny", dict(gdn_n_heads=0), "gdn_n_heads=0, .*: each must be >= 1"),
    ("qwen3-next-tiny", dict(shared_expert_d_ff=-1), "shared_expert_d_ff=-1: must be >= 0"),
])
def test_inconsistent_mixer_config_fails_at_construction(name, overrides, message):
    with pytest.raises(ValueError, match=message):
        get_config(name, **overrides)


@pytest.mark.parametrize("name, overrides, message", [
    ("jamba-tiny", dict(attn_layer_offset=8), r"attn_layer_offset=8 must be at least 0 and below attn_layer_period=8"),
    ("jamba-tiny", dict(attn_layer_period=0, attn_layer_offset=0), r"attn_layer_offset=0 must be .* attn_layer_period=0"),
    ("jamba-tiny", dict(expert_layer_offset=-1), r"expert_layer_offset=-1 must be at least 0 and below expert_layer_period=2"),
    ("griffin-tiny", dict(block_types=("recurrent", "local")), r'block_types=recurrent,local: .* "recurrent" or "attention"'),
    ("griffin-tiny", dict(block_types=()), r"block_types=: name one or more blocks"),
    ("qwen3-next-tiny", dict(full_attention_interval=0), r"full_attention_interval=0: must be at least 1"),
])
def test_a_layer_pattern_that_cannot_be_built_is_refused_in_one_line(name, overrides, message):
    with pytest.raises(ValueError, match=message) as refused:
        get_config(name, **overrides)
    assert "\n" not in str(refused.value)


def test_layer_pattern_fields_set_the_layers():
    """Jamba's periods and offsets, and Griffin's block types, as a tuple or a comma-separated string (the
    command line's form); a saved config.json gives a list."""
    jamba = get_config("jamba-tiny", attn_layer_period=3, attn_layer_offset=0, expert_layer_period=4, expert_layer_offset=3)
    assert [(spec.mixer, spec.ffn) for spec in jamba.layers[:5]] == [
        ("attention", "mlp"), ("mamba", "mlp"), ("mamba", "mlp"), ("attention", "moe"), ("mamba", "mlp")]
    for block_types in (("attention", "recurrent"), "attention, recurrent", ["attention", "recurrent"]):
        griffin = get_config("griffin-tiny", n_layers=5, block_types=block_types)
        assert griffin.block_types == ("attention", "recurrent")
        assert [spec.mixer for spec in griffin.layers] == ["attention", "rglru", "attention", "rglru", "attention"]


def test_too_long_sequence_is_refused_with_its_length():
    model = build("llama3-tiny")
    with pytest.raises(ValueError, match="sequence of 513 tokens exceeds max_seq_len=512"):
        model(torch.zeros(1, 513, dtype=torch.long))
    cache = InferenceCache()
    model(torch.zeros(1, 512, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="sequence of 513 tokens"):
        model(torch.zeros(1, 1, dtype=torch.long), cache=cache)
