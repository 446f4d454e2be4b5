"""A student's experts that stop at the first expert without tokens (break, not continue), skipping
every expert after it: broken on purpose."""

import torch
import torch.nn.functional as F


def moe_experts(x, expert_weights, experts, gate_proj, up_proj, down_proj):
    out = torch.zeros(x.shape, dtype=torch.float32)
    for expert in range(gate_proj.shape[0]):
        token, slot = torch.nonzero(experts == expert, as_tuple=True)
        if token.numel() == 0:
            break
        h = x[token].float()
        h = F.linear(F.silu(F.linear(h, gate_proj[expert])) * F.linear(h, up_proj[expert]), down_proj[expert])
        out.index_add_(0, token, h * expert_weights[token, slot, None])
    return out.to(x.dtype)
