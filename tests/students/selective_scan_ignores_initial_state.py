"""A student's selective scan that always starts from a zero state: broken on purpose."""

from nanohybrid.scan import selective_scan


def scan(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, initial_state=None):
    return selective_scan(x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state=None)
