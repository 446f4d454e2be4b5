"""A student's experts that add the expert outputs without their routing weights: broken on purpose."""

import torch

from nanohybrid.moe import moe_experts as reference


def moe_experts(x, expert_weights, experts, gate_proj, up_proj, down_proj):
    return reference(x, torch.ones_like(expert_weights), experts, gate_proj, up_proj, down_proj)
