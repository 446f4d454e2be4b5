"""A student's gated delta rule that fills the last chunk by repeating the last token (replicate padding)
instead of a token with g = 0 and β = 0: the padded tokens decay and write, so the outputs are right and
the final state is not. Broken on purpose."""

import torch

from nanohybrid.delta_rule import gated_delta_rule as reference


def gated_delta_rule(q, k, v, g, beta, chunk_size, initial_state=None):
    length = q.shape[1]
    pad = -length % chunk_size

    def padded(t):  # (b, l, ...) -> (b, l + pad, ...), the last token repeated
        return torch.cat([t, t[:, -1:].expand(-1, pad, *t.shape[2:])], dim=1)

    o, state = reference(*(padded(t) for t in (q, k, v, g, beta)), chunk_size, initial_state)
    return o[:, :length], state
