"""The fast forms of causal attention (windows, meta prefix, documents, GQA); the reference is nanohybrid/attention.py.

sdpa.py: PyTorch's fused scaled_dot_product_attention. triton.py: a FlashAttention-style kernel. Upstream: flash-attn."""
