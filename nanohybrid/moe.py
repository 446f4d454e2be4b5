"""Jamba's mixture of experts: a top-k softmax router, SwiGLU experts and the load-balancing loss.

References: Jamba (arXiv 2403.19887) §2; Shazeer et al. 2017; Switch Transformer (Fedus et al. 2021)
for the load-balancing loss, in the form transformers' Jamba uses (`JambaTopKRouter`,
`load_balancing_loss_func`; docs/conventions.md, "Jamba layout"):

    p_t   = softmax(W_r h_t)                    router probabilities over n experts, in fp32
    (w, e) = top-k(p_t)                         no renormalisation of the k weights (unlike Mixtral)
    y_t   = Σ_j w_j · Expert_{e_j}(h_t),        Expert(h) = W_down(SiLU(W_gate h) ⊙ W_up h)

    L_aux = n · Σ_e f_e · P_e                   over the router logits of *all* MoE layers pooled:
            f_e = (token, slot) pairs sent to e / tokens,  P_e = mean router probability of e
    A perfectly balanced router gives L_aux = k. The model adds 0.001 · L_aux to the loss.

Qwen3-Next (transformers' `Qwen3NextSparseMoeBlock`) changes two things: the k weights are rescaled to
sum to 1 (normalize_expert_weights), and a shared expert sees every token, gated per token:
    y_t += σ(w_s · h_t) · Expert_shared(h_t)

Shape glossary
  t tokens (batch × length, flattened)   d d_model   I expert hidden width   n experts   k experts per token
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops
from .config import ModelConfig
from .layers import GatedMLP


def route(router_logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """router_logits (t, n) -> weights (t, k) fp32, experts (t, k): softmax first, then the top k."""
    return torch.topk(router_logits.float().softmax(dim=-1), k, dim=-1)


@ops.register("moe_experts", "reference")
def moe_experts(x, expert_weights, experts, gate_proj, up_proj, down_proj) -> torch.Tensor:
    """The experts, one at a time: each runs on the tokens routed to it.

    x (t, d); expert_weights, experts (t, k); gate_proj, up_proj (n, I, d); down_proj (n, d, I) -> (t, d).
    """
    accumulate = ops.compute_dtype(x)  # the weighted sum over experts, in fp32 at least
    out = torch.zeros(x.shape, dtype=accumulate, device=x.device)
    for expert in range(gate_proj.shape[0]):
        token, slot = torch.nonzero(experts == expert, as_tuple=True)
        if token.numel() == 0:
            continue
        h = x[token]
        h = F.linear(F.silu(F.linear(h, gate_proj[expert])) * F.linear(h, up_proj[expert]), down_proj[expert])
        out.index_add_(0, token, h.to(accumulate) * expert_weights[token, slot, None].to(accumulate))
    return out.to(x.dtype)


def load_balancing_loss(router_logits: list[torch.Tensor], k: int) -> torch.Tensor:
    """L_aux over the router logits (t, n) of all MoE layers, pooled."""
    logits = torch.cat(router_logits, dim=0).float()  # (layers·t, n)
    n_experts = logits.shape[-1]
    probabilities = logits.softmax(dim=-1)
    _, experts = torch.topk(probabilities, k, dim=-1)
    routed_fraction = F.one_hot(experts, n_experts).float().sum(dim=1).mean(dim=0)  # f_e, sums to k
    return n_experts * (routed_fraction * probabilities.mean(dim=0)).sum()


class MixtureOfExperts(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        n, d, hidden = config.n_experts, config.d_model, config.d_ff
        self.k, self.init_std = config.experts_per_token, config.init_std
        self.normalize = config.normalize_expert_weights
        self.router = nn.Linear(d, n, bias=False)
        self.gate_proj = nn.Parameter(torch.empty(n, hidden, d))
        self.up_proj = nn.Parameter(torch.empty(n, hidden, d))
        self.down_proj = nn.Parameter(torch.empty(n, d, hidden))
        self.shared_expert = GatedMLP(d, config.shared_expert_d_ff, "silu", False) if config.shared_expert_d_ff else None
        if self.shared_expert is not None:
            self.shared_expert_gate = nn.Linear(d, 1, bias=False)

    def init_weights(self) -> None:
        for weight in (self.gate_proj, self.up_proj, self.down_proj):
            nn.init.normal_(weight, std=self.init_std)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (b, l, d) -> y (b, l, d), router logits (b·l, n)."""
        tokens = x.flatten(0, 1)
        router_logits = self.router(tokens)
        expert_weights, experts = route(router_logits, self.k)
        if self.normalize:
            expert_weights = expert_weights / expert_weights.sum(dim=-1, keepdim=True)
        y = ops.moe_experts(tokens, expert_weights, experts, self.gate_proj, self.up_proj, self.down_proj)
        if self.shared_expert is not None:
            y = y + torch.sigmoid(self.shared_expert_gate(tokens)) * self.shared_expert(tokens)
        return y.view_as(x), router_logits
