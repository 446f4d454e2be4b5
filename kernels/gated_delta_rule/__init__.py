"""The fast forms of the gated delta rule (Gated DeltaNet); the reference is nanohybrid/delta_rule.py.

cpu.py: the chunked UT-transform form laid out for a CPU, its backward written out. triton.py: Triton forward
and backward, one program per (batch, head) walking the chunks. Upstream: fla's chunk_gated_delta_rule
(kernels/upstream.py)."""
