"""A student's RG-LRU scan, written independently of nanohybrid/rglru.py: correct."""

import torch


def scan(x, log_a, reset, initial_state=None):
    batch, length, width = x.shape
    h = torch.zeros(batch, width) if initial_state is None else initial_state.float()
    outputs = []
    for t in range(length):
        a = torch.exp(log_a[:, t].float())
        normaliser = torch.sqrt(1 - a**2)
        starts = reset[:, t, None]  # a document starts: forget h, take the input as it is
        h = torch.where(starts, x[:, t].float(), a * h + normaliser * x[:, t].float())
        outputs.append(h)
    return torch.stack(outputs, dim=1).to(x.dtype), h
