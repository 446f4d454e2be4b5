"""A student's RG-LRU scan that forgets document resets: broken on purpose."""

import torch


def scan(x, log_a, reset, initial_state=None):
    batch, length, width = x.shape
    h = torch.zeros(batch, width) if initial_state is None else initial_state.float()
    outputs = []
    for t in range(length):
        a = torch.exp(log_a[:, t].float())
        h = a * h + torch.sqrt(1 - a**2) * x[:, t].float()
        outputs.append(h)
    return torch.stack(outputs, dim=1).to(x.dtype), h
