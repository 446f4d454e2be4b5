"""Correct solutions written in Triton: the project's own kernels (kernels/), re-exported under the
assignments' function names. Without a GPU the grader runs them in Triton's interpreter."""

from kernels.attention.triton import attention
from kernels.moe_experts.triton import moe_experts
from kernels.rglru_scan.triton import rglru_scan
from kernels.selective_scan.triton import selective_scan

__all__ = ["attention", "moe_experts", "rglru_scan", "selective_scan"]
