"""Whole-model parity with transformers' JambaForCausalLM after a weight copy (fp32, CPU).

One 8-layer Jamba block (docs/conventions.md, "Jamba layout"; the weight copy: "Weight layouts"): Mamba-1
with inner RMSNorms on dt/B/C at layers 0-3 and 5-7, attention without RoPE at layer 4, an MoE (4 experts,
top-2) on the odd layers and a SwiGLU MLP on the even ones. HF is initialised, its norms, biases, D and
A_log are perturbed (they start at ones, zeros or log(1..N)) and its router weights scaled up tenfold (so
the top-k weights are far from uniform), then everything is copied into ours.

Compared, each with relative error ‖ours − HF‖ / ‖HF‖ <= SAME_MATH = 1e-5 (nanohybrid/tools/testing.py):
  - logits (b, l, V);
  - the router logits (b·l, n) of every MoE layer, in layer order;
  - the load-balancing loss pooled over all MoE layers (HF `aux_loss`, output_router_logits=True);
  - the total loss CE + router_aux_loss_coef · aux (HF shifts labels itself; ours takes targets
    already shifted, -100 on the last position); the coefficient is raised to 0.1 on both sides so
    that the aux term is a few percent of the loss rather than 0.04%;
  - gradients of that loss w.r.t. router weights, one expert's gate/up/down, A_log and a few others.
Measured (seed 0): logits 3e-7, router logits <= 3e-7, aux 0, loss 1e-7, gradients <= 9e-7.
The mapping test checks that the copy reads every HF parameter and writes every one of ours.
The mutant tests show the bound bites: Mixtral-style renormalised top-k weights, swapped gate/up
halves, a per-layer-mean aux loss and a loss without the aux term all miss HF by far more than 1e-5.
"""

import pytest
import torch
import torch.nn.functional as F

import nanohybrid.moe
from nanohybrid.model import LanguageModel
from nanohybrid.presets import get_config
from nanohybrid.tools.testing import SAME_MATH, assert_close, relative_error
from tests.oracles import assert_every_parameter_copied, modeling_jamba, transformers

AUX_COEF = 0.1
HF_KWARGS = dict(
    vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=8, num_attention_heads=4,
    num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
    mamba_d_state=8, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=8,
    rms_norm_eps=1e-6, tie_word_embeddings=False, router_aux_loss_coef=AUX_COEF, use_cache=False,
    pad_token_id=None,  # else HF's embedding has padding_idx=0: a zero row that never gets a gradient
    attn_implementation="eager", experts_implementation="eager",
)
OUR_CONFIG = dict(
    vocab_size=128, d_model=64, n_layers=8, n_heads=4, n_kv_heads=2, d_ff=96, n_experts=4, experts_per_token=2,
    d_state=8, d_conv=4, ssm_expand=2, dt_rank=8, norm_eps=1e-6, router_aux_loss_coef=AUX_COEF,
)
SSM_RENAMES = {"dt_norm.weight": "dt_layernorm.weight", "B_norm.weight": "b_layernorm.weight",
               "C_norm.weight": "c_layernorm.weight"}
GRADIENT_CHECKS = [  # (our parameter, index into it): routers, expert 1 of layer 3, A_log, and a few more
    ("blocks.1.ffn.router.weight", ...), ("blocks.7.ffn.router.weight", ...),
    ("blocks.3.ffn.gate_proj", 1), ("blocks.3.ffn.up_proj", 1), ("blocks.3.ffn.down_proj", 1),
    ("blocks.0.mixer.ssm.A_log", ...), ("blocks.6.mixer.ssm.A_log", ...),
    ("blocks.2.mixer.ssm.dt_norm.weight", ...), ("blocks.4.mixer.k_proj.weight", ...), ("final_norm.weight", ...),
    ("embedding.weight", ...),
]


def hf_weight(name: str, hf: dict, d_ff: int) -> tuple[torch.Tensor, str]:
    """Our parameter `name` read from `hf` (HF names -> tensors); returns the tensor and the HF name read."""
    top = {"embedding.weight": "model.embed_tokens.weight", "final_norm.weight": "model.final_layernorm.weight",
           "lm_head.weight": "lm_head.weight"}
    if name in top:
        return hf[top[name]], top[name]
    _, i, module, rest = name.split(".", 3)  # blocks.{i}.{module}.{rest}
    prefix = f"model.layers.{i}."
    if module in ("mixer_norm", "ffn_norm"):
        source = prefix + {"mixer_norm": "input_layernorm", "ffn_norm": "pre_ff_layernorm"}[module] + ".weight"
    elif module == "mixer" and rest.split(".")[0] in ("q_proj", "k_proj", "v_proj", "o_proj"):
        source = prefix + "self_attn." + rest
    elif module == "mixer":
        inner = rest.removeprefix("ssm.")
        source = prefix + "mamba." + SSM_RENAMES.get(inner, inner)
    elif rest in ("gate_proj", "up_proj"):  # fused experts: gate_up_proj (n, 2I, d), gate rows first
        source = prefix + "feed_forward.experts.gate_up_proj"
        fused = hf[source]
        return (fused[:, :d_ff] if rest == "gate_proj" else fused[:, d_ff:]), source
    elif rest == "down_proj":
        source = prefix + "feed_forward.experts.down_proj"
    else:  # router.weight and the dense MLP's {gate,up,down}_proj.weight
        source = prefix + "feed_forward." + rest
    return hf[source], source


def build_pair(seed: int = 0, **pattern):
    """HF's model and ours with its weights; `pattern` (attn_layer_period, ...) goes to both configs."""
    torch.manual_seed(seed)
    hf = modeling_jamba.JambaForCausalLM(transformers.JambaConfig(**HF_KWARGS, **pattern)).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.ndim == 1 or name.endswith("A_log"):  # norm weights, D, biases, A_log
                p.add_(0.2 * torch.randn_like(p))
            elif name.endswith("router.weight"):
                p.mul_(10.0)
    config = get_config("jamba-tiny", **OUR_CONFIG, **pattern)
    ours = LanguageModel(config).eval()
    hf_params = dict(hf.named_parameters())
    state = {name: hf_weight(name, hf_params, config.d_ff)[0].detach().clone() for name in ours.state_dict()}
    ours.load_state_dict(state, strict=True)
    return hf, ours


PUBLISHED_PATTERN = dict(attn_layer_period=8, attn_layer_offset=4, expert_layer_period=2, expert_layer_offset=1)
# Attention at layers 1 and 5, the MoE at 2 and 5: a layer with both, and MoE layers next to each other's.
OTHER_PATTERN = dict(attn_layer_period=4, attn_layer_offset=1, expert_layer_period=3, expert_layer_offset=2)


@pytest.fixture(scope="module")
def pair():
    return build_pair(**PUBLISHED_PATTERN)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(1))


def run_both(hf, ours, tokens):
    targets = torch.cat([tokens[:, 1:], torch.full_like(tokens[:, :1], -100)], dim=1)  # targets[t] = tokens[t+1]
    theirs = hf(input_ids=tokens, labels=tokens, output_router_logits=True, use_cache=False)
    return ours(tokens, targets=targets), theirs


def test_config_matches_hf_layer_pattern(pair):
    hf, ours = pair
    assert [s.mixer for s in ours.config.layers] == hf.config.layers_block_type
    assert [s.ffn == "moe" for s in ours.config.layers] == [n > 1 for n in hf.config.layers_num_experts]
    assert hf.lm_head.weight is not hf.model.embed_tokens.weight and ours.lm_head is not None


def test_the_defaults_are_the_published_pattern():
    config = get_config("jamba-tiny")
    assert {name: getattr(config, name) for name in PUBLISHED_PATTERN} == PUBLISHED_PATTERN
    assert {name: getattr(transformers.JambaConfig(), name) for name in PUBLISHED_PATTERN} == PUBLISHED_PATTERN


def test_another_layer_pattern_matches_hf(tokens):
    """attn_layer_period/offset and expert_layer_period/offset set as in transformers' JambaConfig: the same
    layers on both sides, and the same logits, router logits and loss."""
    hf, ours = build_pair(**OTHER_PATTERN)
    assert [s.mixer for s in ours.config.layers] == hf.config.layers_block_type
    assert [i for i, s in enumerate(ours.config.layers) if s.mixer == "attention"] == [1, 5]
    assert [i for i, s in enumerate(ours.config.layers) if s.ffn == "moe"] == [2, 5]
    assert [s.ffn == "moe" for s in ours.config.layers] == [n > 1 for n in hf.config.layers_num_experts]
    with torch.no_grad():
        mine, theirs = run_both(hf, ours, tokens)
    assert_close(mine.logits, theirs.logits, SAME_MATH, name="logits")
    for layer, (a, b) in zip((2, 5), zip(mine.router_logits, theirs.router_logits, strict=True)):
        assert_close(a, b, SAME_MATH, name=f"router logits of layer {layer}")
    assert_close(mine.loss, theirs.loss, SAME_MATH, name="loss")


def test_weight_mapping_covers_every_parameter_on_both_sides(pair):
    hf, ours = pair
    hf_params = dict(hf.named_parameters())
    assert_every_parameter_copied(ours, hf, lambda name: hf_weight(name, hf_params, ours.config.d_ff))


def test_logits_router_logits_aux_and_loss_match_hf(pair, tokens):
    hf, ours = pair
    with torch.no_grad():
        mine, theirs = run_both(hf, ours, tokens)
    assert_close(mine.logits, theirs.logits, SAME_MATH, name="logits")
    assert len(mine.router_logits) == len(theirs.router_logits) == 4  # layers 1, 3, 5, 7
    for layer, (a, b) in zip((1, 3, 5, 7), zip(mine.router_logits, theirs.router_logits)):
        assert_close(a, b, SAME_MATH, name=f"router logits of layer {layer}")
    assert_close(mine.aux_loss, theirs.aux_loss, SAME_MATH, name="aux loss")
    reference = modeling_jamba.load_balancing_loss_func(theirs.router_logits, 4, 2)  # the function, called directly
    assert_close(mine.aux_loss, reference, SAME_MATH, name="aux loss vs load_balancing_loss_func")
    assert abs(theirs.aux_loss - 2.0) > 1e-3  # routing is not balanced: the check sees more than the constant k = 2
    assert_close(mine.loss, theirs.loss, SAME_MATH, name="loss")


def backward_both(hf, ours, tokens):
    """Both losses, back-propagated from zeroed gradients; returns the outputs and HF's gradients by name."""
    hf.zero_grad(set_to_none=True)
    ours.zero_grad(set_to_none=True)
    mine, theirs = run_both(hf, ours, tokens)
    mine.loss.backward()
    theirs.loss.backward()
    return mine, theirs, {name: p.grad for name, p in hf.named_parameters()}


def test_gradients_match_hf(pair, tokens):
    hf, ours = pair
    _, _, hf_grads = backward_both(hf, ours, tokens)
    our_params = dict(ours.named_parameters())
    for name, index in GRADIENT_CHECKS:
        expected = hf_weight(name, hf_grads, ours.config.d_ff)[0][index]
        assert expected.norm() > 0, f"{name}: HF gradient is zero, the check would be vacuous"
        assert_close(our_params[name].grad[index], expected, SAME_MATH, name=f"grad {name}[{index}]")


# ---- The checks can fail: conventions that differ from HF's miss by far more than the bound. ----

MATERIAL = 1e-3  # 100x SAME_MATH


def renormalised_route(router_logits, k):
    weights, experts = torch.topk(router_logits.float().softmax(dim=-1), k, dim=-1)
    return weights / weights.sum(-1, keepdim=True), experts  # Mixtral's convention, not Jamba's


def test_renormalised_top_k_breaks_parity(pair, tokens, monkeypatch):
    hf, ours = pair
    monkeypatch.setattr(nanohybrid.moe, "route", renormalised_route)
    mine, theirs, hf_grads = backward_both(hf, ours, tokens)
    assert relative_error(mine.logits, theirs.logits) > MATERIAL
    assert relative_error(mine.router_logits[-1], theirs.router_logits[-1]) > MATERIAL  # layer 7 sees layers 1-5's MoE
    router = "blocks.1.ffn.router.weight"
    assert relative_error(ours.get_parameter(router).grad, hf_weight(router, hf_grads, ours.config.d_ff)[0]) > MATERIAL


def test_swapped_gate_up_halves_break_parity(pair, tokens):
    hf, ours = pair
    swapped = LanguageModel(ours.config).eval()
    state = dict(ours.state_dict())
    for name in [n for n in state if n.endswith("ffn.gate_proj")]:
        up = name.replace("gate_proj", "up_proj")
        state[name], state[up] = state[up], state[name]
    swapped.load_state_dict(state)
    with torch.no_grad():
        mine, theirs = run_both(hf, swapped, tokens)
    assert relative_error(mine.logits, theirs.logits) > MATERIAL


def test_per_layer_aux_and_missing_aux_term_break_parity(pair, tokens):
    hf, ours = pair
    with torch.no_grad():
        mine, theirs = run_both(hf, ours, tokens)
    per_layer_mean = sum(nanohybrid.moe.load_balancing_loss([r], 2) for r in mine.router_logits) / 4
    assert relative_error(per_layer_mean, theirs.aux_loss) > MATERIAL
    cross_entropy_only = F.cross_entropy(mine.logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
    assert relative_error(cross_entropy_only, theirs.loss) > MATERIAL
