"""Parity with transformers' MambaForCausalLM and Mamba2ForCausalLM after a weight copy, and with
mamba_ssm's pure-PyTorch references `selective_scan_ref` and `ssd_minimal_discrete` at op level (fp32, CPU).

The model tests perturb transformers' norm weights, D and dt biases (they start at one or at a fixed
init) before copying, run Mamba-2 at a length that is not a multiple of its chunk, and compare the
logits and the gradient of every parameter. The op tests compare outputs and final states; mamba_ssm's
references take no initial state for S6, so ours is started from the state of a first half and
compared with the reference's second half. Bound: relative error <= SAME_MATH = 1e-5 (nanohybrid/testing.py).
"""

import pytest
import torch
import torch.nn.functional as F

from nanohybrid.config import get_config
from nanohybrid.model import LanguageModel
from nanohybrid.scan import selective_scan
from nanohybrid.ssd import ssd_chunked, ssd_quadratic
from nanohybrid.testing import SAME_MATH, assert_close
from tests.oracles import (assert_every_parameter_copied, import_mamba_ssm_references, modeling_mamba,
                           modeling_mamba2, transformers)

MAMBA = (modeling_mamba.MambaForCausalLM, transformers.MambaConfig,
         dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, state_size=16, expand=2, conv_kernel=4),
         "mamba-tiny", dict(vocab_size=128, d_model=64, n_layers=2, d_state=16, ssm_expand=2, d_conv=4, dt_rank=4))
MAMBA2 = (modeling_mamba2.Mamba2ForCausalLM, transformers.Mamba2Config,
          dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_heads=8, head_dim=16, state_size=16,
               n_groups=2, expand=2, conv_kernel=4, chunk_size=8),
          "mamba2-tiny", dict(vocab_size=128, d_model=64, n_layers=2, d_state=16, mamba2_head_dim=16,
                              mamba2_n_groups=2, ssm_expand=2, d_conv=4, chunk_size=8, tie_embeddings=False))


def hf_name(name: str) -> str:
    """Our parameter name -> transformers' (Mamba and Mamba-2 share the layout)."""
    top = {"embedding.weight": "backbone.embeddings.weight", "final_norm.weight": "backbone.norm_f.weight",
           "lm_head.weight": "lm_head.weight"}
    if name in top:
        return top[name]
    _, i, module, rest = name.split(".", 3)  # blocks.{i}.{mixer_norm | mixer}.{rest}
    return f"backbone.layers.{i}." + ("norm.weight" if module == "mixer_norm" else "mixer." + rest.removeprefix("ssm."))


@pytest.fixture(scope="module", params=[MAMBA, MAMBA2], ids=["mamba", "mamba2"])
def pair(request):
    hf_class, hf_config, hf_sizes, preset, our_sizes = request.param
    torch.manual_seed(0)
    hf = hf_class(hf_config(**hf_sizes, layer_norm_epsilon=1e-5)).eval()
    with torch.no_grad():
        for name, parameter in hf.named_parameters():
            if parameter.dim() == 1:  # norm weights, D, dt biases
                parameter.add_(0.2 * torch.randn_like(parameter))
    ours = LanguageModel(get_config(preset, **our_sizes, norm_eps=1e-5)).eval()
    hf_parameters = dict(hf.named_parameters())
    ours.load_state_dict({name: hf_parameters[hf_name(name)].detach().clone() for name in ours.state_dict()})
    return hf, ours


def test_weight_mapping_covers_every_parameter_on_both_sides(pair):
    hf, ours = pair
    hf_parameters = dict(hf.named_parameters())
    assert_every_parameter_copied(ours, hf, lambda name: (hf_parameters[hf_name(name)], hf_name(name)))


def test_logits_and_every_gradient_match(pair):
    hf, ours = pair
    tokens = torch.randint(0, 128, (2, 21), generator=torch.Generator().manual_seed(1))  # 21: not a multiple of 8
    theirs = hf(input_ids=tokens, use_cache=False).logits
    mine = ours(tokens).logits
    assert_close(mine, theirs, SAME_MATH, "logits")
    upstream = torch.randn(theirs.shape, generator=torch.Generator().manual_seed(2))
    hf.zero_grad(), ours.zero_grad()
    (theirs * upstream).sum().backward()
    (mine * upstream).sum().backward()
    hf_parameters = dict(hf.named_parameters())
    for name, parameter in ours.named_parameters():
        assert_close(parameter.grad, hf_parameters[hf_name(name)].grad, SAME_MATH, f"d{name}")


def s6_inputs(batch=2, length=19, channels=6, state=4):
    generator = torch.Generator().manual_seed(3)
    def randn(*shape):
        return torch.randn(*shape, generator=generator)
    return dict(x=randn(batch, length, channels), dt=randn(batch, length, channels), A=-torch.exp(randn(channels, state)),
                B=randn(batch, length, state), C=randn(batch, length, state), D=randn(channels),
                z=randn(batch, length, channels), dt_bias=randn(channels))


def reference_s6(selective_scan_ref, x, dt, A, B, C, D, z, dt_bias):
    """mamba_ssm's layout: (b, d, l) for x, dt, z and (b, n, l) for B, C."""
    y, last = selective_scan_ref(x.mT, dt.mT, A, B.mT, C.mT, D, z.mT, dt_bias, delta_softplus=True, return_last_state=True)
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


@pytest.mark.parametrize("form", ["chunked", "quadratic"])
def test_ssd_matches_ssd_minimal_discrete_with_groups_and_an_initial_state(form):
    _, ssd_minimal_discrete = import_mamba_ssm_references()
    generator = torch.Generator().manual_seed(4)
    batch, length, heads, head_dim, groups, state = 2, 24, 4, 3, 2, 5
    x = torch.randn(batch, length, heads, head_dim, generator=generator)
    dt = F.softplus(torch.randn(batch, length, heads, generator=generator))
    A = -torch.exp(torch.randn(heads, generator=generator))
    B = torch.randn(batch, length, groups, state, generator=generator)
    C = torch.randn(batch, length, groups, state, generator=generator)
    initial = torch.randn(batch, heads, head_dim, state, generator=generator)
    per_head = {"B": B.repeat_interleave(heads // groups, dim=2), "C": C.repeat_interleave(heads // groups, dim=2)}
    expected_y, expected_state = ssd_minimal_discrete(x * dt[..., None], A * dt, per_head["B"], per_head["C"], 8,
                                                      initial_states=initial[:, None])
    if form == "chunked":
        y, final = ssd_chunked(x, dt, A, B, C, 8, initial)
        y_odd, _ = ssd_chunked(x[:, :19], dt[:, :19], A, B[:, :19], C[:, :19], 8, initial)  # 19: a partial chunk
        assert_close(y_odd, expected_y[:, :19], SAME_MATH, "y at a length that is not a multiple of the chunk")
    else:
        y, final = ssd_quadratic(x, dt, A, B, C, initial)
    assert_close(y, expected_y, SAME_MATH, "y")
    assert_close(final, expected_state, SAME_MATH, "final state")
