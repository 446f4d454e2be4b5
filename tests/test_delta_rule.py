"""The gated delta rule: the recurrence, the one-token step and the chunked form give the same outputs,
final states and gradients, from non-zero initial states, at lengths that are not multiples of the
chunk; in float64 each equals the rule's closed form (products of the Householder-like factors) to
rounding; under strong decay the chunked form keeps fp32's precision in every gradient; one delta step
overwrites what the memory stores under a key."""

import pytest
import torch
import torch.nn.functional as F

from nanohybrid.delta_rule import gated_delta_recurrent, gated_delta_rule, gated_delta_step
from nanohybrid.tools.testing import FLOAT64, SAME_MATH, assert_close


def random_inputs(batch=2, length=21, heads=3, key_dim=5, value_dim=4, decay=1.0, seed=0, dtype=torch.float32):
    """q and k unit vectors per head (q scaled by 1/√d_k), as the mixer gives them; g = log α ≤ 0."""
    generator = torch.Generator().manual_seed(seed)
    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype)
    return dict(q=F.normalize(randn(batch, length, heads, key_dim), dim=-1) * key_dim**-0.5,
                k=F.normalize(randn(batch, length, heads, key_dim), dim=-1),
                v=randn(batch, length, heads, value_dim),
                g=-decay * F.softplus(randn(batch, length, heads)),
                beta=torch.sigmoid(randn(batch, length, heads)),
                initial_state=randn(batch, heads, key_dim, value_dim))


FORMS = {
    "chunked by 1": lambda **kw: gated_delta_rule(**kw, chunk_size=1),
    "chunked by 4": lambda **kw: gated_delta_rule(**kw, chunk_size=4),
    "chunked by 8": lambda **kw: gated_delta_rule(**kw, chunk_size=8),
    "one chunk": lambda **kw: gated_delta_rule(**kw, chunk_size=64),
}


def outputs_and_gradients(form, inputs, seed=1):
    """(o, final state) and the gradient of every input under one fixed random upstream gradient."""
    inputs = {name: t.clone().requires_grad_() for name, t in inputs.items()}
    o, final = form(**inputs)
    generator = torch.Generator().manual_seed(seed)  # drawn in fp64 whatever the dtype, so fp32 and fp64 runs agree
    loss = sum((t * torch.randn(t.shape, generator=generator, dtype=torch.float64).to(t.dtype)).sum() for t in (o, final))
    return o, final, dict(zip(inputs, torch.autograd.grad(loss, list(inputs.values()))))


@pytest.mark.parametrize("form", FORMS)
def test_chunked_form_matches_the_recurrence_outputs_state_and_every_gradient(form):
    inputs = random_inputs()
    o, final, gradients = outputs_and_gradients(FORMS[form], inputs)
    expected_o, expected_final, expected_gradients = outputs_and_gradients(gated_delta_recurrent, inputs)
    assert_close(o, expected_o, SAME_MATH, "o")
    assert_close(final, expected_final, SAME_MATH, "final state")
    for name, gradient in gradients.items():
        assert_close(gradient, expected_gradients[name], SAME_MATH, f"d{name}")


def closed_form(q, k, v, g, beta, initial_state):
    """S_t = P_t S_{t-1} + β_t k_t v_tᵀ with P_t = α_t (I − β_t k_t k_tᵀ), the factor as a (d_k × d_k) matrix,
    so S_t = P_t ⋯ P_1 S_0 + Σ_s P_t ⋯ P_{s+1} β_s k_s v_sᵀ; o_t = S_tᵀ q_t. In float64."""
    q, k, v, g, beta, state = (t.double() for t in (q, k, v, g, beta, initial_state))
    identity = torch.eye(k.shape[-1], dtype=torch.float64)
    outputs = []
    for t in range(q.shape[1]):
        k_t, beta_t = k[:, t], beta[:, t, :, None, None]
        factor = torch.exp(g[:, t])[:, :, None, None] * (identity - beta_t * k_t[..., :, None] * k_t[..., None, :])
        state = factor @ state + beta_t * k_t[..., :, None] * v[:, t, :, None, :]
        outputs.append((state.transpose(-1, -2) @ q[:, t, ..., None])[..., 0])
    return torch.stack(outputs, dim=1), state


@pytest.mark.parametrize("form", ["recurrent", *FORMS])
def test_every_form_equals_the_closed_form_in_float64(form):
    """Given float64 inputs every form computes in float64: within FLOAT64 of the closed form, where one
    step rounded to fp32 anywhere would miss by ~1e-7."""
    inputs = random_inputs(length=11, dtype=torch.float64)
    o, final = (gated_delta_recurrent if form == "recurrent" else FORMS[form])(**inputs)
    expected_o, expected_final = closed_form(**inputs)
    assert o.dtype == final.dtype == torch.float64
    assert_close(o, expected_o, FLOAT64, "o")
    assert_close(final, expected_final, FLOAT64, "final state")


def test_a_stream_split_in_two_calls_continues_from_the_state():
    """Chunked prefill of 13 tokens, then the rest from its final state, then one step: as one call."""
    inputs = random_inputs(length=22)
    o, final = gated_delta_rule(**inputs, chunk_size=8)
    head = {name: t[:, :13] if name != "initial_state" else t for name, t in inputs.items()}
    first, state = gated_delta_rule(**head, chunk_size=8)
    middle = {name: t[:, 13:21] for name, t in inputs.items() if name != "initial_state"}
    second, state = gated_delta_rule(**middle, chunk_size=8, initial_state=state)
    last, state = gated_delta_step(state, *(inputs[name][:, 21] for name in ("q", "k", "v", "g", "beta")))
    assert_close(torch.cat([first, second, last[:, None]], dim=1), o, SAME_MATH, "o")
    assert_close(state, final, SAME_MATH, "final state")


def test_strong_decay_keeps_fp32_precision_in_every_gradient():
    """g ≈ −20 per token (transformers' A_log init reaches A = 16): in a chunk of 64 the cumulative log decay
    reaches −10³, where a decay taken as exp(G_t − G_s) would keep ~1e-4 of absolute precision. The fp32
    chunked form against the fp64 recurrence: within SAME_MATH, outputs, state and every gradient."""
    inputs = random_inputs(length=100, decay=20.0)
    o, final, gradients = outputs_and_gradients(lambda **kw: gated_delta_rule(**kw, chunk_size=64), inputs)
    exact = {name: t.double() for name, t in inputs.items()}
    expected_o, expected_final, expected_gradients = outputs_and_gradients(gated_delta_recurrent, exact)
    assert_close(o, expected_o, SAME_MATH, "o")
    assert_close(final, expected_final, SAME_MATH, "final state")
    for name, gradient in gradients.items():
        assert_close(gradient, expected_gradients[name], SAME_MATH, f"d{name}")


def test_one_delta_step_overwrites_the_value_stored_under_a_key():
    """With β = 1 and no decay, after writing v under a unit key k the memory returns exactly v for k, whatever
    it held before (linear attention would return the old value plus v); a second write replaces the first."""
    generator = torch.Generator().manual_seed(0)
    key = F.normalize(torch.randn(1, 1, 8, generator=generator, dtype=torch.float64), dim=-1)
    state = torch.randn(1, 1, 8, 4, generator=generator, dtype=torch.float64)
    no_decay, overwrite = torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64)
    for value in torch.randn(2, 1, 1, 4, generator=generator, dtype=torch.float64):
        recalled, state = gated_delta_step(state, key, key, value, no_decay, overwrite)
        assert_close(recalled, value, FLOAT64, "the value read back under its key")
