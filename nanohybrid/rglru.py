"""RG-LRU, the Real-Gated Linear Recurrent Unit, and the Griffin recurrent block.

Reference: De et al. 2024, "Griffin: Mixing Gated Linear Recurrences with Local Attention"
(arXiv 2402.19427), §2.4, as DeepMind's RecurrentGemma code computes it (docs/conventions.md, "RG-LRU
parametrisation"). For input x_t:

    r_t = σ(W_a x_t + b_a)                 recurrence gate   (block-diagonal W: one b×b block per head)
    i_t = σ(W_x x_t + b_x)                 input gate
    log a_t = -c · r_t ⊙ softplus(p)       c = 8; the paper's Λ is -p, so a = σ(Λ) = exp(-softplus(p))
    h_t = a_t ⊙ h_{t-1} + sqrt(1 - a_t²) ⊙ (i_t ⊙ x_t)

sqrt(1 - a_t²) keeps the state's scale bounded as a_t → 1. At a document start (position 0) the state
resets: a_t = 0 and the normaliser is 1, so h_t = i_t ⊙ x_t. The state is kept in fp32 (fp64 for fp64 inputs).

rglru_scan is the recurrence as a loop over time, differentiated by autograd; its fast forms are
kernels/rglru_scan/cpu.py (the loop's backward written out) and kernels/rglru_scan/triton.py.

Shape glossary
  b batch   l length   d d_model   R lru_width   H heads (blocks of the gates)   w block width R / H   K conv width
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops
from .cache import ForwardContext, RecurrentState
from .config import ModelConfig
from .layers import CausalConv1d

GATE_CONSTANT = 8.0  # c in log a_t = -c · r_t · softplus(p)
MAX_SQRT_GRADIENT = 1000.0


class SqrtBoundedGradient(torch.autograd.Function):
    """sqrt(u) whose backward clips 1/(2 sqrt(u)) at MAX_SQRT_GRADIENT, as RecurrentGemma does for bf16 stability."""

    @staticmethod
    def forward(ctx, u):
        ctx.save_for_backward(u)
        return torch.sqrt(u)

    @staticmethod
    def backward(ctx, grad):
        (u,) = ctx.saved_tensors
        return grad / torch.sqrt(torch.clamp(4.0 * u, min=MAX_SQRT_GRADIENT**-2))


def decay_and_normaliser(log_a, reset):
    """a_t = exp(log a_t) and the normaliser sqrt(1 - a_t²), both (b, l, R) in fp32 (fp64 for fp64 log_a);
    at a reset 0 and 1. log_a (b, l, R); reset (b, l) bool."""
    log_a, reset = log_a.to(ops.compute_dtype(log_a)), reset[..., None]
    a = torch.where(reset, 0.0, torch.exp(log_a))
    normaliser = torch.where(reset, 1.0, SqrtBoundedGradient.apply(1.0 - torch.exp(2.0 * log_a)))
    return a, normaliser


def initial_or_zeros(x, initial_state=None) -> torch.Tensor:
    """The state h_0 in x's compute dtype (fp32, fp64 for fp64): the given one, or zeros (b, R)."""
    dtype = ops.compute_dtype(x)
    return x.new_zeros(x.shape[0], x.shape[2], dtype=dtype) if initial_state is None else initial_state.to(dtype)


@ops.register("rglru_scan", "reference")
def rglru_scan(x, log_a, reset, initial_state=None):
    """The recurrence over a sequence. x = i_t ⊙ x_t and log_a (b, l, R); reset (b, l) bool; initial_state (b, R) or None.

    Returns h (b, l, R) in x's dtype and the final state (b, R) in fp32.
    """
    a, normaliser = decay_and_normaliser(log_a, reset)
    h, states = initial_or_zeros(x, initial_state), []
    for t in range(x.shape[1]):
        h = a[:, t] * h + normaliser[:, t] * x[:, t].to(h.dtype)  # h_t = a_t ⊙ h_{t-1} + sqrt(1 - a_t²) ⊙ (i_t ⊙ x_t)
        states.append(h)
    return torch.stack(states, dim=1).to(x.dtype), h


def rglru_step(state, x, log_a, reset):
    """One decode step: the scan of a single token. state (b, R); x, log_a (b, R); reset (b,) -> h_t (b, R), new state."""
    h, state = rglru_scan(x[:, None], log_a[:, None], reset[:, None], state)
    return h[:, 0], state


class BlockDiagonalLinear(nn.Module):
    """y[h] = x[h] @ W[h] + bias[h] for each of H blocks; W is stored (in, out) as in RecurrentGemma."""

    def __init__(self, width: int, n_blocks: int):
        super().__init__()
        block = width // n_blocks
        self.weight = nn.Parameter(torch.empty(n_blocks, block, block))
        self.bias = nn.Parameter(torch.zeros(n_blocks, block))

    def forward(self, x):  # (b, l, R) -> (b, l, R)
        blocks = x.unflatten(-1, (self.weight.shape[0], self.weight.shape[1]))  # (b, l, H, w)
        return (torch.einsum("blhi,hio->blho", blocks, self.weight) + self.bias).flatten(-2)


class RGLRU(nn.Module):
    def __init__(self, width: int, n_heads: int):
        super().__init__()
        self.input_gate = BlockDiagonalLinear(width, n_heads)
        self.recurrence_gate = BlockDiagonalLinear(width, n_heads)
        self.recurrent_param = nn.Parameter(torch.empty(width))  # p = -Λ

    def init_weights(self, min_radius: float = 0.9, max_radius: float = 0.999) -> None:
        """a = σ(Λ) with a² uniform in [min_radius², max_radius²]; gates N(0, 1/w), biases 0."""
        with torch.no_grad():
            a_squared = torch.empty_like(self.recurrent_param).uniform_(min_radius**2, max_radius**2) + 1e-8
            self.recurrent_param.copy_(torch.log(1.0 / a_squared.sqrt() - 1.0))  # softplus(p) = -log a
            for gate in (self.input_gate, self.recurrence_gate):
                nn.init.normal_(gate.weight, std=gate.weight.shape[1] ** -0.5)
                gate.bias.zero_()

    def forward(self, x, reset, state):
        """x (b, l, R), reset (b, l) bool, state (b, R) or None -> h (b, l, R), final state (b, R)."""
        log_a = -GATE_CONSTANT * torch.sigmoid(self.recurrence_gate(x)) * F.softplus(self.recurrent_param)
        gated_x = x * torch.sigmoid(self.input_gate(x))
        return ops.rglru_scan(gated_x, log_a, reset, state)


class RecurrentBlock(nn.Module):
    """Griffin's temporal block: out(GeLU(W_y u) ⊙ RG-LRU(conv(W_x u))), all linears with bias."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        width = config.rglru_width
        self.linear_y = nn.Linear(config.d_model, width)
        self.linear_x = nn.Linear(config.d_model, width)
        self.conv1d = CausalConv1d(width, config.d_conv)
        self.conv_cuts_documents = config.conv_cuts_documents
        self.rg_lru = RGLRU(width, config.n_heads)
        self.linear_out = nn.Linear(width, config.d_model)

    def forward(self, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:  # (b, l, d) -> (b, l, d)
        state = ctx.state((self.layer_idx, "ssm"))
        y = F.gelu(self.linear_y(hidden), approximate="tanh")
        starts = ctx.positions == 0  # document starts: the conv's taps and the RG-LRU's state stop there
        x, conv_state = self.conv1d(self.linear_x(hidden), None if state is None else state.conv,
                                    starts if self.conv_cuts_documents else None)
        x, hidden_state = self.rg_lru(x, starts, None if state is None else state.ssm)
        ctx.save((self.layer_idx, "ssm"), RecurrentState(conv_state, hidden_state))
        return self.linear_out(x * y)
