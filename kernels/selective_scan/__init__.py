"""The fast forms of the Mamba-1 selective scan (S6); the reference is nanohybrid/scan.py.

cpu.py: blocked loop, backward written out. triton.py: Triton forward and backward. Upstream: mamba_ssm (kernels/upstream.py)."""
