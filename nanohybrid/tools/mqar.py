"""Multi-query associative recall (MQAR), the CPU stand-in for the recall-intensive tasks (SWDE, SQuAD-C).

Reference: Arora et al. 2023, "Zoology: Measuring and Improving Recall in Efficient Language Models"
(arXiv 2312.04927), §3. A sequence opens with D key-value pairs, then asks for some of the keys again;
the model must answer each with the value it was paired with:

    k_1 v_1 k_2 v_2 ... k_D v_D  0 0 k_3 0 0 0 k_1 0 ...      inputs
                                      v_3       v_1          targets (every other target is -100)

Keys come from the lower half of the vocabulary and values from the upper half, token 0 is filler.
Every key in the context is distinct; each is asked once, at a random even offset after the context
(Zoology spaces the queries with a power law; uniform spacing is used here). Attention solves it with
one lookup per query; a fixed-size recurrent state must have stored all D pairs, which gets harder as
D grows: that is what the comparison measures.

Shape glossary
  b batch   l sequence length   D key-value pairs
"""

import torch

IGNORE = -100


def mqar_batch(batch: int, seq_len: int, n_pairs: int, vocab_size: int, generator: torch.Generator):
    """inputs (b, l), targets (b, l) with the value expected at each query key and IGNORE elsewhere."""
    if vocab_size < 2 * n_pairs + 2 or seq_len < 4 * n_pairs:
        raise ValueError(f"MQAR with {n_pairs} pairs needs vocab_size >= {2 * n_pairs + 2} and seq_len >= {4 * n_pairs} "
                         f"(got {vocab_size}, {seq_len})")
    half = vocab_size // 2
    inputs = torch.zeros(batch, seq_len, dtype=torch.long)
    targets = torch.full((batch, seq_len), IGNORE, dtype=torch.long)
    query_slots = (seq_len - 2 * n_pairs) // 2  # queries sit at even offsets after the context
    for row in range(batch):
        keys = 1 + torch.randperm(half - 1, generator=generator)[:n_pairs]
        values = half + torch.randint(0, vocab_size - half, (n_pairs,), generator=generator)
        inputs[row, 0 : 2 * n_pairs : 2], inputs[row, 1 : 2 * n_pairs : 2] = keys, values
        order = torch.randperm(n_pairs, generator=generator)  # which pair each query asks for
        slots = torch.randperm(query_slots, generator=generator)[:n_pairs].sort().values
        positions = 2 * n_pairs + 2 * slots
        inputs[row, positions] = keys[order]
        targets[row, positions] = values[order]
    return inputs, targets


@torch.no_grad()
def mqar_accuracy(model, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    """The share of queries whose most likely next token is the right value."""
    predictions = model(inputs).logits.argmax(dim=-1)
    asked = targets != IGNORE
    return (predictions[asked] == targets[asked]).float().mean().item()
