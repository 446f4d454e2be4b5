"""A student's gated delta rule whose decay α_t = exp(g_t) comes from an autograd.Function of its own, with a
backward that forgets the chain rule's factor exp(g_t): every output is right, the gradient of g is not.
Broken on purpose."""

import torch


class Decay(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g):
        return torch.exp(g)

    @staticmethod
    def backward(ctx, d_alpha):
        return d_alpha  # should be d_alpha * exp(g)


def gated_delta_rule(q, k, v, g, beta, chunk_size, initial_state=None):
    q, k, v, beta = q.float(), k.float(), v.float(), beta.float()
    alpha = Decay.apply(g.float())
    state = initial_state.float() if initial_state is not None else q.new_zeros(*k.shape[:1], *k.shape[2:], v.shape[-1])
    outputs = []
    for t in range(q.shape[1]):
        state = alpha[:, t, :, None, None] * state
        correction = beta[:, t, :, None] * (v[:, t] - torch.einsum("bhkv,bhk->bhv", state, k[:, t]))
        state = state + torch.einsum("bhk,bhv->bhkv", k[:, t], correction)
        outputs.append(torch.einsum("bhkv,bhk->bhv", state, q[:, t]))
    return torch.stack(outputs, dim=1).to(v.dtype), state
