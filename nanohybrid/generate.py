"""Generation: prefill the prompt into an InferenceCache, then decode one token at a time.

Sampling follows the usual order: divide the logits by the temperature, keep the top-k, keep the
smallest set of tokens whose probability reaches top-p (nucleus sampling, Holtzman et al. 2019),
renormalise, draw. Temperature 0 is greedy decoding.

Shape glossary
  b batch   l prompt length   V vocab
"""

from collections.abc import Iterator

import torch

from .cache import InferenceCache


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (b, V) -> next tokens (b,)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth_largest = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p is not None:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        outside = cumulative - sorted_logits.softmax(dim=-1) >= top_p  # tokens after the nucleus is full
        logits = logits.masked_fill(outside.scatter(1, order, outside), float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)[:, 0]


@torch.no_grad()
def generate(model, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """prompt (b, l) -> yields each new token (b,) as soon as it is chosen."""
    cache = InferenceCache()
    logits = model(prompt, cache=cache).logits[:, -1]
    for step in range(max_new_tokens):
        token = sample_next(logits, temperature, top_k, top_p, generator)
        yield token
        if step + 1 < max_new_tokens:
            logits = model(token[:, None], cache=cache).logits[:, -1]
