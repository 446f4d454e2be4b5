"""The fast forms of Mamba-2's SSD; the reference (recurrence, quadratic and chunked forms) is nanohybrid/ssd.py.

cpu.py: the chunked form laid out for a CPU, its decay chain's backward written out. triton.py: Triton chunked kernels.
Upstream: mamba_ssm's mamba_chunk_scan_combined (kernels/upstream.py)."""
