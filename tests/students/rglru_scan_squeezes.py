"""A student's RG-LRU scan that squeezes away every axis of size 1, which breaks on a batch of one or a
single token: broken on purpose."""

import torch


def scan(x, log_a, reset, initial_state=None):
    x, log_a, reset = x.squeeze(), log_a.squeeze(), reset.squeeze()  # meant to drop nothing; drops b or l when it is 1
    a = torch.where(reset[..., None], 0.0, torch.exp(log_a.float()))
    normaliser = torch.where(reset[..., None], 1.0, torch.sqrt(1 - a**2))
    h = torch.zeros(x.shape[0], x.shape[2]) if initial_state is None else initial_state.float()
    outputs = []
    for a_t, x_t in zip(a.unbind(1), (normaliser * x.float()).unbind(1)):
        h = a_t * h + x_t
        outputs.append(h)
    return torch.stack(outputs, dim=1).to(x.dtype), h
