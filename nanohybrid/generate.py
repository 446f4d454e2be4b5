"""Generation: prefill each prompt into an InferenceCache, then decode one token at a time.

Sampling follows the usual order: divide the logits by the temperature, keep the top-k, keep the
smallest set of tokens whose probability reaches top-p (nucleus sampling, Holtzman et al. 2019),
renormalise, draw. Temperature 0 is greedy decoding.

Shape glossary
  b batch   l prompt length   V vocab
"""

from collections.abc import Iterator

import torch

from .cache import InferenceCache


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not temperature >= 0:
        raise ValueError(f"temperature={temperature}: use 0 (greedy) or a positive number")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k}: keep at least 1 token, or leave it unset")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p}: use a probability in (0, 1], or leave it unset")


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (b, V) -> next tokens (b,)."""
    check_sampling(temperature, top_k, top_p)
    if not torch.isfinite(logits).all():
        raise ValueError("the model's logits hold NaN or inf: its weights or inputs are not finite (a run that "
                         "diverged?); sample from an earlier checkpoint, or retrain with a lower --lr")
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


def check_length(model, prompts: list[list[int]], max_new_tokens: int) -> None:
    longest, limit = max(len(prompt) for prompt in prompts), model.config.max_seq_len
    if max_new_tokens < 0 or longest + max_new_tokens > limit:
        raise ValueError(f"a prompt of {longest} tokens plus {max_new_tokens} new tokens does not fit max_seq_len={limit}; "
                         "shorten the prompt or ask for fewer tokens")


@torch.no_grad()
def prefill(model, prompt: torch.Tensor, chunk_size: int | None = None) -> tuple[torch.Tensor, InferenceCache]:
    """Run a prompt (b, l) into a fresh cache, in chunks of `chunk_size` tokens (all at once by default):
    chunking bounds the memory of long prompts and gives the same result. -> last logits (b, V), cache."""
    cache, step = InferenceCache(), chunk_size or prompt.shape[1]
    for start in range(0, prompt.shape[1], step):
        logits = model(prompt[:, start : start + step], cache=cache).logits
    return logits[:, -1], cache


@torch.no_grad()
def prefill_prompts(model, prompts: list[list[int]], chunk_size: int | None = None) -> tuple[torch.Tensor, InferenceCache]:
    """Prompts of any lengths (lists of token ids) -> their last logits (b, V) and one cache holding every row.
    Each prompt is prefilled on its own, exactly as a batch of one would be; the cache keeps each row's length."""
    if not prompts or any(len(prompt) == 0 for prompt in prompts):
        raise ValueError("every prompt needs at least one token")
    device = model.embedding.weight.device
    rows = [prefill(model, torch.tensor([prompt], device=device), chunk_size) for prompt in prompts]
    return torch.cat([logits for logits, _ in rows]), InferenceCache.stack([cache for _, cache in rows])


@torch.no_grad()
def decode(model, logits: torch.Tensor, cache: InferenceCache, max_new_tokens: int, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """From the last logits (b, V) and the cache, yield each row's next token (b,) as soon as it is chosen;
    the rows decode together, each at its own position."""
    for step in range(max_new_tokens):
        token = sample_next(logits, temperature, top_k, top_p, generator)
        yield token
        if step + 1 < max_new_tokens:
            logits = model(token[:, None], cache=cache).logits[:, -1]


def generate(model, prompts: list[list[int]], max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, generator: torch.Generator | None = None,
             prefill_chunk: int | None = None) -> Iterator[torch.Tensor]:
    """Continue each prompt: prefill_prompts, then decode."""
    check_length(model, prompts, max_new_tokens)
    check_sampling(temperature, top_k, top_p)
    logits, cache = prefill_prompts(model, prompts, prefill_chunk)
    return decode(model, logits, cache, max_new_tokens, temperature, top_k, top_p, generator)
