"""train_small.py and sample.py under a hostile user: a diverging run never calls a NaN checkpoint good,
metrics.jsonl survives kills and failed starts, bad values and unwritable places are one line and a
non-zero exit, and --resume continues a run with its own settings."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_small
from nanohybrid.generate import sample_next
from nanohybrid.model import LanguageModel
from nanohybrid.presets import get_config
from nanohybrid.tools.training import load_model, make_optimizer, read_metrics, save_checkpoint
from tests.test_train import TINY_RUN, crash_at_step, metrics

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("private_cache")  # tests/conftest.py, as is `corpus`


def run_script(*arguments, driver: str | None = None) -> subprocess.CompletedProcess:
    """A script run as a user runs it (or a driver that patches it first), in the repository."""
    command = [sys.executable, "-c", driver, *arguments] if driver else [sys.executable, *arguments]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def one_line_error(result, message: str) -> None:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr, result.stderr


def snapshot(out: Path) -> dict[str, bytes]:
    return {str(path.relative_to(out)): path.read_bytes() for path in sorted(out.rglob("*")) if path.is_file()}


@pytest.fixture
def finished_run(tmp_path, corpus) -> Path:
    out = tmp_path / "finished"
    train_small.main(["--preset=llama3-tiny", "--max-steps=6", "--eval-interval=3", f"--data={corpus}", f"--out={out}",
                      *TINY_RUN])
    return out


@pytest.mark.parametrize("lr", ["1e6", "30"])
def test_a_diverging_run_never_saves_a_nan_checkpoint_and_says_so(tmp_path, corpus, lr):
    """At these rates the weights overflow within a few updates: the validation loss of the checkpoint
    that would follow is NaN, so it is not written, and the message names the last finite one (or none)."""
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="lower --lr") as error:
        train_small.main(["--preset=hymba-tiny", f"--lr={lr}", "--eval-interval=1", "--max-steps=20", f"--data={corpus}",
                          f"--out={out}", *TINY_RUN])
    if (out / "latest").exists():
        model, meta = load_model(out)  # finite weights, or load_model refuses them
        assert f"step-{meta['step']:06d}" in str(error.value)
        assert all(torch.isfinite(p).all() for p in model.parameters())
        validation = [m["val_loss"] for m in read_metrics(out / "metrics.jsonl") if "val_loss" in m]
        assert validation and all(torch.isfinite(torch.tensor(validation)))
    else:
        assert "no good checkpoint was written yet" in str(error.value)


def test_nan_weights_are_one_line_for_sample_and_for_sampling(tmp_path):
    model = LanguageModel(get_config("llama3-tiny"))
    with torch.no_grad():
        model.embedding.weight[3, 0] = float("nan")
    save_checkpoint(tmp_path, model, make_optimizer(model, 1e-3, 0.1), {"tokenizer": "bytes"}, step=1)
    one_line_error(run_script("sample.py", "--ckpt", str(tmp_path), "--max-new-tokens=3"), "are not finite")
    with pytest.raises(ValueError, match="logits hold NaN or inf"):
        sample_next(torch.tensor([[0.0, float("nan")]]), temperature=1.0)


def test_resume_killed_at_its_start_keeps_every_metric_of_the_checkpoint(tmp_path, corpus, monkeypatch):
    """The resumed run rewrites metrics.jsonl to the checkpoint's steps; a SIGKILL right after that must
    find all of them there (the rewrite is a rename of a complete file, not a truncate-then-write)."""
    common = ["--preset=llama3-tiny", "--max-steps=10", "--eval-interval=4", f"--data={corpus}", *TINY_RUN]
    out = tmp_path / "run"
    crash_at_step([*common, f"--out={out}"], 7, monkeypatch)
    before = metrics(out)
    assert [m["step"] for m in before] == [1, 2, 3, 4, 5, 6]
    killed_at_start = "import os, signal, sys, train_small\n" \
        "train_small.tqdm = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n" \
        "train_small.main(sys.argv[1:])\n"
    result = run_script(*common, f"--out={out}", "--resume", driver=killed_at_start)
    assert result.returncode == -9, result.stderr
    assert metrics(out) == before[:4]


@pytest.mark.parametrize("arguments, message", [
    (["--batch-size=0", "--overwrite"], "--batch-size=0: must be at least 1"),
    (["--max-steps=0", "--resume"], "--max-steps=0: must be at least 1"),
    (["--data=/a/missing/absolute/path", "--overwrite"], "no .txt, .jsonl or .parquet files there"),
    (["--data=/a/missing/absolute/path", "--resume", "--max-steps=12"], "no .txt, .jsonl or .parquet files there"),
    ([], "already holds a run: pass --resume to continue it, --overwrite"),
])
def test_a_failed_start_leaves_an_existing_run_untouched(finished_run, arguments, message):
    """Even --overwrite and --resume change nothing on disk until every setting, the data and the model
    have been checked."""
    before = snapshot(finished_run)
    one_line_error(run_script("train_small.py", "--preset=llama3-tiny", f"--out={finished_run}", *arguments), message)
    assert snapshot(finished_run) == before


def test_overwrite_starts_an_existing_run_again(finished_run, corpus):
    train_small.main(["--preset=llama3-tiny", "--max-steps=2", "--eval-interval=2", f"--data={corpus}",
                      f"--out={finished_run}", "--overwrite", *TINY_RUN])
    assert [entry["step"] for entry in metrics(finished_run)] == [1, 2]
    assert (finished_run / "latest").read_text().strip() == "checkpoints/step-000002"
    assert [path.name for path in (finished_run / "checkpoints").iterdir()] == ["step-000002"]


@pytest.mark.parametrize("arguments, message", [
    (["--max-steps=-5"], "--max-steps=-5: must be at least 1"),
    (["--batch-size=-3"], "--batch-size=-3: must be at least 1"),
    (["--lr=1e39"], "--lr=1e+39: use a positive learning rate that fp32 can hold"),
    (["--lr=1e38"], "--lr=1e+38: use a positive learning rate that fp32 can hold"),
    (["--lr=-1"], "--lr=-1.0: use a positive learning rate"),
    (["--min-lr=-1"], "--min-lr=-1.0: use 0 or a positive learning rate"),
    (["--tokens=100"], "--tokens=100: less than one step"),
    (["--warmup=-1"], "--warmup=-1: must be 0 or more"),
    (["--out=/sys/nanohybrid-run"], "cannot create it"),
    (["--out=/sys/kernel"], "cannot write there"),
    (["--resume"], "holds no checkpoint to continue; drop --resume"),
])
def test_bad_values_and_places_are_one_line(tmp_path, arguments, message):
    arguments = arguments if any(a.startswith("--out") for a in arguments) else [*arguments, f"--out={tmp_path / 'new'}"]
    one_line_error(run_script("train_small.py", "--preset=llama3-tiny", *arguments), message)


def test_out_naming_a_file_is_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    one_line_error(run_script("train_small.py", f"--out={tmp_path / 'notes.txt'}"), "is a file, not a directory")
    assert (tmp_path / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("script", ["train_small.py", "sample.py"])
def test_a_student_file_that_does_not_import_is_one_line(tmp_path, script):
    broken = tmp_path / "broken.py"
    broken.write_text("def rglru_scan(x, log_a, reset, initial_state=None):\n    return x +\n")
    source = ["--preset=hawk-tiny"]
    one_line_error(run_script(script, *source, f"--kernels=rglru_scan={broken}:rglru_scan", f"--out={tmp_path / 'o'}")
                   if script == "train_small.py" else
                   run_script(script, *source, f"--kernels=rglru_scan={broken}:rglru_scan"), "broken.py line 2: SyntaxError: invalid syntax")


def test_resume_continues_with_the_runs_own_settings(tmp_path, corpus, monkeypatch):
    """Interrupted, then resumed with no flags but --resume and --out: the run's own settings (10 steps,
    its lr, warmup and data) come back from the checkpoint, so the curve is the uninterrupted one, bitwise."""
    common = ["--preset=llama3-tiny", "--max-steps=10", "--warmup=3", "--lr=2e-3", "--eval-interval=4",
              f"--data={corpus}", *TINY_RUN]
    train_small.main([*common, f"--out={tmp_path / 'straight'}"])
    crash_at_step([*common, f"--out={tmp_path / 'resumed'}"], 6, monkeypatch)
    train_small.main([f"--out={tmp_path / 'resumed'}", "--resume"])
    read = lambda run: (tmp_path / run / "metrics.jsonl").read_text()  # noqa: E731
    assert read("resumed") == read("straight")


def test_resume_with_a_longer_schedule_says_the_curve_changes(tmp_path, corpus, capsys):
    common = ["--preset=llama3-tiny", "--warmup=2", "--eval-interval=5", f"--data={corpus}", f"--out={tmp_path / 'run'}",
              *TINY_RUN]
    train_small.main([*common, "--max-steps=10"])
    assert "val=nan" not in capsys.readouterr().err  # the progress bar shows no validation loss before the first
    train_small.main([*common, "--max-steps=20", "--resume"])
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert notes == ["note: --max-steps=20 where the run was started with 10: from step 11 on, the curve is not that "
                     "of one uninterrupted run with these settings"]
    one_line_error(run_script("train_small.py", *common, "--resume", "--max-steps=20"), "is already at step 20 of 20")
    one_line_error(run_script("train_small.py", *common, "--resume", "--max-steps=30", "--d_model=96"),
                   "--d_model: a resumed run keeps its checkpoint's model")
