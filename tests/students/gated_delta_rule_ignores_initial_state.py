"""A student's gated delta rule that always starts from a zero state: broken on purpose."""

from nanohybrid.delta_rule import gated_delta_recurrent


def gated_delta_rule(q, k, v, g, beta, chunk_size, initial_state=None):
    return gated_delta_recurrent(q, k, v, g, beta)
