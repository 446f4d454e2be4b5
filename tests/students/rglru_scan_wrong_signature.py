"""A student's RG-LRU scan with the wrong parameters: rejected when loaded."""


def scan(x, a, initial_state=None):
    return x, initial_state
