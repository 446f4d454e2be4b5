"""The lm-evaluation-harness entry point: our model's log-likelihoods, rolling perplexity and greedy
generation as the harness asks for them, the paper's table layout, and an offline run on a local task."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from nanohybrid.model import LanguageModel
from nanohybrid.presets import get_config
from nanohybrid.tools.evaluate import PAPER_COLUMNS, harness_model, main, paper_table
from nanohybrid.tools.tokenizer import ByteTokenizer
from nanohybrid.tools.training import make_optimizer, save_checkpoint

pytest.importorskip("lm_eval", reason="the evaluation entry point needs lm-eval (pip install lm-eval)")
from lm_eval.api.instance import Instance  # noqa: E402


def request(kind, *args):
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return LanguageModel(get_config("llama3-tiny", max_seq_len=64)).eval()


def direct_log_probability(model, tokens: list[int], scored: int) -> float:
    """log p of the last `scored` tokens given the ones before, from one forward pass."""
    with torch.no_grad():
        log_probs = F.log_softmax(model(torch.tensor([tokens[:-1]])).logits[0], dim=-1)
    targets = torch.tensor(tokens[1:])
    return log_probs.gather(-1, targets[:, None])[-scored:].sum().item()


def test_loglikelihood_scores_the_continuation_after_an_end_of_text_token(model):
    harness = harness_model(model, ByteTokenizer(), batch_size=2)
    pairs = [("def f(x):", " return x"), ("a", "bc"), ("", "hello")]
    results = harness.loglikelihood([request("loglikelihood", *pair) for pair in pairs])
    for (context, continuation), (score, _) in zip(pairs, results):
        tokens = [256] + list(context.encode()) + list(continuation.encode())
        assert math.isclose(score, direct_log_probability(model, tokens, len(continuation)), rel_tol=1e-5)


def test_rolling_loglikelihood_of_a_short_text_is_its_whole_log_probability(model):
    text = "import os\nprint(os.getcwd())"
    [score] = harness_model(model, ByteTokenizer()).loglikelihood_rolling([request("loglikelihood_rolling", text)])
    assert math.isclose(score, direct_log_probability(model, [256] + list(text.encode()), len(text)), rel_tol=1e-5)
    long_text = "x = 1\n" * 40  # 240 bytes through a 64-token model: windows, each token scored once
    [long_score] = harness_model(model, ByteTokenizer()).loglikelihood_rolling([request("loglikelihood_rolling", long_text)])
    assert math.isfinite(long_score) and long_score < score


def test_generation_stops_at_the_stop_string_and_the_token_limit(model):
    harness = harness_model(model, ByteTokenizer())
    [limited] = harness.generate_until([request("generate_until", "abc", {"until": [], "max_gen_toks": 5})])
    assert len(limited.encode("utf-8", errors="replace")) <= 5 * 3
    [stopped] = harness.generate_until([request("generate_until", "abc", {"until": [limited[1:3]], "max_gen_toks": 5})])
    assert limited[1:3] not in stopped and limited.startswith(stopped)


def test_paper_table_layout_and_averages():
    results = {task: {f"{metric},none": 0.5} for _, task, metric in PAPER_COLUMNS if task != "mean"}
    results["wikitext"] = {"word_perplexity,none": 18.62}
    results["lambada_openai"] = {"perplexity,none": 10.38, "acc,none": 0.5284}
    table = paper_table(results, "hymba").splitlines()
    assert table[0] == "| model | " + " | ".join(column for column, _, _ in PAPER_COLUMNS) + " |"
    cells = table[2].split(" | ")
    assert cells[1:3] == ["18.62", "10.38"] and cells[5] == "50.00"  # recall avg of SWDE and SQuAD-C at 50%
    assert cells[-1].rstrip(" |") == f"{(52.84 + 7 * 50) / 8:.2f}"  # commonsense avg of 8


def test_an_offline_run_on_a_local_task_prints_the_table(tmp_path, model, capsys):
    rows = [{"question": f"{i} + {i} =", "choices": [f" {2 * i}", f" {2 * i + 1}"], "answer": 0} for i in range(6)]
    (tmp_path / "sums.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    (tmp_path / "sums.yaml").write_text(
        f"task: local_sums\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {tmp_path / 'sums.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n")
    save_checkpoint(tmp_path / "run", model, make_optimizer(model, 1e-3, 0.0), {"tokenizer": "bytes"}, step=1)
    main(["--ckpt", str(tmp_path / "run"), "--tasks", "local_sums", "--include-path", str(tmp_path)])
    header, _, row = capsys.readouterr().out.strip().splitlines()[-3:]
    assert header.startswith("| model | Wiki ppl | LMB ppl | SWDE") and header.endswith("| local_sums |")
    accuracy = float(row.split(" | ")[-1].rstrip(" |"))
    assert 0 <= accuracy <= 100


def test_an_unknown_task_is_an_error(tmp_path, model):
    save_checkpoint(tmp_path / "run", model, make_optimizer(model, 1e-3, 0.0), {"tokenizer": "bytes"}, step=1)
    with pytest.raises(ValueError, match="unknown task\\(s\\) no_such_task"):
        main(["--ckpt", str(tmp_path / "run"), "--tasks", "no_such_task"])
