"""Learnable meta tokens (Hymba, arXiv 2411.13676, §2.3 and App. D; docs/conventions.md, "Meta tokens").

M learned vectors R = [r_1 .. r_M] are prepended to every sequence, X̃ = [R; X], and pass through every
layer like ordinary tokens:
  - they take RoPE positions 0 .. M-1, so the first real token sits at position M;
  - under a sliding window they stay visible to every query (see attention.attention_mask);
  - in the SSM heads they act as a learned initial conv and SSM state;
  - their outputs are stripped before the LM head: they are never predicted and carry no loss.

Shape glossary
  b batch   l real tokens   M meta tokens   d d_model
"""

import torch
import torch.nn as nn

DEFAULT_META_TOKENS = 128  # Hymba's published count


class MetaTokens(nn.Module):
    def __init__(self, n_tokens: int, d_model: int):
        super().__init__()
        self.n_tokens = n_tokens
        self.embeddings = nn.Parameter(torch.randn(n_tokens, d_model))  # std 1, as in the official code

    def prepend(self, x: torch.Tensor) -> torch.Tensor:
        """(b, l, d) -> (b, M + l, d)."""
        return torch.cat([self.embeddings.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)

    def strip(self, x: torch.Tensor) -> torch.Tensor:
        """(b, M + l, d) -> (b, l, d)."""
        return x[:, self.n_tokens :]
