"""The Mamba-1 and Mamba-2 mixers, built on scan.py and ssd.py.

References
  Mamba-1: Gu & Dao 2023 (arXiv 2312.00752), Figure 3 and §3.4; block layout of mamba_ssm `Mamba`
           (docs/conventions.md, "S6 discretisation" and "Weight layouts").
           Jamba §6.4 adds RMSNorm on the dt, B and C activations ("inner norms"); Hymba keeps them.
  Mamba-2: Dao & Gu 2024, §7 (the parallel block): one in_proj makes z, x, B, C and dt together, the
           conv runs over [x | B | C], and a gated RMSNorm, grouped like B and C, precedes out_proj
           (arXiv 2405.21060; mamba_ssm `Mamba2`; docs/conventions.md, "Mamba-2 groups").

Shape glossary
  b batch   l length   d d_model   E d_inner = expand·d   N d_state   r dt_rank   K conv width
  H Mamba-2 heads   P Mamba-2 head dim (H·P = E)   G groups of B and C
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops
from .cache import ForwardContext, RecurrentState
from .config import ModelConfig
from .layers import CausalConv1d, RMSNorm


def init_dt_bias(bias: torch.Tensor, dt_min: float = 1e-3, dt_max: float = 1e-1, dt_floor: float = 1e-4) -> None:
    """Mamba's Δ init: softplus(bias) = dt with dt log-uniform in [dt_min, dt_max], floored at dt_floor."""
    with torch.no_grad():
        dt = torch.exp(torch.rand_like(bias) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_floor)
        bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus


class SelectiveSSM(nn.Module):
    """Mamba-1 after its input projection: conv -> SiLU -> x_proj -> (inner norms) -> dt_proj -> S6 scan.

    Shared by the Mamba-1 mixer and Hymba's SSM heads, which differ only in how x and z are projected.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        inner, state, rank = config.d_inner, config.d_state, config.mamba_dt_rank
        self.split_sizes = [rank, state, state]
        self.conv1d = CausalConv1d(inner, config.d_conv)
        self.x_proj = nn.Linear(inner, rank + 2 * state, bias=False)
        self.dt_proj = nn.Linear(rank, inner, bias=True)
        self.inner_norms = config.ssm_inner_norms
        if self.inner_norms:
            self.dt_norm = RMSNorm(rank, config.norm_eps)
            self.B_norm = RMSNorm(state, config.norm_eps)
            self.C_norm = RMSNorm(state, config.norm_eps)
        self.A_log = nn.Parameter(torch.empty(inner, state))
        self.D = nn.Parameter(torch.empty(inner))

    def init_weights(self) -> None:
        with torch.no_grad():
            state_size = self.A_log.shape[1]
            self.A_log.copy_(torch.log(torch.arange(1, state_size + 1, dtype=torch.float32)).expand_as(self.A_log))
            self.D.fill_(1.0)
            nn.init.uniform_(self.dt_proj.weight, -self.dt_proj.in_features**-0.5, self.dt_proj.in_features**-0.5)
            init_dt_bias(self.dt_proj.bias)

    def forward(self, x, z, state: RecurrentState | None):
        """x, z: (b, l, E) -> y: (b, l, E), gated by SiLU(z); new RecurrentState(conv (b, E, K-1), ssm (b, E, N))."""
        x, conv_state = self.conv1d(x, None if state is None else state.conv)
        x = F.silu(x)
        dt, B, C = self.x_proj(x).split(self.split_sizes, dim=-1)  # (b, l, r), (b, l, N), (b, l, N)
        if self.inner_norms:
            dt, B, C = self.dt_norm(dt), self.B_norm(B), self.C_norm(C)
        dt = F.linear(dt, self.dt_proj.weight)  # (b, l, E); the bias is added inside the scan, before softplus
        A = -torch.exp(self.A_log.to(ops.compute_dtype(self.A_log)))  # (E, N), negative so the state decays
        y, ssm_state = ops.selective_scan(
            x, dt, A, B, C, self.D, z, dt_bias=self.dt_proj.bias, dt_softplus=True,
            initial_state=None if state is None else state.ssm,
        )
        return y, RecurrentState(conv_state, ssm_state)


class Mamba(nn.Module):
    """Mamba-1 mixer: in_proj -> [x | z] -> SelectiveSSM -> out_proj."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.in_proj = nn.Linear(config.d_model, 2 * config.d_inner, bias=False)
        self.ssm = SelectiveSSM(config)
        self.out_proj = nn.Linear(config.d_inner, config.d_model, bias=False)

    def forward(self, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:  # (b, l, d) -> (b, l, d)
        x, z = self.in_proj(hidden).chunk(2, dim=-1)  # (b, l, E) each
        y, state = self.ssm(x, z, ctx.state((self.layer_idx, "ssm")))
        ctx.save((self.layer_idx, "ssm"), state)
        return self.out_proj(y)


class Mamba2(nn.Module):
    """Mamba-2 mixer: in_proj -> [z | x | B | C | dt]; conv over [x | B | C]; SSD; + D·x; gated RMSNorm; out_proj."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        inner, groups, state = config.d_inner, config.mamba2_n_groups, config.d_state
        self.n_heads, self.head_dim, self.chunk_size = config.mamba2_n_heads, config.mamba2_head_dim, config.chunk_size
        self.groups, self.state_size = groups, state
        self.split_sizes = [inner, inner + 2 * groups * state, self.n_heads]  # z, xBC, dt
        self.in_proj = nn.Linear(config.d_model, sum(self.split_sizes), bias=False)
        self.conv1d = CausalConv1d(inner + 2 * groups * state, config.d_conv)
        self.dt_bias = nn.Parameter(torch.empty(self.n_heads))
        self.A_log = nn.Parameter(torch.empty(self.n_heads))
        self.D = nn.Parameter(torch.empty(self.n_heads))
        self.norm = RMSNorm(inner, config.norm_eps, group_size=inner // groups)
        self.out_proj = nn.Linear(inner, config.d_model, bias=False)

    def init_weights(self) -> None:
        with torch.no_grad():
            self.A_log.copy_(torch.log(torch.empty_like(self.A_log).uniform_(1, 16)))  # A ~ U[1, 16]
            self.D.fill_(1.0)
            init_dt_bias(self.dt_bias)

    def forward(self, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:  # (b, l, d) -> (b, l, d)
        state = ctx.state((self.layer_idx, "ssm"))
        z, xBC, dt = self.in_proj(hidden).split(self.split_sizes, dim=-1)
        xBC, conv_state = self.conv1d(xBC, None if state is None else state.conv)
        xBC = F.silu(xBC)
        group_width = self.groups * self.state_size
        x, B, C = xBC.split([xBC.shape[-1] - 2 * group_width, group_width, group_width], dim=-1)
        x = x.unflatten(-1, (self.n_heads, self.head_dim))  # (b, l, H, P)
        B, C = B.unflatten(-1, (self.groups, self.state_size)), C.unflatten(-1, (self.groups, self.state_size))
        dtype = ops.compute_dtype(dt)  # fp32, or fp64 for an fp64 model
        dt = F.softplus(dt.to(dtype) + self.dt_bias.to(dtype))  # (b, l, H)
        A = -torch.exp(self.A_log.to(dtype))  # (H,)
        y, ssm_state = ops.ssd(x, dt, A, B, C, self.chunk_size, None if state is None else state.ssm)
        y = y + self.D[:, None].to(y.dtype) * x  # the D skip, per head
        ctx.save((self.layer_idx, "ssm"), RecurrentState(conv_state, ssm_state))
        return self.out_proj(self.norm(y.flatten(-2) * F.silu(z)))
