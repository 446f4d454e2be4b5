"""MQAR: the generator's answers checked against an independent lookup, and a small attention model
that learns the task (it solves it with an induction head: find the key, copy what followed it)."""

import pytest
import torch

from nanohybrid.config import get_config
from nanohybrid.model import LanguageModel
from nanohybrid.tools.mqar import IGNORE, mqar_accuracy, mqar_batch


def test_every_answer_is_the_value_paired_with_the_queried_key():
    inputs, targets = mqar_batch(16, 64, 8, 64, torch.Generator().manual_seed(0))
    for row_inputs, row_targets in zip(inputs.tolist(), targets.tolist()):
        context = row_inputs[:16]
        pairs = dict(zip(context[0::2], context[1::2]))
        assert len(pairs) == 8 and all(1 <= k < 32 for k in pairs) and all(32 <= v < 64 for v in pairs.values())
        asked = [(token, target) for token, target in zip(row_inputs, row_targets) if target != IGNORE]
        assert sorted(token for token, _ in asked) == sorted(pairs)  # each key asked exactly once
        assert all(pairs[token] == target for token, target in asked)
        assert all(token == 0 for token, target in zip(row_inputs[16:], row_targets[16:]) if target == IGNORE)


def test_impossible_sizes_are_refused():
    with pytest.raises(ValueError, match="needs vocab_size >= 18 and seq_len >= 32"):
        mqar_batch(1, 20, 8, 64, torch.Generator())


def test_a_two_layer_attention_model_learns_it():
    torch.manual_seed(0)
    model = LanguageModel(get_config("llama3-tiny", vocab_size=32, rope_theta=10000.0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    held_out = mqar_batch(128, 32, 4, 32, torch.Generator().manual_seed(123))
    assert mqar_accuracy(model, *held_out) < 0.2
    for _ in range(1000):  # the induction head forms after about 700 steps
        inputs, targets = mqar_batch(64, 32, 4, 32, generator)
        model(inputs, targets=targets).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert mqar_accuracy(model, *held_out) > 0.9


def test_orderings_are_read_against_the_paper():
    """Kendall's τ: 1 for the same order, -1 reversed, 1/3 with one of three pairs swapped; a run whose
    val losses follow Table 3's perplexities and whose recall follows its recall average agrees with it fully."""
    from nanohybrid.tools.compare import MQAR_SETTINGS, PAPER_TABLE_3, kendall_tau, orderings

    assert kendall_tau(list("abc"), list("abc")) == 1 and kendall_tau(list("abc"), list("cba")) == -1
    assert kendall_tau(list("abc"), list("acb")) == pytest.approx(1 / 3)
    results = [dict(arch=arch, val_loss=ppl / 10, mqar=dict.fromkeys(MQAR_SETTINGS, recall / 100))
               for arch, (ppl, recall) in PAPER_TABLE_3.items()]
    rows = orderings(results).splitlines()[2:]
    assert [row.split(" | ")[3] for row in rows] == ["+1.0", "+1.0"]
    assert rows[0].split(" | ")[1] == "hymba, mamba2, llama3, samba, mamba2-ffn"
