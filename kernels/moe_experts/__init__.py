"""The fast form of the MoE experts (Jamba); the reference is nanohybrid/moe.py.

triton.py: a grouped (token-sorted) expert matmul with its backward."""
