"""train_small.py: a default-path run that learns, resume equal to the uninterrupted run (bitwise),
a checkpoint that survives SIGKILL mid-save, DDP against one process, local parquet shards in
SmolLM-Corpus shape, and clear errors for bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train_small
from nanohybrid.tools.training import load_model

REPO = Path(__file__).resolve().parent.parent
TINY_RUN = ["--batch-size=4", "--seq-len=32", "--eval-batches=2", "--warmup=2", "--sample-tokens=5"]


pytestmark = pytest.mark.usefixtures("private_cache")  # tests/conftest.py, as is `corpus`


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_the_default_path_learns_and_writes_its_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NANOHYBRID_CACHE", str(REPO / ".cache"))  # the standard library, tokenized once
    out = tmp_path / "run"
    train_small.main(["--preset=hymba-tiny", "--max-steps=40", "--eval-interval=40", "--lr=3e-3", f"--out={out}", *TINY_RUN])
    logged = metrics(out)
    assert len(logged) == 40 and logged[-1]["val_loss"] < logged[0]["loss"] - 1.0
    assert (out / "loss.png").stat().st_size > 0 and (out / "latest").read_text().strip() == "checkpoints/step-000040"
    model, meta = load_model(out)
    assert meta["step"] == 40 and model.config.arch == "hymba"
    printed = capsys.readouterr().out
    assert "validation loss" in printed and f"python sample.py --ckpt {out}" in printed


def test_a_tiny_preset_trains_on_the_reference_rung_as_on_the_fast_paths(tmp_path, corpus):
    """--kernels=reference: every op on its readable reference, differentiated by autograd. The losses of
    five steps equal those of the default (CPU fast path) run within the fp32 rounding of two summation
    orders (1e-4 relative, the parity suite's kernel bound), and both learn."""
    common = ["--preset=hymba-tiny", "--max-steps=5", "--eval-interval=5", f"--data={corpus}", *TINY_RUN]
    train_small.main([*common, f"--out={tmp_path / 'auto'}"])
    train_small.main([*common, "--kernels=reference", f"--out={tmp_path / 'reference'}"])
    fast, reference = metrics(tmp_path / "auto"), metrics(tmp_path / "reference")
    assert len(fast) == len(reference) == 5
    for ours, theirs in zip(reference, fast):
        assert abs(ours["loss"] - theirs["loss"]) <= 1e-4 * abs(theirs["loss"]), (ours, theirs)
    assert reference[-1]["loss"] < reference[0]["loss"]


def crash_at_step(run: list[str], step: int, monkeypatch) -> None:
    """train_small.main(run), interrupted as its training batch for `step` is drawn (a simulated crash)."""
    real_get_batch = train_small.get_batch

    def crashing(tokens, batch_size, seq_len, seed, index):
        if index == step - 1 and tokens.shape[0] > 1000:  # a training batch (validation is much shorter)
            raise KeyboardInterrupt("simulated crash")
        return real_get_batch(tokens, batch_size, seq_len, seed, index)

    monkeypatch.setattr(train_small, "get_batch", crashing)
    with pytest.raises(KeyboardInterrupt):
        train_small.main(run)
    monkeypatch.setattr(train_small, "get_batch", real_get_batch)


def test_resume_equals_the_uninterrupted_run_bitwise(tmp_path, corpus, monkeypatch):
    common = ["--preset=hymba-tiny", "--max-steps=10", "--eval-interval=4", f"--data={corpus}", *TINY_RUN]
    train_small.main([*common, f"--out={tmp_path / 'straight'}"])
    crash_at_step([*common, f"--out={tmp_path / 'resumed'}"], 7, monkeypatch)
    assert (tmp_path / "resumed" / "latest").read_text().strip() == "checkpoints/step-000004"
    train_small.main([*common, f"--out={tmp_path / 'resumed'}", "--resume"])
    assert metrics(tmp_path / "resumed") == metrics(tmp_path / "straight")  # every loss, bit for bit


def test_sigkill_during_a_save_leaves_the_latest_checkpoint_loadable(tmp_path, corpus):
    out = tmp_path / "run"
    driver = """
import sys, time, train_small, nanohybrid.tools.training as training
real_save = training.save_file
def slow_second_save(tensors, path):
    real_save(tensors, path)
    if "step-000004" in str(path):
        print("saving", flush=True)
        time.sleep(60)
training.save_file = slow_second_save
train_small.main(sys.argv[1:])
"""
    process = subprocess.Popen([sys.executable, "-c", driver, "--preset=llama3-tiny", "--max-steps=6", "--eval-interval=2",
                                f"--data={corpus}", f"--out={out}", *TINY_RUN], cwd=REPO, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.time() + 120
    while process.stdout.readline().strip() != "saving":
        assert time.time() < deadline and process.poll() is None, "the run never reached its second save"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (out / "latest").read_text().strip() == "checkpoints/step-000002"
    model, meta = load_model(out)
    assert meta["step"] == 2


def test_ddp_with_two_gloo_processes_matches_one_process(tmp_path, corpus):
    """Same global batch (2 micro-batches per step): one process does both, or each of two does one.
    Gradients are summed in a different order, so losses agree to fp32 rounding: bound 1e-5 relative."""
    common = ["train_small.py", "--preset=llama3-tiny", "--max-steps=6", "--eval-interval=6", "--grad-accum=2",
              f"--data={corpus}", *TINY_RUN]
    single = subprocess.run([sys.executable, *common, f"--out={tmp_path / 'one'}"], cwd=REPO, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517"]
    ddp = subprocess.run([*torchrun, *common, f"--out={tmp_path / 'two'}"], cwd=REPO, capture_output=True, text=True)
    assert ddp.returncode == 0, ddp.stderr
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert len(one) == len(two) == 6
    for a, b in zip(one, two):
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * abs(a["loss"]), (a, b)
    assert abs(one[-1]["val_loss"] - two[-1]["val_loss"]) <= 1e-5 * one[-1]["val_loss"]


def test_a_parquet_shard_in_smollm_shape_trains(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    texts = [f"Lesson {i}: the mitochondria is the powerhouse of the cell. " * 3 for i in range(200)]
    table = pa.table({"text": texts, "id": [str(i) for i in range(200)], "metadata": [{"source": "test"}] * 200})
    (tmp_path / "shards").mkdir()
    pq.write_table(table, tmp_path / "shards" / "train-00000-of-00001.parquet")
    out = tmp_path / "run"
    train_small.main(["--preset=mamba2-tiny", "--max-steps=8", "--eval-interval=8", f"--data={tmp_path / 'shards'}",
                      f"--out={out}", *TINY_RUN])
    assert metrics(out)[-1]["val_loss"] < metrics(out)[0]["loss"]


def test_a_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, corpus, monkeypatch):
    real_forward = train_small.LanguageModel.forward
    calls = []

    def nan_at_step_5(self, tokens, targets=None, **kwargs):
        output = real_forward(self, tokens, targets, **kwargs)
        if self.training:
            calls.append(1)
            if len(calls) == 5:
                output.loss = output.loss * float("nan")
        return output

    monkeypatch.setattr(train_small.LanguageModel, "forward", nan_at_step_5)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"the loss became nan at step 5, .* last good checkpoint is .*step-000004"):
        train_small.main(["--preset=llama3-tiny", "--max-steps=8", "--eval-interval=2", f"--data={corpus}",
                          f"--out={out}", *TINY_RUN])
    model, meta = load_model(out)
    assert meta["step"] == 4 and all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("arguments, message", [
    (["--data=no/such/corpus"], "no .txt, .jsonl or .parquet files there"),
    (["--preset=hymba-huge"], "unknown preset 'hymba-huge'"),
    (["--preset=llama3-tiny", "--d_modle=32"], "unknown option '--d_modle=32'"),
    (["--preset=llama3-tiny", "--d_model=big"], "--d_model=big: expected int"),
    (["--preset=llama3-tiny", "--seq-len=4096"], "--seq-len=4096 exceeds the model's max_seq_len=512"),
    (["--preset=llama3-tiny", "--schedule=linear"], "--schedule=linear: choose cosine or wsd"),
])
def test_bad_input_is_one_line_and_a_non_zero_exit(tmp_path, arguments, message):
    result = subprocess.run([sys.executable, "train_small.py", *arguments, f"--out={tmp_path / 'run'}"], cwd=REPO,
                            capture_output=True, text=True, env={**os.environ, "NANOHYBRID_CACHE": str(REPO / ".cache")})
    assert result.returncode != 0
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_empty_and_unreadable_corpora_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "part.jsonl").write_text("")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "part.jsonl").write_text('{"text": "fine"}\n{not json\n')
    for folder, message in (("empty", "the files hold no documents"), ("broken", "cannot read it (ArrowInvalid")):
        result = subprocess.run([sys.executable, "train_small.py", "--preset=llama3-tiny", f"--data={tmp_path / folder}"],
                                cwd=REPO, capture_output=True, text=True, env={**os.environ, "NANOHYBRID_CACHE": str(tmp_path)})
        assert result.returncode != 0 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_compare_trains_the_five_and_writes_its_report_with_the_recall_rows(tmp_path, corpus, monkeypatch):
    import nanohybrid.tools.compare as compare
    monkeypatch.setattr(compare, "MQAR_STEPS", 10)
    out = tmp_path / "compare"
    train_small.main(["--compare", "--size=tiny", "--max-steps=3", "--eval-interval=3", f"--data={corpus}",
                      f"--out={out}", *TINY_RUN])
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].startswith("arch,parameters (M),val loss,val ppl") and "MQAR l=64 D=8" in rows[0]
    assert [row.split(",")[0] for row in rows[1:]] == ["hymba", "mamba2", "mamba2-ffn", "llama3", "samba",
                                                        "gated-deltanet", "qwen3-next"]
    recall_only = [dict(zip(rows[0].split(","), row.split(","))) for row in rows[-2:]]
    assert all(row["val loss"] == "–" and 0 <= float(row["MQAR mean"]) <= 1 for row in recall_only)
    assert (out / "comparison.png").stat().st_size > 0 and (out / "results.md").read_text().startswith("| arch |")
    assert all((out / f"{arch}-tiny" / "latest").exists() for arch in compare.TABLE_3_ARCHITECTURES)


def test_overrides_are_type_checked_and_token_counts_take_suffixes():
    run, overrides, given = train_small.parse_args(["--tokens=10B", "--lr=1e-3", "--d_model=96", "--sliding_window=None"])
    assert run.tokens == 10**10 and run.lr == 1e-3 and overrides == {"d_model": 96, "sliding_window": None}
    assert given == {"tokens", "lr"}
    assert train_small.parse_args(["--max-steps=2_000", "--no-compile"])[0].max_steps == 2000
