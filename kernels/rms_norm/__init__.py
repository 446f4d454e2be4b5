"""The fast form of RMSNorm; the reference is nanohybrid/layers.py::rms_norm.

cpu.py: the backward written out."""
