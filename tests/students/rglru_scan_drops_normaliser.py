"""A student's RG-LRU scan without the normaliser sqrt(1 - a_t²) on the input: broken on purpose."""

import torch


def scan(x, log_a, reset, initial_state=None):
    batch, length, width = x.shape
    h = torch.zeros(batch, width) if initial_state is None else initial_state.float()
    outputs = []
    for t in range(length):
        a = torch.where(reset[:, t, None], 0.0, torch.exp(log_a[:, t].float()))
        h = a * h + x[:, t].float()
        outputs.append(h)
    return torch.stack(outputs, dim=1).to(x.dtype), h
