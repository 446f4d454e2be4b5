"""Jamba MoE: softmax-then-top-k routing without renormalisation, the expert loop against a dense
computation, and the load-balancing loss pooled over all MoE layers."""

import torch
import torch.nn.functional as F

from nanohybrid.model import LanguageModel
from nanohybrid.moe import MixtureOfExperts, load_balancing_loss, moe_experts, route
from nanohybrid.presets import get_config
from nanohybrid.tools.testing import SAME_MATH, assert_close


def test_route_takes_softmax_then_top_k_without_renormalising():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    weights, experts = route(logits, k=2)
    probabilities = logits.softmax(-1)[0]
    assert experts.tolist() == [[0, 1]]
    assert_close(weights[0], probabilities[:2], SAME_MATH, "top-2 weights")
    assert weights.sum() < 1.0  # Mixtral would renormalise these to sum to 1


def test_expert_loop_equals_dense_mixture():
    torch.manual_seed(0)
    config = get_config("jamba-tiny")
    moe = MixtureOfExperts(config)
    moe.init_weights()
    x = torch.randn(3, 7, config.d_model)
    y, router_logits = moe(x)
    tokens = x.flatten(0, 1)
    weights, experts = route(router_logits, config.experts_per_token)
    dense_weights = torch.zeros(tokens.shape[0], config.n_experts).scatter(1, experts, weights)
    every_expert = torch.stack([
        F.linear(F.silu(F.linear(tokens, moe.gate_proj[e])) * F.linear(tokens, moe.up_proj[e]), moe.down_proj[e])
        for e in range(config.n_experts)
    ], dim=1)  # (t, n, d)
    expected = (dense_weights[..., None] * every_expert).sum(1)
    assert_close(y.flatten(0, 1), expected, SAME_MATH, "moe")


def test_moe_experts_leaves_unrouted_experts_out():
    x = torch.randn(4, 6)
    gate, up, down = torch.randn(3, 5, 6), torch.randn(3, 5, 6), torch.randn(3, 6, 5)
    experts = torch.tensor([[0], [0], [2], [2]])
    weights = torch.ones(4, 1)
    y = moe_experts(x, weights, experts, gate, up, down)
    broken_expert_1 = moe_experts(x, weights, experts, gate, up, down.index_fill(0, torch.tensor([1]), float("nan")))
    assert torch.equal(y, broken_expert_1)


def test_aux_loss_is_k_for_a_uniform_router_and_larger_for_a_collapsed_one():
    uniform = torch.zeros(8, 4)  # P_e = 1/n, so n · Σ f_e P_e = Σ f_e = k
    assert_close(load_balancing_loss([uniform], k=2), torch.tensor(2.0), SAME_MATH, "uniform")
    collapsed = torch.tensor([[9.0, 8.0, 0.0, 0.0]]).expand(8, 4)  # every token to experts 0 and 1
    assert load_balancing_loss([collapsed], k=2) > 3.9  # → n · (P_0 + P_1) ≈ 4


def test_aux_loss_by_hand_and_pooled_over_layers():
    logits = [torch.tensor([[3.0, 0.0, 0.0], [2.0, 1.0, 0.0]]), torch.tensor([[0.0, 0.0, 4.0], [0.0, 2.0, 1.0]])]
    probabilities = torch.cat(logits).softmax(-1)  # pooled: 4 tokens
    routed = torch.tensor([1 + 1 + 0 + 0, 0 + 0 + 0 + 1, 0 + 0 + 1 + 0], dtype=torch.float32) / 4  # top-1 counts
    expected = 3 * (routed * probabilities.mean(0)).sum()
    assert_close(load_balancing_loss(logits, k=1), expected, SAME_MATH, "pooled aux")
    per_layer_mean = (load_balancing_loss(logits[:1], 1) + load_balancing_loss(logits[1:], 1)) / 2
    assert not torch.allclose(per_layer_mean, expected)


def test_model_loss_adds_coefficient_times_aux():
    torch.manual_seed(0)
    model = LanguageModel(get_config("jamba-tiny"))
    tokens = torch.randint(0, 320, (2, 10))
    out = model(tokens, targets=tokens)
    assert len(out.router_logits) == 4  # MoE on layers 1, 3, 5, 7
    cross_entropy = F.cross_entropy(out.logits.flatten(0, 1), tokens.flatten())
    assert_close(out.loss, cross_entropy + 0.001 * out.aux_loss, SAME_MATH, "loss")
