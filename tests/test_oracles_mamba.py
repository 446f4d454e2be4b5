"""Parity with transformers' MambaForCausalLM and Mamba2ForCausalLM after a weight copy, and with
mamba_ssm's pure-PyTorch references `selective_scan_ref` and `ssd_minimal_discrete` at op level (fp32, CPU).

Models (tiny configs; the weight copy: docs/conventions.md, "Weight layouts"; ours is read off
transformers' config, so the norm eps, 1e-5 by default on both sides, and the embedding tying, on for
Mamba and off for Mamba-2, agree):
transformers' norm weights, D, biases and A_log start at ones, zeros or log(1..N), so all are perturbed
before the copy. Mamba-2 runs 21 tokens with chunks of 8: two full chunks and a partial one. Compared:
the logits and the gradient of every parameter for one scalar loss, Σ logits ⊙ a fixed random tensor.

Ops: our S6 scan with D, z, dt bias and softplus against `selective_scan_ref` (output and final state).
The reference takes no initial state, so ours also runs the second half from the state after the first
half and must reproduce the reference's second half. Our chunked and quadratic SSD with 2 groups of B/C
and an initial state against `ssd_minimal_discrete`, which wants inputs discretised (X = x·Δ, A·Δ), B/C
per head and a length divisible by its chunk; at 19 tokens the oracle runs padded to 24 with Δ = 0,
which leaves its state untouched.

Bound: relative error ‖ours − oracle‖ / ‖oracle‖ <= SAME_MATH = 1e-5 (nanohybrid/tools/testing.py): the
same equations in another order. The last two tests show the checks bite: a wrong convention (x/z
order, ungrouped gated norm, B and C swapped, groups tiled instead of shared by consecutive heads, a
dropped initial state) misses by more than MATERIAL = 1e-3.
"""

import copy

import pytest
import torch
import torch.nn.functional as F

from nanohybrid.model import LanguageModel
from nanohybrid.presets import get_config
from nanohybrid.scan import selective_scan
from nanohybrid.ssd import ssd_chunked, ssd_quadratic
from nanohybrid.tools.testing import SAME_MATH, assert_close, relative_error
from tests.oracles import (assert_every_parameter_copied, import_mamba_ssm_references, modeling_mamba, modeling_mamba2,
                           transformers)

MATERIAL = 1e-3  # 100x SAME_MATH
LENGTH = 21  # not a multiple of Mamba-2's chunk of 8
HF_MODELS = {
    "mamba": (modeling_mamba.MambaForCausalLM, transformers.MambaConfig(
        vocab_size=128, hidden_size=64, num_hidden_layers=2, state_size=16, expand=2, conv_kernel=4)),
    "mamba2": (modeling_mamba2.Mamba2ForCausalLM, transformers.Mamba2Config(
        vocab_size=128, hidden_size=64, num_hidden_layers=2, num_heads=8, head_dim=16, state_size=16, n_groups=2,
        expand=2, conv_kernel=4, chunk_size=8)),
}


def our_config(arch: str, hf):
    common = dict(vocab_size=hf.vocab_size, d_model=hf.hidden_size, n_layers=hf.num_hidden_layers,
                  d_state=hf.state_size, ssm_expand=hf.expand, d_conv=hf.conv_kernel,
                  norm_eps=hf.layer_norm_epsilon, tie_embeddings=hf.tie_word_embeddings)
    if arch == "mamba":
        return get_config("mamba-tiny", **common, dt_rank=hf.time_step_rank)
    return get_config("mamba2-tiny", **common, mamba2_head_dim=hf.head_dim, mamba2_n_groups=hf.n_groups,
                      chunk_size=hf.chunk_size)


def hf_name(name: str) -> str:
    """Our parameter name -> transformers' (Mamba and Mamba-2 name their mixers' parameters alike)."""
    top = {"embedding.weight": "backbone.embeddings.weight", "final_norm.weight": "backbone.norm_f.weight",
           "lm_head.weight": "lm_head.weight"}
    if name in top:
        return top[name]
    _, i, module, rest = name.split(".", 3)  # blocks.{i}.{mixer_norm | mixer}.{rest}
    return f"backbone.layers.{i}." + ("norm.weight" if module == "mixer_norm" else "mixer." + rest.removeprefix("ssm."))


@pytest.fixture(scope="module", params=["mamba", "mamba2"])
def pair(request):
    hf_class, hf_config = HF_MODELS[request.param]
    torch.manual_seed(0)
    hf = hf_class(hf_config).eval()
    with torch.no_grad():
        for name, parameter in hf.named_parameters():
            if parameter.dim() == 1 or name.endswith("A_log"):  # norm weights, D, biases, A_log
                parameter.add_(0.2 * torch.randn_like(parameter))
    ours = LanguageModel(our_config(request.param, hf_config)).eval()
    hf_parameters = dict(hf.named_parameters())
    ours.load_state_dict({name: hf_parameters[hf_name(name)].detach().clone() for name in ours.state_dict()})
    return hf, ours


def logits_and_gradients(model, tokens, forward):
    """Logits, and the gradients of Σ logits ⊙ (fixed random tensor) by parameter name."""
    model.zero_grad(set_to_none=True)
    logits = forward(model, tokens)
    upstream = torch.randn(logits.shape, generator=torch.Generator().manual_seed(2))
    (logits * upstream).sum().backward()
    return logits.detach(), {name: p.grad for name, p in model.named_parameters()}


def run_both(hf, ours):
    tokens = torch.randint(0, 128, (2, LENGTH), generator=torch.Generator().manual_seed(1))
    theirs = logits_and_gradients(hf, tokens, lambda model, t: model(input_ids=t, use_cache=False).logits)
    mine = logits_and_gradients(ours, tokens, lambda model, t: model(t).logits)
    return mine, theirs


def test_weight_mapping_covers_every_parameter_on_both_sides(pair):
    hf, ours = pair
    hf_parameters = dict(hf.named_parameters())
    assert_every_parameter_copied(ours, hf, lambda name: (hf_parameters[hf_name(name)], hf_name(name)))
    assert (ours.lm_head is None) == hf.config.tie_word_embeddings


def test_logits_and_every_gradient_match(pair):
    (logits, grads), (hf_logits, hf_grads) = run_both(*pair)
    assert_close(logits, hf_logits, SAME_MATH, "logits")
    for name, grad in grads.items():
        expected = hf_grads[hf_name(name)]
        assert expected.norm() > 0, f"d{name} is zero in transformers: the check would be vacuous"
        assert_close(grad, expected, SAME_MATH, f"d{name}")


def read_in_proj_as_z_then_x(ours):
    """Mamba-1's in_proj rows are [x; z]: read them the other way round."""
    for block in ours.blocks:
        x, z = block.mixer.in_proj.weight.data.chunk(2)
        block.mixer.in_proj.weight.data = torch.cat([z, x])


def ungroup_gated_norm(ours):
    """Mamba-2's gated RMSNorm normalises each group of d_inner / n_groups channels: normalise all at once."""
    for block in ours.blocks:
        block.mixer.norm.group_size = block.mixer.norm.weight.numel()


def test_a_wrong_convention_misses_transformers(pair):
    hf, ours = pair
    mutant = copy.deepcopy(ours)
    (read_in_proj_as_z_then_x if ours.config.arch == "mamba" else ungroup_gated_norm)(mutant)
    (logits, grads), (hf_logits, hf_grads) = run_both(hf, mutant)
    assert relative_error(logits, hf_logits) > MATERIAL
    in_proj = "blocks.0.mixer.in_proj.weight"
    assert relative_error(grads[in_proj], hf_grads[hf_name(in_proj)]) > MATERIAL


def s6_inputs(batch=2, length=19, channels=6, state=4):
    generator = torch.Generator().manual_seed(3)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    return dict(x=randn(batch, length, channels), dt=randn(batch, length, channels),
                A=-torch.exp(randn(channels, state)), B=randn(batch, length, state), C=randn(batch, length, state),
                D=randn(channels), z=randn(batch, length, channels), dt_bias=randn(channels))


def reference_s6(selective_scan_ref, x, dt, A, B, C, D, z, dt_bias):
    """selective_scan_ref in our layout: it takes x, dt, z as (b, d, l) and B, C as (b, n, l)."""
    y, last = selective_scan_ref(x.mT, dt.mT, A, B.mT, C.mT, D, z.mT, dt_bias, delta_softplus=True,
                                 return_last_state=True)
    return y.mT, last


def test_selective_scan_matches_selective_scan_ref():
    selective_scan_ref, _ = import_mamba_ssm_references()
    inputs = s6_inputs()
    expected_y, expected_state = reference_s6(selective_scan_ref, **inputs)
    y, state = selective_scan(**inputs, dt_softplus=True)
    assert_close(y, expected_y, SAME_MATH, "y")
    assert_close(state, expected_state, SAME_MATH, "final state")
    per_token = ("x", "dt", "B", "C", "z")
    first = {k: v[:, :8] if k in per_token else v for k, v in inputs.items()}
    second = {k: v[:, 8:] if k in per_token else v for k, v in inputs.items()}
    _, middle = selective_scan(**first, dt_softplus=True)
    y_second, state_second = selective_scan(**second, dt_softplus=True, initial_state=middle)
    assert_close(y_second, expected_y[:, 8:], SAME_MATH, "y from a non-zero initial state")
    assert_close(state_second, expected_state, SAME_MATH, "final state from a non-zero initial state")


def ssd_inputs(batch=2, length=24, heads=4, head_dim=3, groups=2, state=5):
    generator = torch.Generator().manual_seed(4)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    return dict(x=randn(batch, length, heads, head_dim), dt=F.softplus(randn(batch, length, heads)),
                A=-torch.exp(randn(heads) - 2),  # slow decays: the initial state still counts after 24 tokens
                B=randn(batch, length, groups, state), C=randn(batch, length, groups, state),
                initial=randn(batch, heads, head_dim, state))


def shared_by_consecutive_heads(BC, heads):
    """(b, l, g, n) -> (b, l, h, n): group k serves heads k·h/g ... (k+1)·h/g - 1 (docs/conventions.md,
    "Mamba-2 groups")."""
    return BC.repeat_interleave(heads // BC.shape[2], dim=2)


def reference_ssd(ssd_minimal_discrete, x, dt, A, B, C, initial, pad_to=None,
                  groups_to_heads=shared_by_consecutive_heads, chunk_size=8):
    """ssd_minimal_discrete on our inputs: discretised, B and C per head, padded with Δ = 0 to `pad_to` tokens."""
    length, heads = x.shape[1], x.shape[2]
    pad = (pad_to or length) - length
    x, dt, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
    y, final = ssd_minimal_discrete(x * dt[..., None], A * dt, groups_to_heads(B, heads), groups_to_heads(C, heads), chunk_size,
                                    initial_states=None if initial is None else initial[:, None])
    return y[:, :length], final


def our_ssd(form, x, dt, A, B, C, initial):
    return ssd_chunked(x, dt, A, B, C, 8, initial) if form == "chunked" else ssd_quadratic(x, dt, A, B, C, initial)


@pytest.mark.parametrize("form", ["chunked", "quadratic"])
def test_ssd_matches_ssd_minimal_discrete_with_groups_and_an_initial_state(form):
    _, ssd_minimal_discrete = import_mamba_ssm_references()
    inputs = ssd_inputs()
    expected_y, expected_state = reference_ssd(ssd_minimal_discrete, **inputs)
    y, final = our_ssd(form, **inputs)
    assert_close(y, expected_y, SAME_MATH, "y")
    assert_close(final, expected_state, SAME_MATH, "final state")


def test_ssd_chunked_with_a_partial_last_chunk():
    _, ssd_minimal_discrete = import_mamba_ssm_references()
    inputs = {k: v[:, :19] if k in ("x", "dt", "B", "C") else v for k, v in ssd_inputs().items()}  # 19 = 8 + 8 + 3
    expected_y, expected_state = reference_ssd(ssd_minimal_discrete, **inputs, pad_to=24)
    y, final = our_ssd("chunked", **inputs)
    assert_close(y, expected_y, SAME_MATH, "y")
    assert_close(final, expected_state, SAME_MATH, "final state")


def test_a_wrong_convention_misses_the_op_references():
    selective_scan_ref, ssd_minimal_discrete = import_mamba_ssm_references()
    s6 = s6_inputs()
    expected_y, _ = reference_s6(selective_scan_ref, **s6)
    swapped_B_C, _ = selective_scan(**{**s6, "B": s6["C"], "C": s6["B"]}, dt_softplus=True)  # x_proj as [δ | C | B]
    assert relative_error(swapped_B_C, expected_y) > MATERIAL
    inputs = ssd_inputs()
    y, final = our_ssd("chunked", **inputs)

    def tiled(BC, heads):  # group k serves heads k, k + g, k + 2g, ...
        return BC.repeat(1, 1, heads // BC.shape[2], 1)

    tiled_y, _ = reference_ssd(ssd_minimal_discrete, **inputs, groups_to_heads=tiled)
    assert relative_error(y, tiled_y) > MATERIAL
    y_from_zero, final_from_zero = reference_ssd(ssd_minimal_discrete, **{**inputs, "initial": None})
    assert relative_error(y, y_from_zero) > MATERIAL
    assert relative_error(final, final_from_zero) > MATERIAL
