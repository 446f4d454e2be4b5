"""Whole-model parity with transformers' LlamaForCausalLM and MistralForCausalLM after a weight copy (fp32, CPU).

`llama3` against Llama (tied and untied embeddings, GQA 4/2, a non-default RoPE base), and `llama3` with
`sliding_window` set against Mistral, whose window keeps W keys including the current one ("keys").
transformers' norm weights start at one, so they are perturbed before the copy; the RoPE base and the
norm eps are the default of neither side, so both configs must pass them through.

Compared: logits, the loss (HF shifts the labels itself; ours takes targets already shifted) and the
gradient of every parameter, by relative error ‖ours − HF‖ / ‖HF‖ <= SAME_MATH = 1e-5
(nanohybrid/tools/testing.py). Both sides compute the same fp32 equations in a different order, which costs
about 2e-7 on the logits and 6e-7 on the gradients here; a wrong mapping, RoPE base, eps or window
costs 1e-3 or more. A window of the other convention ("distance": one key more) misses Mistral by 0.27.
"""

import pytest
import torch

from nanohybrid.model import LanguageModel
from nanohybrid.presets import get_config
from nanohybrid.tools.testing import SAME_MATH, assert_close, relative_error
from tests.oracles import assert_every_parameter_copied, modeling_llama, modeling_mistral, transformers

SIZES = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, rms_norm_eps=2e-6, rope_parameters={"rope_type": "default", "rope_theta": 5000.0},
             attn_implementation="eager", pad_token_id=None)
OURS = dict(vocab_size=128, d_model=64, d_ff=96, n_layers=3, n_heads=4, n_kv_heads=2, norm_eps=2e-6, rope_theta=5000.0)
WINDOW = 5


def hf_name(name: str) -> str:
    """Our parameter name -> transformers' (the same for Llama and Mistral)."""
    top = {"embedding.weight": "model.embed_tokens.weight", "final_norm.weight": "model.norm.weight",
           "lm_head.weight": "lm_head.weight"}
    if name in top:
        return top[name]
    _, i, module, rest = name.split(".", 3)  # blocks.{i}.{module}.{rest}
    renamed = {"mixer_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "mixer": "self_attn", "ffn": "mlp"}
    return f"model.layers.{i}.{renamed[module]}.{rest}"


def build_pair(hf_class, hf_config, tie: bool, **ours):
    torch.manual_seed(0)
    hf = hf_class(hf_config(**SIZES, tie_word_embeddings=tie)).eval()
    with torch.no_grad():
        for name, parameter in hf.named_parameters():
            if "norm" in name:
                parameter.add_(0.2 * torch.randn_like(parameter))
    model = LanguageModel(get_config("llama3-tiny", **OURS, tie_embeddings=tie, **ours)).eval()
    hf_parameters = dict(hf.named_parameters())
    model.load_state_dict({name: hf_parameters[hf_name(name)].detach().clone() for name in model.state_dict()})
    return hf, model


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def llama(request):
    return build_pair(modeling_llama.LlamaForCausalLM, transformers.LlamaConfig, tie=request.param)


@pytest.fixture(scope="module")
def mistral():
    def config(**kwargs):
        return transformers.MistralConfig(**kwargs, sliding_window=WINDOW)
    return build_pair(modeling_mistral.MistralForCausalLM, config, tie=False, sliding_window=WINDOW, window_convention="keys")


def tokens(length=20):
    return torch.randint(0, 128, (2, length), generator=torch.Generator().manual_seed(1))


def test_weight_mapping_covers_every_parameter_on_both_sides(llama):
    hf, ours = llama
    hf_parameters = dict(hf.named_parameters())
    assert_every_parameter_copied(ours, hf, lambda name: (hf_parameters[hf_name(name)], hf_name(name)))


def test_llama_logits_loss_and_every_gradient_match(llama):
    hf, ours = llama
    inputs = tokens()
    theirs = hf(input_ids=inputs, labels=inputs, use_cache=False)
    targets = torch.cat([inputs[:, 1:], torch.full_like(inputs[:, :1], -100)], dim=1)  # targets[t] = inputs[t + 1]
    mine = ours(inputs, targets=targets)
    assert_close(mine.logits, theirs.logits, SAME_MATH, "logits")
    assert_close(mine.loss, theirs.loss, SAME_MATH, "loss")
    hf.zero_grad()
    ours.zero_grad()
    theirs.loss.backward()
    mine.loss.backward()
    hf_parameters = dict(hf.named_parameters())
    for name, parameter in ours.named_parameters():
        assert_close(parameter.grad, hf_parameters[hf_name(name)].grad, SAME_MATH, f"d{name}")


def test_mistral_sliding_window_logits_match(mistral):
    hf, ours = mistral
    inputs = tokens(24)  # almost five windows
    with torch.no_grad():
        assert_close(ours(inputs).logits, hf(input_ids=inputs, use_cache=False).logits, SAME_MATH, "logits")


def test_the_other_window_convention_misses_mistral(mistral):
    hf, ours = mistral
    one_key_more = LanguageModel(get_config("llama3-tiny", **OURS, tie_embeddings=False, sliding_window=WINDOW,
                                            window_convention="distance")).eval()
    one_key_more.load_state_dict(ours.state_dict())
    inputs = tokens(24)
    with torch.no_grad():
        theirs = hf(input_ids=inputs, use_cache=False).logits
        mine = one_key_more(inputs).logits
    assert relative_error(mine, theirs) > 1e-3, "W + 1 keys should change the logits once the window is full"
    assert_close(mine[:, :WINDOW], theirs[:, :WINDOW], SAME_MATH, "logits before the window fills")
