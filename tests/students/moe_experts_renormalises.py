"""A student's experts that renormalise the top-k weights to sum to 1 (Mixtral's choice, not Jamba's):
broken on purpose."""

from nanohybrid.moe import moe_experts as reference


def moe_experts(x, expert_weights, experts, gate_proj, up_proj, down_proj):
    expert_weights = expert_weights / expert_weights.sum(dim=-1, keepdim=True)
    return reference(x, expert_weights, experts, gate_proj, up_proj, down_proj)
