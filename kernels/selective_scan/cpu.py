"""Mamba-1 selective scan (S6), the CPU fast path: the reference's recurrence (nanohybrid/scan.py) run in
blocks of time steps, with its backward pass written out.

Reference: Gu & Dao 2023, "Mamba" (arXiv 2312.00752), §3.2 and Algorithm 2. The maths is that of
nanohybrid/scan.py; what differs is how it is computed:

  - Blocks of T = BLOCK steps. What does not depend on the previous state is computed for a whole block
    at once: Ā_t = exp(Δ_t A) and B̄_t x_t = Δ_t x_t B_t as (T, b, d, n) tensors, and the readout
    y_t = C_t · h_t as one matmul once the block's states are known. The loop over the block's steps
    does only h_t = Ā_t h_{t-1} + B̄_t x_t, one fused multiply-add per step, into views made once.
  - Time first inside a block, (T, b, d, n), so that each step's slice is contiguous and the block's
    matmuls need not copy their operands.
  - The backward pass written out (SelectiveScan). Left to autograd, every step's operations become
    graph nodes replayed one at a time, which costs a CPU more than the arithmetic does.
  - No (b, l, d, n) tensor is built whole when nothing needs a gradient: inference holds one block.

docs/ladder.md derives the backward; the parity suite (nanohybrid/tools/parity.py) holds it to the reference.

Shape glossary
  b  batch      l  sequence length      d  channels (d_inner)      n  state size (d_state)
  T  steps in a block (BLOCK; the last block may be shorter)
  x, dt, z (b, l, d)    A (d, n)    B, C (b, l, n)    D, dt_bias (d)    state (b, d, n), fp32
"""

import torch

from nanohybrid import ops
from nanohybrid.scan import initial_or_zeros, skip_and_gate, step_sizes

BLOCK = 16  # time steps per block: a block's (T, b, d, n) tensors are a few MB at the small presets' sizes


def time_blocks(length: int) -> list[slice]:
    return [slice(start, min(start + BLOCK, length)) for start in range(0, length, BLOCK)]


def time_first(steps: slice, *tensors):
    """Each (b, l, ...) tensor's block of steps, time first and contiguous: (T, b, ...). Contiguous, so that
    the (T, b, d, n) tensors computed from them are laid out time first too (elementwise results copy
    their inputs' layout) and the block's matmuls need not copy them."""
    return [t[:, steps].transpose(0, 1).contiguous() for t in tensors]


def scan_blocks(dt, dt_x, A, B, C, state, keep: bool = False):
    """The recurrence, block by block. dt and dt_x = Δ ⊙ x (b, l, d); state h_0 (b, d, n).

    Returns y = C · h (b, l, d), the final state h_l and, if `keep`, every block's (Ā, h), each (T, b, d, n).
    """
    outputs, kept = [], []
    with torch.autocast(dt.device.type, enabled=False):  # dt's dtype: autocast would run the readout in bf16
        for steps in time_blocks(dt.shape[1]):
            dt_block, dt_x_block, B_block, C_block = time_first(steps, dt, dt_x, B, C)
            decays = torch.exp(dt_block[..., None] * A)  # Ā_t = exp(Δ_t A), (T, b, d, n)
            inputs = dt_x_block[..., None] * B_block[:, :, None, :]  # B̄_t x_t = Δ_t x_t B_t, (T, b, d, n)
            states = torch.empty_like(decays)
            # per-step views, made once by unbind
            for input_t, decay_t, state_t in zip(inputs.unbind(0), decays.unbind(0), states.unbind(0)):
                state = torch.addcmul(input_t, decay_t, state, out=state_t)  # h_t = Ā_t h_{t-1} + B̄_t x_t
            outputs.append(torch.matmul(states, C_block[..., None])[..., 0])  # y_t = C_t · h_t, (T, b, d)
            if keep:
                kept.append((decays, states))
    return torch.cat(outputs).transpose(0, 1), state.clone(), kept  # a copy of h_l, not a view into the last block


class SelectiveScan(torch.autograd.Function):
    """scan_blocks with its backward written out. The backward of the recurrence is the same recurrence,
    run from the end: with g_t = ∂L/∂h_t in total (through y_t and through h_{t+1}),

        g_t = C_t ⊗ ∂L/∂y_t + Ā_{t+1} ⊙ g_{t+1}        (after the last step, ∂L/∂h_l from the final state)

    and every input's gradient is a product summed over the axis it does not have, a block at a time:
        ∂L/∂C_t = Σ_d h_t ∂L/∂y_t        ∂L/∂B_t = Σ_d g_t Δ_t x_t        ∂L/∂(Δ_t x_t) = Σ_n g_t B_t
        ∂L/∂(Δ_t A) = Ā_t ⊙ g_t ⊙ h_{t-1}, so ∂L/∂Δ_t = Σ_n (that) A and ∂L/∂A = Σ_{b, t} (that) Δ_t
        ∂L/∂h_0 = Ā_1 ⊙ g_1
    Like autograd's graph of a loop, it keeps every Ā_t and h_t for the backward.
    """

    @staticmethod
    def forward(ctx, dt, dt_x, A, B, C, initial):
        y, final, ctx.blocks = scan_blocks(dt, dt_x, A, B, C, initial, keep=True)
        ctx.save_for_backward(dt, dt_x, A, B, C, initial)
        return y, final

    @staticmethod
    def backward(ctx, grad_y, grad_final):
        dt, dt_x, A, B, C, initial = ctx.saved_tensors
        with torch.autocast(dt.device.type, enabled=False):  # no autocast, as in the forward
            grads = {"dt": [], "dt_x": [], "B": [], "C": []}  # per block, (T, b, d) or (T, b, n), last block first
            grad_A = torch.zeros_like(A)
            carry = grad_final  # Ā_{t+1} ⊙ g_{t+1}
            blocks = time_blocks(dt.shape[1])
            for k in reversed(range(len(blocks))):
                decays, states = ctx.blocks[k]
                previous = initial if k == 0 else ctx.blocks[k - 1][1][-1]  # h before the block's first step
                dt_block, dt_x_block, B_block, C_block, grad_y_block = time_first(blocks[k], dt, dt_x, B, C, grad_y)
                g = torch.empty_like(states)  # g_t, (T, b, d, n)
                grad_log_decay = torch.empty_like(states)  # Ā_t ⊙ g_t, then times h_{t-1}
                steps = zip(grad_y_block[..., None].unbind(0), C_block[:, :, None].unbind(0), decays.unbind(0),
                            g.unbind(0), grad_log_decay.unbind(0))  # per-step views: (b, d, 1), (b, 1, n), (b, d, n) ...
                for grad_y_t, C_t, decay_t, g_t, grad_log_decay_t in reversed(list(steps)):
                    torch.addcmul(carry, grad_y_t, C_t, out=g_t)  # g_t = C_t ⊗ ∂L/∂y_t + Ā_{t+1} ⊙ g_{t+1}
                    carry = torch.mul(decay_t, g_t, out=grad_log_decay_t)  # Ā_t ⊙ g_t
                carry = carry.clone()  # the next block's carry, kept before grad_log_decay[0] changes
                grad_log_decay[1:].mul_(states[:-1])
                grad_log_decay[0].mul_(previous)
                grads["dt"].append((grad_log_decay * A).sum(-1))
                grad_A += (grad_log_decay * dt_block[..., None]).sum(dim=(0, 1))
                grads["dt_x"].append(torch.matmul(g, B_block[..., None])[..., 0])
                grads["B"].append(torch.matmul(dt_x_block[:, :, None, :], g)[:, :, 0])
                grads["C"].append(torch.matmul(grad_y_block[:, :, None, :], states)[:, :, 0])
            grad_dt, grad_dt_x, grad_B, grad_C = (torch.cat(per_block[::-1]).transpose(0, 1) for per_block in grads.values())
            return grad_dt, grad_dt_x, grad_A, grad_B, grad_C, carry  # carry = ∂L/∂h_0


@ops.register("selective_scan", "cpu", devices=("cpu",))
def selective_scan(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, initial_state=None):
    """ops.selective_scan, blocked: y (b, l, d) in x's dtype and the final state (b, d, n) in fp32 (fp64 for fp64)."""
    dt, state = step_sizes(dt, dt_bias, dt_softplus), initial_or_zeros(x, A, initial_state)  # in the compute dtype
    inputs = (dt, dt * x.to(dt.dtype), A.to(dt.dtype), B.to(dt.dtype), C.to(dt.dtype), state)
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        y, state = SelectiveScan.apply(*inputs)
    else:
        y, state, _ = scan_blocks(*inputs)
    return skip_and_gate(y, x, D, z), state
