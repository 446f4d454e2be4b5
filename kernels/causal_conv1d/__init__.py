"""The fast forms of the depthwise causal conv (Mamba, Griffin); the reference is nanohybrid/layers.py.

cpu.py: shifted taps with the backward written out. triton.py: Triton forward and backward. Upstream: causal-conv1d."""
