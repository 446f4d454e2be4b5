"""What a training run needs besides the model: the optimizer, the learning-rate schedule, evaluation,
checkpoints that survive a crash, and the loss plot. train_small.py is the script built from these.

A checkpoint is a directory out/<run>/checkpoints/step-NNNNNN/ with model.safetensors (the weights),
config.json (model and run settings) and state.pt (optimizer state and step). It is written under a
temporary name and renamed when complete; then `out/<run>/latest`, a one-line file naming it, is
replaced atomically. A crash at any moment leaves `latest` pointing at a complete checkpoint. Only a
good model is saved: finite weights and a finite validation loss.

metrics.jsonl holds one JSON line per step, appended as the step ends (MetricsLog).
"""

import dataclasses
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..config import ModelConfig
from ..model import LanguageModel
from .data import get_batch

BETAS = (0.9, 0.95)
NO_WEIGHT_DECAY = ("A_log", "meta_tokens.embeddings")  # decay would pull A towards -1 and meta tokens to 0


def learning_rate(step: int, total: int, peak: float, minimum: float, warmup: int, schedule: str) -> float:
    """Linear warmup to `peak`, then cosine down to `minimum`, or WSD: stable at `peak`, then a linear
    decay to `minimum` over the last 20% of steps (Hymba's recipe, arXiv 2411.13676 §2.5 and App. E;
    docs/conventions.md, "Training recipes")."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "wsd":
        decay_start = int(0.8 * total)
        if step < decay_start:
            return peak
        return peak + (minimum - peak) * (step - decay_start) / max(1, total - decay_start)
    progress = min((step - warmup) / max(1, total - warmup), 1.0)
    return minimum + 0.5 * (peak - minimum) * (1 + math.cos(math.pi * progress))


def make_optimizer(model: LanguageModel, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with β = (0.9, 0.95); weight decay on matrices only (not norms, biases, A_log, D, meta tokens)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        (decay if parameter.dim() >= 2 and not name.endswith(NO_WEIGHT_DECAY) else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=BETAS)


def run_directory(out: Path, resume: bool, overwrite: bool) -> None:
    """Check, before anything is written, that `out` can take this run; create it. A new run never
    replaces an earlier one unless asked (--overwrite), and nothing of the earlier one is touched here."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out={out} is a file, not a directory: name a directory for the run")
    earlier = (out / "latest").exists() or (out / "metrics.jsonl").exists()
    if resume and not (out / "latest").exists():
        raise ValueError(f"--resume: {out} holds no checkpoint to continue; drop --resume to start a run there")
    if earlier and not resume and not overwrite:
        raise ValueError(f"{out} already holds a run: pass --resume to continue it, --overwrite to start it again "
                         "(deleting it), or another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"--out={out}: cannot create it ({error.strerror}); choose a writable directory") from None
    try:
        tempfile.TemporaryFile(dir=out).close()  # can files be made there? (permissions, a read-only disk)
    except OSError as error:
        raise ValueError(f"--out={out}: cannot write there ({error.strerror}); choose a writable directory") from None


def remove_run(out: Path) -> None:
    """--overwrite: the earlier run's checkpoints, pointer, metrics and plot."""
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    for name in ("latest", "metrics.jsonl", "loss.png"):
        (out / name).unlink(missing_ok=True)


def nonfinite_parameters(model: torch.nn.Module) -> list[str]:
    return [name for name, parameter in model.named_parameters() if not torch.isfinite(parameter).all()]


def save_checkpoint(out: Path, model: LanguageModel, optimizer, settings: dict, step: int) -> Path:
    """Write checkpoint `step`, point `latest` at it, then delete the older ones. Returns its directory."""
    name = f"step-{step:06d}"
    final, temporary = out / "checkpoints" / name, out / "checkpoints" / f"{name}.tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, temporary / "model.safetensors")
    config = {"model": dataclasses.asdict(model.config), "train": settings, "step": step}
    (temporary / "config.json").write_text(json.dumps(config, indent=2))
    torch.save({"optimizer": optimizer.state_dict(), "step": step}, temporary / "state.pt")
    shutil.rmtree(final, ignore_errors=True)
    temporary.rename(final)
    pointer = out / "latest.tmp"
    pointer.write_text(f"checkpoints/{name}\n")
    pointer.replace(out / "latest")
    for old in (out / "checkpoints").iterdir():
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path) -> tuple[dict, Path]:
    """(config.json contents, checkpoint directory) of a run directory's latest checkpoint, or of a checkpoint directory."""
    directory = path / (path / "latest").read_text().strip() if (path / "latest").exists() else path
    try:
        meta = json.loads((directory / "config.json").read_text())
        ModelConfig(**meta["model"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a readable checkpoint ({type(error).__name__}: {error}); "
                         "pass a run directory written by train_small.py") from None
    return meta, directory


def load_model(path: Path) -> tuple[LanguageModel, dict]:
    """The model saved in a run (or checkpoint) directory, and its config.json."""
    meta, directory = load_checkpoint(path)
    model = LanguageModel(ModelConfig(**meta["model"]))
    try:
        model.load_state_dict(load_file(directory / "model.safetensors"))
    except Exception as error:
        raise ValueError(f"cannot load the weights in {directory} ({type(error).__name__}); "
                         "the checkpoint is damaged: retrain or pick another") from None
    if broken := nonfinite_parameters(model):
        raise ValueError(f"the weights in {directory} are not finite ({broken[0]} holds NaN or inf): the run diverged "
                         "before this checkpoint; use an earlier one or retrain with a lower --lr")
    return model, meta


def read_metrics(path: Path) -> list[dict]:
    """The entries of a metrics.jsonl; a last line cut short by a kill mid-write is left out."""
    lines = path.read_text().splitlines() if path.exists() else []
    entries = []
    for number, line in enumerate(lines):
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines) - 1:
                raise ValueError(f"{path} line {number + 1} is not JSON: the file is damaged") from None
    return entries


class MetricsLog:
    """metrics.jsonl, appended one line per step and flushed at once, so that a kill loses at most the
    line being written; synced to disk with each checkpoint. A run resumed from step s keeps the lines of
    steps 1..s (the later ones are trained again): they are rewritten under a temporary name and renamed,
    so no moment exists at which the file holds less."""

    def __init__(self, path: Path, keep_through: int = 0):
        self.entries = [entry for entry in read_metrics(path) if entry["step"] <= keep_through]
        temporary = path.with_name(path.name + ".tmp")
        with temporary.open("w") as file:
            file.writelines(json.dumps(entry) + "\n" for entry in self.entries)
            file.flush()
            os.fsync(file.fileno())
        temporary.replace(path)
        self.file = path.open("a")

    def append(self, entry: dict) -> None:
        self.file.write(json.dumps(entry) + "\n")
        self.file.flush()
        self.entries.append(entry)

    def sync(self) -> None:
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


@torch.no_grad()
def validation_loss(model, tokens, batch_size: int, seq_len: int, batches: int, seed: int, bf16: bool = False) -> float:
    """Mean loss over `batches` fixed windows of `tokens` (the same windows every time)."""
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    losses = []
    for i in range(batches):
        inputs, targets = get_batch(tokens, batch_size, seq_len, seed, i)
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            losses.append(model(inputs.to(device), targets.to(device)).loss.item())
    model.train(was_training)
    return sum(losses) / len(losses)


def plot_losses(metrics: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot([m["tokens"] for m in metrics], [m["loss"] for m in metrics], alpha=0.5, label="train")
    validation = [(m["tokens"], m["val_loss"]) for m in metrics if "val_loss" in m]
    if validation:
        axis.plot(*zip(*validation), "o-", label="validation")
    axis.set(xlabel="tokens", ylabel="loss (nats/token)", title=path.parent.name)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
