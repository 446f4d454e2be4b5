"""Whole-model parity with transformers' RecurrentGemmaForCausalLM after a weight copy (fp32, CPU).

A 3-layer (RG-LRU, RG-LRU, local MQA) model, d_model 64, window 8 (docs/conventions.md, "Griffin /
RecurrentGemma layout"; the weight copy: "Weight layouts"), against our `griffin` config set to
RecurrentGemma's choices: a window of W keys including the current one ("keys"; our griffin presets
default to DeepMind's "distance"), embeddings times bf16(sqrt(64)) = 8 exactly, logits soft-capped at 30,
Gemma RMSNorm (scale 1 + w), GeGLU MLP with biases (branch 192 = HF intermediate_size / 2), one KV head,
RoPE on half of each head, a bias on the attention output. HF is built with w_init_variance_scale=1
(DeepMind's value; HF's 0.01 leaves the gates near constant and the logits too small for the cap to bend
them); its norm weights and all biases, which start at zero, are perturbed, and its q/k/o projections
scaled by 3 so that the one attention layer moves the logits enough for its window and RoPE conventions to
show; then everything is copied into ours.

Compared, each with relative error ‖ours − HF‖ / ‖HF‖ <= SAME_MATH = 1e-5 (nanohybrid/tools/testing.py):
  - logits on 24 tokens (3 windows), with default positions;
  - logits with a document reset (a 0 in the middle of position_ids): RG-LRU state reset, RoPE
    positions restarting and attention confined to the document;
  - gradients of a cross-entropy on those logits w.r.t. RG-LRU parameters, a conv weight and others.
    One recurrence-gate bias is pushed to -16 (r_t ≈ 1e-7), so that for that channel 1 - a_t² is
    below 2.5e-7 on most tokens and rounds to 0 on some: the clipped sqrt derivative of both sides
    (HF SqrtBoundDerivative, our SqrtBoundedGradient: at most 1000) is what keeps its gradient finite.
    That channel's gradients are also compared on their own, with a bound of CANCELLING_SUM = 1e-3:
    each is one scalar summed over 48 tokens whose terms cancel about 25-fold, and each term's 1 - a_t²
    is a multiple of fp32's spacing below 1 (6e-8) against values near 2.5e-7, so it hangs on the last
    bit of the gate's input. Summing the conv's four taps in another order (1 ulp on x) moves the scalar
    by 4e-5 to 1.6e-4 (measured over four orders); a clip at 100 instead of 1000 moves it by 0.5 (the
    whole bias tensor by only 6e-6).
The mapping test checks that the copy reads every HF parameter and writes every one of ours. The
mutant tests show the bound bites: each RecurrentGemma choice flipped (the "distance" window among
them), or a sqrt derivative clipped elsewhere or not at all, misses HF by far more than the bounds.

At a document reset both sides also stop attention from reaching into the previous document (HF's
masking_utils detects packed sequences from position_ids when no attention_mask is given; ours counts
documents from positions == 0), so HF runs with its default masking throughout.
"""

import pytest
import torch
import torch.nn.functional as F

import nanohybrid.rglru
from nanohybrid.model import LanguageModel
from nanohybrid.presets import get_config
from nanohybrid.tools.testing import SAME_MATH, assert_close, relative_error
from tests.oracles import assert_every_parameter_copied, modeling_recurrent_gemma, transformers

D_MODEL, VOCAB, WINDOW, LENGTH, RESET_AT = 64, 128, 8, 24, 13
MATERIAL = 1e-3  # 100x SAME_MATH: what a convention that differs from HF's must miss by
CANCELLING_SUM = 1e-3  # the clipped channel's gradient elements: 6x the reordering spread (module docstring)
HF_KWARGS = dict(
    num_hidden_layers=3, vocab_size=VOCAB, hidden_size=D_MODEL, intermediate_size=2 * 192, num_attention_heads=4,
    num_key_value_heads=1, lru_width=D_MODEL, attention_window_size=WINDOW, conv1d_width=4, logits_soft_cap=30.0,
    rms_norm_eps=1e-6, w_init_variance_scale=1.0,
    pad_token_id=None, use_cache=False, attn_implementation="eager",  # no padding_idx: it zeroes a row's gradient
)
OUR_CONFIG = dict(
    vocab_size=VOCAB, d_model=D_MODEL, n_layers=3, n_heads=4, n_kv_heads=1, d_ff=192, lru_width=D_MODEL, d_conv=4,
    sliding_window=WINDOW, window_convention="keys", conv_cuts_documents=False,  # transformers' conv reads across
    rope_theta=10000.0, rotary_fraction=0.5, norm_eps=1e-6, norm_offset=True, scale_embeddings=True, logit_softcap=30.0, mlp_activation="gelu_tanh", mlp_bias=True,
    attention_out_bias=True,
)
RENAMES = [  # (ours, HF) name fragments, replaced in this order
    ("embedding.", "model.embed_tokens."), ("final_norm.", "model.final_norm."), ("blocks.", "model.layers."),
    ("mixer_norm.", "temporal_pre_norm."), ("ffn_norm.", "channel_pre_norm."), ("ffn.", "mlp_block."),
    ("mixer.conv1d.", "temporal_block.conv_1d."), ("rg_lru.input_gate.", "rg_lru.input_gate_"),
    ("rg_lru.recurrence_gate.", "rg_lru.recurrent_gate_"), ("mixer.", "temporal_block."),
]
CLIPPED_GATE = "blocks.0.mixer.rg_lru.recurrence_gate.bias"  # its element [0, 0] (channel 0) is pushed to -16
CLIPPED_CHANNEL = [(CLIPPED_GATE, (0, 0)), ("blocks.0.mixer.rg_lru.recurrent_param", 0)]
GRADIENT_CHECKS = [
    "blocks.0.mixer.rg_lru.recurrent_param", "blocks.1.mixer.rg_lru.recurrent_param", CLIPPED_GATE,
    "blocks.0.mixer.rg_lru.recurrence_gate.weight", "blocks.1.mixer.rg_lru.input_gate.weight",
    "blocks.0.mixer.conv1d.weight", "blocks.1.mixer.linear_x.weight", "blocks.2.mixer.k_proj.weight",
    "blocks.2.mixer.o_proj.bias", "blocks.2.ffn.gate_proj.weight", "final_norm.weight", "embedding.weight",
]


def hf_name(name: str) -> str:
    for ours, theirs in RENAMES:
        name = name.replace(ours, theirs)
    return name


def build_ours(hf, **overrides) -> LanguageModel:
    """Our model with `hf`'s weights, configured as RecurrentGemma except for `overrides`."""
    ours = LanguageModel(get_config("griffin-tiny", **{**OUR_CONFIG, **overrides})).eval()
    hf_params = dict(hf.named_parameters())
    ours.load_state_dict({name: hf_params[hf_name(name)].detach().clone() for name in ours.state_dict()}, strict=True)
    return ours


PUBLISHED_BLOCKS = ("recurrent", "recurrent", "attention")
OTHER_BLOCKS = ("attention", "recurrent")  # 3 layers: attention, RG-LRU, attention


def build_hf(block_types=PUBLISHED_BLOCKS):
    torch.manual_seed(0)
    config = transformers.RecurrentGemmaConfig(**HF_KWARGS, block_types=list(block_types))
    hf = modeling_recurrent_gemma.RecurrentGemmaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith(("norm.weight", "bias")):  # all start at zero
                p.add_(0.2 * torch.randn_like(p))
            elif name.endswith(("q_proj.weight", "k_proj.weight", "o_proj.weight")):  # sharper, louder attention
                p.mul_(3.0)
        if block_types[0] == "recurrent":
            hf.get_parameter(hf_name(CLIPPED_GATE))[0, 0] = -16.0  # r_t ≈ 1e-7: 1 - a_t² in the clipped range
    return hf


@pytest.fixture(scope="module")
def pair():
    hf = build_hf()
    return hf, build_ours(hf)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, VOCAB, (2, LENGTH), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def positions():
    """Row 0: one document; row 1: a second document starts at token RESET_AT."""
    positions = torch.arange(LENGTH).repeat(2, 1)
    positions[1, RESET_AT:] = torch.arange(LENGTH - RESET_AT)
    return positions


def hf_logits(hf, tokens, positions=None):
    return hf(input_ids=tokens, position_ids=positions, use_cache=False).logits


def hf_layer_types(config) -> list[str]:
    """Our layers named as transformers' RecurrentGemmaConfig.layers_block_type names them."""
    return [{"rglru": "linear_attention", "attention": "sliding_attention"}[spec.mixer] for spec in config.layers]


def test_config_matches_hf_layer_pattern(pair):
    hf, ours = pair
    assert hf_layer_types(ours.config) == hf.config.layers_block_type
    assert hf.lm_head.weight is hf.model.embed_tokens.weight and ours.lm_head is None  # tied on both sides
    assert hf.model.normalizer.item() == ours.embedding_scale == 8.0


def test_the_default_blocks_are_the_published_pattern():
    assert get_config("griffin-tiny").block_types == PUBLISHED_BLOCKS
    assert tuple(transformers.RecurrentGemmaConfig().block_types) == PUBLISHED_BLOCKS


def test_another_block_pattern_matches_hf(tokens):
    """block_types set as in RecurrentGemma's config, and repeated over the layers as there."""
    hf = build_hf(OTHER_BLOCKS)
    ours = build_ours(hf, block_types=OTHER_BLOCKS)
    assert [spec.mixer for spec in ours.config.layers] == ["attention", "rglru", "attention"]
    assert hf_layer_types(ours.config) == hf.config.layers_block_type
    with torch.no_grad():
        assert_close(ours(tokens).logits, hf_logits(hf, tokens), SAME_MATH, "logits")


def test_weight_mapping_covers_every_parameter_on_both_sides(pair):
    hf, ours = pair
    hf_params = dict(hf.named_parameters())  # the tied lm_head appears once, as the embedding
    assert_every_parameter_copied(ours, hf, lambda name: (hf_params[hf_name(name)], hf_name(name)))


def test_logits_match_hf_beyond_the_window(pair, tokens):
    hf, ours = pair
    with torch.no_grad():
        theirs = hf_logits(hf, tokens)
        assert_close(ours(tokens).logits, theirs, SAME_MATH, name="logits")
    assert theirs.abs().max() > 10  # the soft cap (30) bends the larger logits by several percent


def test_logits_match_hf_with_a_document_reset(pair, tokens, positions):
    hf, ours = pair
    with torch.no_grad():
        mine = ours(tokens, positions=positions).logits
        assert_close(mine, hf_logits(hf, tokens, positions), SAME_MATH, name="logits with a reset")
        # The reset is not a no-op: row 1 after it changes materially, row 0 and row 1 before it do not.
        plain = ours(tokens).logits
    assert relative_error(mine[1, RESET_AT:], plain[1, RESET_AT:]) > MATERIAL
    assert_close(mine[:, :RESET_AT], plain[:, :RESET_AT], SAME_MATH, name="logits before the reset")
    assert_close(mine[0], plain[0], SAME_MATH, name="logits of the row without a reset")


def backward_both(hf, ours, tokens, positions):
    """The same cross-entropy on both models' logits, back-propagated from zeroed gradients."""
    hf.zero_grad(set_to_none=True)
    ours.zero_grad(set_to_none=True)
    for logits in (ours(tokens, positions=positions).logits, hf_logits(hf, tokens, positions)):
        F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()).backward()
    return {name: p.grad for name, p in hf.named_parameters()}


def test_gradients_match_hf(pair, tokens, positions):
    hf, ours = pair
    hf_grads = backward_both(hf, ours, tokens, positions)
    for name in GRADIENT_CHECKS:
        expected = hf_grads[hf_name(name)]
        assert expected.norm() > 0, f"{name}: HF gradient is zero, the check would be vacuous"
        assert_close(ours.get_parameter(name).grad, expected, SAME_MATH, name=f"grad {name}")
    for name, index in CLIPPED_CHANNEL:
        expected = hf_grads[hf_name(name)][index]
        assert_close(ours.get_parameter(name).grad[index], expected, CANCELLING_SUM, name=f"grad {name}[{index}]")


# ---- The checks can fail: conventions that differ from HF's miss by far more than the bound. ----


@pytest.mark.parametrize("override", [
    dict(window_convention="distance"), dict(scale_embeddings=False), dict(logit_softcap=None),
    dict(norm_offset=False), dict(rotary_fraction=1.0), dict(mlp_activation="silu"),
], ids=lambda override: "-".join(f"{k}={v}" for k, v in override.items()))
def test_each_recurrentgemma_choice_matters(pair, tokens, override):
    hf, _ = pair
    mutant = build_ours(hf, **override)
    with torch.no_grad():
        error = relative_error(mutant(tokens).logits, hf_logits(hf, tokens))
    assert error > MATERIAL, f"{override}: relative error {error:.2g}, the test would not notice"


def test_distance_window_differs_only_beyond_the_window(pair, tokens):
    """DeepMind's convention (q - k <= W, W + 1 keys) against HF's (W keys): equal while the sequence
    fits in the window, materially different once it is longer."""
    hf, _ = pair
    distance = build_ours(hf, window_convention="distance")
    with torch.no_grad():
        assert_close(distance(tokens[:, :WINDOW]).logits, hf_logits(hf, tokens[:, :WINDOW]), SAME_MATH, name="W tokens")
        error = relative_error(distance(tokens).logits, hf_logits(hf, tokens))
    assert error > MATERIAL, f"{LENGTH} tokens: relative error {error:.2g}, the windows are not told apart"


def test_cutting_the_conv_at_documents_differs_only_after_a_reset(pair, tokens, positions):
    """DeepMind's conv stops its taps at a document start; transformers' reads the previous document's
    last tokens: the same logits before the reset, materially different after it."""
    hf, _ = pair
    cutting = build_ours(hf, conv_cuts_documents=True)
    with torch.no_grad():
        mine, theirs = cutting(tokens, positions=positions).logits, hf_logits(hf, tokens, positions)
    assert_close(mine[:, :RESET_AT], theirs[:, :RESET_AT], SAME_MATH, name="logits before the reset")
    assert relative_error(mine[1, RESET_AT:], theirs[1, RESET_AT:]) > MATERIAL


class UnclippedSqrt:
    apply = staticmethod(torch.sqrt)


def test_sqrt_derivative_clipped_otherwise_breaks_gradient_parity(pair, tokens, positions, monkeypatch):
    hf, ours = pair
    monkeypatch.setattr(nanohybrid.rglru, "MAX_SQRT_GRADIENT", 100.0)
    hf_grads = backward_both(hf, ours, tokens, positions)
    for name, index in CLIPPED_CHANNEL:
        assert relative_error(ours.get_parameter(name).grad[index], hf_grads[hf_name(name)][index]) > MATERIAL
    monkeypatch.setattr(nanohybrid.rglru, "SqrtBoundedGradient", UnclippedSqrt)
    hf_grads = backward_both(hf, ours, tokens, positions)
    for name, index in CLIPPED_CHANNEL:  # d sqrt(u)/du = inf where u rounds to 0; HF's stays finite
        assert torch.isfinite(hf_grads[hf_name(name)][index])
        assert not torch.isfinite(ours.get_parameter(name).grad[index])
