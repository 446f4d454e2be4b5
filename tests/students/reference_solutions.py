"""Correct solutions to every assignment: the readable references themselves, re-exported under the
assignments' function names:

    python -m lessons.assignments.grade attention tests/students/reference_solutions.py:attention
"""

from nanohybrid.attention import attention
from nanohybrid.moe import moe_experts
from nanohybrid.rglru import rglru_scan
from nanohybrid.scan import selective_scan

__all__ = ["attention", "moe_experts", "rglru_scan", "selective_scan"]
