"""RMSNorm, RoPE, gated MLPs and the causal conv, each checked against its defining equation; the norm and
the conv on both rungs (the reference, and the CPU fast path with its backward written out)."""

import pytest
import torch
import torch.nn.functional as F

from nanohybrid import ops
from nanohybrid.layers import CausalConv1d, GatedMLP, RMSNorm, RotaryEmbedding
from nanohybrid.tools.testing import SAME_MATH, assert_close

RUNGS = ["reference", "cpu"]


@pytest.mark.parametrize("rung", RUNGS)
@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("offset", [False, True])
def test_rmsnorm_matches_its_equation(offset, grad, rung):
    torch.manual_seed(0)
    norm = RMSNorm(16, eps=1e-6, offset=offset)
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(3, 5, 16)
    scale = 1 + norm.weight if offset else norm.weight
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * scale
    with torch.set_grad_enabled(grad), ops.use(rms_norm=rung):
        assert_close(norm(x), expected, SAME_MATH, "rmsnorm")


@pytest.mark.parametrize("rung", RUNGS)
@pytest.mark.parametrize("offset, group_size", [(False, None), (True, None), (False, 4)])
def test_rmsnorm_backward_passes_gradcheck(offset, group_size, rung):
    """The backward (the CPU path's written out, RMSNormFunction) against finite differences in fp64, for the
    plain, Gemma and grouped norms."""
    torch.manual_seed(0)
    norm = RMSNorm(12, eps=1e-6, offset=offset, group_size=group_size).double()
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(2, 3, 12, dtype=torch.float64, requires_grad=True)
    with ops.use(rms_norm=rung):
        assert torch.autograd.gradcheck(lambda x, weight: torch.func.functional_call(norm, {"weight": weight}, (x,)),
                                        (x, norm.weight))


def test_gemma_rmsnorm_starts_as_identity_scale():
    x = torch.randn(2, 16)
    assert_close(RMSNorm(16, 1e-6, offset=True)(x), RMSNorm(16, 1e-6)(x), SAME_MATH, "fresh gemma vs plain")


def test_grouped_rmsnorm_normalises_each_group_alone():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 12)
    grouped = RMSNorm(12, eps=1e-5, group_size=4)(x)
    expected = torch.cat([RMSNorm(4, eps=1e-5)(part) for part in x.split(4, dim=-1)], dim=-1)
    assert_close(grouped, expected, SAME_MATH, "grouped rmsnorm")


def test_rmsnorm_rejects_group_size_that_does_not_divide():
    with pytest.raises(ValueError, match="group_size 5 must divide dim 12"):
        RMSNorm(12, 1e-5, group_size=5)


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    rope = RotaryEmbedding(8, theta=10000.0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(query_pos, key_pos):
        rotated_q = rope(q, torch.tensor([[query_pos]]))
        rotated_k = rope(k, torch.tensor([[key_pos]]))
        return (rotated_q * rotated_k).sum()

    assert torch.allclose(score(7, 3), score(104, 100), atol=1e-5)
    assert not torch.allclose(score(7, 3), score(7, 4), atol=1e-3)


def test_rope_is_a_rotation_and_partial_rope_leaves_the_rest():
    torch.manual_seed(0)
    rope = RotaryEmbedding(4, theta=10000.0)  # rotates 4 of 8 channels, like RecurrentGemma's half
    x = torch.randn(2, 3, 6, 8)
    positions = torch.arange(6).expand(2, 6) * 5
    y = rope(x, positions)
    assert torch.equal(y[..., 4:], x[..., 4:])
    assert_close(y[..., :4].norm(dim=-1), x[..., :4].norm(dim=-1), SAME_MATH, "rotation keeps norms")
    assert torch.equal(y[:, :, 0], x[:, :, 0])  # position 0 is not rotated


def test_rope_pairs_channel_i_with_i_plus_half():
    rope = RotaryEmbedding(4, theta=1.0)  # theta = 1 makes every frequency 1: each pair turns by the position
    x = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 1, 1, 4)
    y = rope(x, torch.tensor([[1]])).flatten()
    assert_close(y, torch.tensor([torch.cos(torch.tensor(1.0)), 0.0, torch.sin(torch.tensor(1.0)), 0.0]), SAME_MATH, "pair (0, 2)")


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
def test_gated_mlp_matches_its_equation(activation):
    torch.manual_seed(0)
    mlp = GatedMLP(8, 12, activation, bias=True)
    x = torch.randn(2, 3, 8)
    gate = mlp.gate_proj(x)
    act = F.silu(gate) if activation == "silu" else 0.5 * gate * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (gate + 0.044715 * gate**3)))
    assert_close(mlp(x), mlp.down_proj(act * mlp.up_proj(x)), SAME_MATH, activation)


@pytest.mark.parametrize("rung", RUNGS)
@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
def test_causal_conv_matches_a_loop_over_taps(grad, rung):
    torch.manual_seed(0)
    conv = CausalConv1d(6, kernel_size=4)
    x = torch.randn(2, 9, 6)
    with torch.set_grad_enabled(grad), ops.use(causal_conv1d=rung):
        y, _ = conv(x)
    padded = F.pad(x, (0, 0, 3, 0))  # three zeros before the first token
    expected = conv.bias + sum(padded[:, k : k + 9] * conv.weight[:, 0, k] for k in range(4))
    assert_close(y, expected, SAME_MATH, "conv")


def test_causal_conv_continues_from_its_state_and_decodes_one_token_at_a_time():
    torch.manual_seed(0)
    conv = CausalConv1d(5, kernel_size=4)
    x = torch.randn(2, 11, 5)
    full, full_state = conv(x)
    head, state = conv(x[:, :2])  # shorter than the kernel
    outputs = [head]
    for t in range(2, 11):
        y, state = conv(x[:, t : t + 1], state)
        outputs.append(y)
    assert_close(torch.cat(outputs, dim=1), full, SAME_MATH, "token by token")
    assert torch.equal(state, full_state)
    assert torch.equal(full_state, x[:, -3:].transpose(1, 2))


@pytest.mark.parametrize("rung", RUNGS)
@pytest.mark.parametrize("documents", [False, True])
def test_causal_conv_backward_passes_gradcheck(documents, rung):
    """The backward (the CPU path's written out, ShiftedTaps: the anti-causal taps, and each tap's sum over
    batch and time) against finite differences in fp64, through the bias, the initial state, the final
    state and document cuts."""
    torch.manual_seed(0)
    batch, length, channels, width = 2, 9, 3, 4
    starts = torch.zeros(batch, length, dtype=torch.bool)
    if documents:
        starts[0, 2] = starts[1, 0] = starts[1, 7] = True  # one cut inside the first taps, one near the end

    def conv(x, weight, bias, initial_state):  # -> y and the final state
        return ops.resolve("causal_conv1d", rung).function(x, weight, bias, initial_state,
                                                             starts if documents else None)

    inputs = (torch.randn(batch, length, channels), torch.randn(channels, width), torch.randn(channels),
              torch.randn(batch, channels, width - 1))
    inputs = tuple(t.double().requires_grad_() for t in inputs)
    assert torch.autograd.gradcheck(conv, inputs)
