"""sample.py end to end: a preset with random weights, a checkpoint written by train_small.py's saver,
batched prompts, and clear errors for a missing or damaged checkpoint."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sample
from nanohybrid.model import LanguageModel
from nanohybrid.presets import get_config
from nanohybrid.tools.training import make_optimizer, save_checkpoint


def run(capsys, *argv):
    sample.main(list(argv))
    return capsys.readouterr().out


def test_preset_streams_and_ends_with_speed_and_cache_bytes(capsys):
    out = run(capsys, "--preset", "hymba-tiny", "--prompt", "def f", "--max-new-tokens", "7", "--temperature", "0")
    assert out.startswith("def f")
    last = out.strip().splitlines()[-1]
    assert "7 tokens" in last and "tokens/s" in last
    for kind in ("kv-global", "kv-window", "conv", "ssm"):
        assert kind in last


def test_batched_prompts_print_each_completion(capsys):
    out = run(capsys, "--preset", "mamba-tiny", "--prompt", "a", "--prompt", "longer prompt", "--max-new-tokens", "4",
              "--prefill-chunk", "3")
    assert "--- prompt 0\na" in out and "--- prompt 1\nlonger prompt" in out and "8 tokens" in out


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = LanguageModel(get_config("llama3-tiny"))
    save_checkpoint(tmp_path, model, make_optimizer(model, 1e-3, 0.1), {"tokenizer": "bytes"}, step=3)
    return tmp_path, model


def test_checkpoint_generates_what_the_saved_model_generates(checkpoint, capsys):
    path, model = checkpoint
    out = run(capsys, "--ckpt", str(path), "--prompt", "x = ", "--max-new-tokens", "6", "--temperature", "0")
    logits = model(torch.tensor([list(b"x = ")])).logits[:, -1]
    first = bytes([logits.argmax().item()]).decode("utf-8", errors="replace")
    assert out.startswith("x = " + first.rstrip("\ufffd"))


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="is not a readable checkpoint"):
        sample.main(["--ckpt", str(tmp_path / "nothing")])


def test_damaged_weights_are_a_clear_error(checkpoint):
    path, _ = checkpoint
    weights = next(path.glob("checkpoints/*/model.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="the checkpoint is damaged"):
        sample.main(["--ckpt", str(path)])


@pytest.mark.parametrize("arguments, message", [
    (["--preset", "hymba-huge"], "unknown preset 'hymba-huge'; valid presets: hymba-tiny"),
    (["--preset", "llama3-tiny", "--temperature", "-1"], "temperature=-1.0"),
    (["--preset", "llama3-tiny", "--top-k", "0"], "top_k=0"),
    (["--preset", "llama3-tiny", "--top-p", "1.5"], "top_p=1.5"),
    (["--preset", "llama3-tiny", "--prompt", "x" * 500, "--max-new-tokens", "20"], "500 tokens plus 20 new tokens"),
    (["--ckpt", "no/such/run"], "is not a readable checkpoint"),
])
def test_bad_input_exits_non_zero_with_one_line(arguments, message):
    repo = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "sample.py", *arguments], cwd=repo, capture_output=True, text=True)
    assert result.returncode != 0
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
