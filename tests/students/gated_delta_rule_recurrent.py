"""A student's gated delta rule as a plain loop over time, each step written as its matrix form
S_t = α_t (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ, independently of nanohybrid/delta_rule.py: correct."""

import torch


def gated_delta_rule(q, k, v, g, beta, chunk_size, initial_state=None):
    batch, _, heads, key_dim = k.shape
    state = torch.zeros(batch, heads, key_dim, v.shape[-1]) if initial_state is None else initial_state.float()
    identity = torch.eye(key_dim)
    outputs = []
    for q_t, k_t, v_t, g_t, beta_t in zip(*(t.float().unbind(1) for t in (q, k, v, g, beta))):
        erase = identity - beta_t[..., None, None] * k_t[..., :, None] * k_t[..., None, :]  # I − β k kᵀ (b, h, d_k, d_k)
        write = beta_t[..., None, None] * k_t[..., :, None] * v_t[..., None, :]  # β k vᵀ, (b, h, d_k, d_v)
        state = torch.exp(g_t)[..., None, None] * (erase @ state) + write
        outputs.append((state.transpose(-1, -2) @ q_t[..., None])[..., 0])  # Sᵀ q, (b, h, d_v)
    return torch.stack(outputs, dim=1).to(v.dtype), state
