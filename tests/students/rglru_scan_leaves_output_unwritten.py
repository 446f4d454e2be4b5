"""A student's RG-LRU scan that fills a torch.empty output from t = 1 on, never writing t = 0: broken on purpose."""

import torch


def scan(x, log_a, reset, initial_state=None):
    batch, length, width = x.shape
    a = torch.where(reset[..., None], 0.0, torch.exp(log_a.float()))
    normaliser = torch.where(reset[..., None], 1.0, torch.sqrt(1 - a**2))
    h = torch.zeros(batch, width) if initial_state is None else initial_state.float()
    out = torch.empty(batch, length, width)
    for t in range(1, length):
        h = a[:, t] * h + normaliser[:, t] * x[:, t].float()
        out[:, t] = h
    return out.to(x.dtype), h
