"""The fast forms of the RG-LRU scan (Griffin); the reference is nanohybrid/rglru.py.

cpu.py: the linear recurrence with its backward written out. triton.py: Triton forward and backward."""
