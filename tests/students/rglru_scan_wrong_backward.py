"""A student's RG-LRU scan as a custom autograd.Function whose forward is right and whose backward
forgets that gradients flow back through time (and gives none to log_a): broken on purpose."""

import torch

from nanohybrid.rglru import rglru_scan


class Scan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, log_a, reset, initial_state):
        ctx.save_for_backward(log_a, reset)
        with torch.no_grad():
            return rglru_scan(x, log_a, reset, initial_state)

    @staticmethod
    def backward(ctx, d_h, d_final_state):
        log_a, reset = ctx.saved_tensors
        normaliser = torch.where(reset[..., None], 1.0, torch.sqrt(1 - torch.exp(2 * log_a)))
        return d_h * normaliser, None, None, None  # each h_t's own gradient only: nothing from later steps


def scan(x, log_a, reset, initial_state=None):
    return Scan.apply(x, log_a, reset, initial_state)
