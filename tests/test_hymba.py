"""Hymba, checked against the published layout (arXiv 2411.13676 and the released Hymba-1.5B config;
docs/conventions.md, "Hymba layout"), since there is no CPU-runnable official implementation:
the 1.5B layout and parameter count, KV sharing, meta-token positions, loss and visibility, and β."""

import torch

from nanohybrid.attention import AttentionCore
from nanohybrid.cache import ForwardContext, InferenceCache
from nanohybrid.model import LanguageModel
from nanohybrid.presets import get_config
from nanohybrid.tools.testing import SAME_MATH, assert_close


def test_hymba_paper_layout_matches_the_released_1_5b():
    layers = get_config("hymba-paper").layers
    assert [i for i, spec in enumerate(layers) if spec.sliding_window is None] == [0, 15, 31]
    groups = {}
    for i, spec in enumerate(layers):
        if spec.sliding_window is not None:
            groups.setdefault(spec.kv_producer if spec.kv_producer is not None else i, []).append(i)
    expected = [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12], [13, 14], [16, 17, 18], [19, 20], [21, 22],
                [23, 24], [25, 26], [27, 28], [29, 30]]  # HF kv_reuse_group
    assert list(groups.values()) == expected
    assert sum(spec.kv_producer is None for spec in layers) == 17  # 3 global + 14 SWA producers
    assert all(spec.sliding_window == 1024 for spec in layers if spec.sliding_window is not None)


def test_hymba_paper_parameter_count_is_1522_8m():
    with torch.device("meta"):
        model = LanguageModel(get_config("hymba-paper"))
    assert abs(model.num_parameters() - 1_522.8e6) < 0.05e6
    in_proj = model.blocks[1].mixer.in_proj.out_features, model.blocks[2].mixer.in_proj.out_features
    assert in_proj == (8960, 8000)  # Q 1600 + K 320 + V 640 + X 3200 + gate 3200; a consumer has no K, V


def test_only_producers_hold_a_kv_cache():
    model = LanguageModel(get_config("hymba-tiny"))
    cache = InferenceCache()
    model(torch.zeros(1, 5, dtype=torch.long), cache=cache)
    kv_layers = sorted(i for i, kind in cache.states if kind == "kv")
    assert kv_layers == [0, 1, 3, 4, 7]
    assert sorted(i for i, kind in cache.states if kind == "ssm") == list(range(8))


def test_meta_tokens_take_positions_0_to_m_minus_1_and_real_tokens_start_at_m():
    model = LanguageModel(get_config("hymba-tiny"))  # 8 meta tokens
    seen = []
    model.blocks[0].mixer.attention.register_forward_hook(lambda module, args, out: seen.append(args[3].positions))
    model(torch.zeros(2, 5, dtype=torch.long))
    assert seen[0].tolist() == [list(range(13))] * 2
    cache = InferenceCache()
    model(torch.zeros(1, 5, dtype=torch.long), cache=cache)
    model(torch.zeros(1, 1, dtype=torch.long), cache=cache)
    assert seen[-1].tolist() == [[13]]  # decoding continues after meta + prompt


def test_meta_tokens_are_stripped_and_carry_no_loss():
    torch.manual_seed(0)
    model = LanguageModel(get_config("hymba-tiny"))
    tokens = torch.randint(0, 320, (2, 6))
    out = model(tokens, targets=tokens)
    assert out.logits.shape == (2, 6, 320)
    expected = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), tokens.flatten())
    assert_close(out.loss, expected, SAME_MATH, "loss over real tokens only")
    out.loss.backward()
    assert model.meta_tokens.embeddings.grad.abs().sum() > 0  # trained end to end through the real tokens


def test_meta_tokens_stay_visible_to_sliding_window_attention():
    config = get_config("hymba-tiny", n_meta_tokens=4)  # window 8
    core = AttentionCore(config, config.layers[1], layer_idx=1)
    assert core.max_distance == 8  # Hymba's convention: q - k <= window
    torch.manual_seed(0)
    length = 30
    q = torch.randn(1, length, 4, 16)
    k, v = torch.randn(1, length, 2, 16), torch.randn(1, length, 2, 32)
    index = torch.arange(length)[None]
    def last_query(k, v):
        return core(q, k, v, ForwardContext(index, index, torch.zeros_like(index), n_meta=4))[:, -1]
    base = last_query(k, v)
    meta_changed, far_changed = v.clone(), v.clone()
    meta_changed[:, 2] += 1.0  # a meta token, 27 positions back
    far_changed[:, 10] += 1.0  # a real token outside the window
    assert (last_query(k, meta_changed) - base).abs().max() > 1e-3
    assert torch.equal(last_query(k, far_changed), base)


def test_zeroing_a_beta_removes_that_branch_exactly():
    torch.manual_seed(0)
    config = get_config("hymba-tiny", n_meta_tokens=0)
    mixer = LanguageModel(config).blocks[1].mixer
    x = torch.randn(2, 12, config.d_model)
    def run():
        return mixer(x, ForwardContext(torch.arange(12)[None], torch.arange(12)[None], torch.zeros(1, 12, dtype=torch.long), 0))
    q_rows, ssm_rows = mixer.split_sizes[0], slice(sum(mixer.split_sizes[:3]), sum(mixer.split_sizes[:4]))
    with torch.no_grad():
        mixer.attention_norm.weight.zero_()  # β1 = 0: no attention
        without_attention = run()
        mixer.in_proj.weight[:q_rows].normal_()  # scramble the queries
        assert torch.equal(run(), without_attention)
        mixer.attention_norm.weight.fill_(1.0)
        mixer.ssm_norm.weight.zero_()  # β2 = 0: no SSM
        without_ssm = run()
        mixer.in_proj.weight[ssm_rows].normal_()  # scramble the SSM input
        mixer.ssm.A_log.normal_()
        assert torch.equal(run(), without_ssm)
        assert not torch.allclose(without_ssm, without_attention, atol=1e-3)


def _first_mixer_write(preset: str, **overrides) -> float:
    """RMS of what block 0's mixer adds to the residual stream at init, relative to the token embeddings'."""
    torch.manual_seed(0)
    model = LanguageModel(get_config(preset, **overrides))
    tokens = torch.randint(0, model.config.vocab_size, (4, 64))
    written = {}
    model.blocks[0].mixer.register_forward_hook(lambda module, inputs, output: written.setdefault("x", output))
    with torch.no_grad():
        model(tokens)
        embeddings = model.embedding(tokens)
    return (written["x"][:, -64:].pow(2).mean().sqrt() / embeddings.pow(2).mean().sqrt()).item()


def test_hybrid_heads_start_writing_at_the_scale_of_llamas_attention():
    """β starts at fusion_beta_init = 0.1. With the released code's β = 1, the unit-RMS fused output makes
    hymba-small's first layer write 3.9× the embeddings into the residual stream (llama3-small: 0.42×),
    and a 2-layer Hymba did not learn MQAR (see nanohybrid/hybrid_head.py). Bound: within 1.5× of Llama's
    write."""
    for size in ("tiny", "small"):
        llama = _first_mixer_write(f"llama3-{size}")
        assert _first_mixer_write(f"hymba-{size}") < 1.5 * llama
        assert _first_mixer_write(f"hymba-{size}", fusion_beta_init=1.0) > 4 * llama  # the released init, for contrast


def padding_row_gradients(padding_idx):
    """hymba-tiny's loss on tokens with several 0s -> (row 0's gradient, the tied head's share of it, logits)."""
    torch.manual_seed(0)
    model = LanguageModel(get_config("hymba-tiny", embedding_padding_idx=padding_idx))
    tokens = torch.tensor([[0, 5, 0, 9, 3, 0, 7], [2, 0, 4, 0, 0, 8, 1]])
    head_inputs = []  # x entering the tied head: the final norm's output, meta tokens stripped
    model.final_norm.register_forward_hook(lambda module, inputs, out: head_inputs.append(out))
    output = model(tokens, tokens.roll(-1, dims=1))
    output.logits.retain_grad()
    output.loss.backward()
    head_share = torch.einsum("bl,bld->d", output.logits.grad[..., 0], model.meta_tokens.strip(head_inputs[0]))
    return model.embedding.weight.grad[0], head_share, output.logits


def test_the_padding_token_row_learns_only_from_the_tied_lm_head():
    """embedding_padding_idx (the released code's padding_idx=0): token 0's input row gets no gradient from
    the lookup, so its gradient is exactly the tied LM head's, Σ over positions of ∂L/∂logit[0] · x. Without
    the option the lookup adds its share. The weights, and so the logits, are the same either way."""
    assert get_config("hymba-tiny").embedding_padding_idx == 0
    padded_row, padded_head_share, padded_logits = padding_row_gradients(0)
    row, head_share, logits = padding_row_gradients(None)
    assert_close(padded_row, padded_head_share, SAME_MATH, "padding row gradient = the head's")
    assert (row - head_share).norm() > 0.1 * head_share.norm()  # without the option the lookup adds to it
    assert torch.equal(padded_logits, logits)


def test_only_hymba_presets_set_a_padding_token():
    from nanohybrid.presets import PRESETS

    for name in PRESETS:  # hymba-100m: SmolLM's token 0 is <|endoftext|>, the document separator
        expected = 0 if name.startswith("hymba-") and name != "hymba-100m" else None
        assert get_config(name).embedding_padding_idx == expected, name
    assert LanguageModel(get_config("hymba-tiny")).embedding.padding_idx == 0
    assert LanguageModel(get_config("llama3-tiny")).embedding.padding_idx is None
