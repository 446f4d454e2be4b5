"""MQAR: the generator's answers checked against an independent lookup, and a small attention model
that learns the task (it solves it with an induction head: find the key, copy what followed it)."""

import pytest
import torch

from nanohybrid.model import LanguageModel
from nanohybrid.presets import get_config
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


def test_recall_models_are_two_layers_and_qwen3_next_keeps_its_attention():
    """Zoology's depth for every recall model; Qwen3-Next's every-4th attention layer would leave none of 2."""
    from nanohybrid.tools.compare import RECALL_ALSO, TABLE_3_ARCHITECTURES, recall_config

    assert set(RECALL_ALSO) == {"gated-deltanet", "qwen3-next"} and not set(RECALL_ALSO) & set(TABLE_3_ARCHITECTURES)
    assert all(recall_config(arch).n_layers == 2 for arch in TABLE_3_ARCHITECTURES + RECALL_ALSO)
    assert [spec.mixer for spec in recall_config("qwen3-next").layers] == ["gated_deltanet", "gated_attention"]
    assert [spec.mixer for spec in recall_config("gated-deltanet").layers] == ["gated_deltanet"] * 2


def test_recall_only_rows_follow_the_five_and_stay_out_of_the_orderings(tmp_path):
    from nanohybrid.tools.compare import MQAR_SETTINGS, PAPER_TABLE_3, write_report

    results = [dict(arch=arch, parameters=5e6, val_loss=ppl / 10, tokens_per_second=1000.0,
                    mqar=dict.fromkeys(MQAR_SETTINGS, recall / 100)) for arch, (ppl, recall) in PAPER_TABLE_3.items()]
    recall_only = [dict(arch="gated-deltanet", mqar=dict(zip(MQAR_SETTINGS, (1.0, 0.5, 0.3)))),
                   dict(arch="qwen3-next", mqar=dict.fromkeys(MQAR_SETTINGS, 0.99))]
    markdown = write_report(results, tmp_path, recall_only)
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == [*PAPER_TABLE_3, "gated-deltanet", "qwen3-next"]
    header, deltanet = rows[0].split(","), dict(zip(rows[0].split(","), rows[-2].split(",")))
    assert deltanet["MQAR l=48 D=6"] == "0.500" and deltanet["MQAR mean"] == "0.600"
    assert all(deltanet[column] == "–" for column in header if column != "arch" and not column.startswith("MQAR"))
    orderings = markdown.split("Orderings of the five")[1]
    assert "hymba" in orderings and "gated-deltanet" not in orderings and "qwen3-next" not in orderings
    assert (tmp_path / "comparison.png").stat().st_size > 0
