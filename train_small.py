"""Train a small hybrid language model on CPU in minutes (or a 100M one on a GPU).

    python train_small.py                                   hymba-small on the Python standard library
    python train_small.py --preset=llama3-small --max-steps=100
    python train_small.py --preset=hymba-tiny --d_model=96  any ModelConfig field: --field=value
    python train_small.py --resume --out=out/hymba-small    continue the latest checkpoint

Flags set the run (--max-steps, --lr, ...); any other --key=value must be a ModelConfig field and is
type-checked against it. An unknown key is an error, as in nanoGPT's "poor man's configurator": one
dataclass per concern, no config framework to learn.

Writes out/<run>/: checkpoints/step-NNNNNN/ (model.safetensors, config.json, state.pt with optimizer
and data position), `latest` naming the newest complete checkpoint, metrics.jsonl and loss.png.
"""

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from nanohybrid import ops
from nanohybrid.config import ModelConfig, get_config
from nanohybrid.data import get_batch, load_corpus
from nanohybrid.generate import generate
from nanohybrid.model import LanguageModel
from nanohybrid.tokenizer import load_tokenizer

NO_WEIGHT_DECAY = ("A_log", "meta_tokens.embeddings")  # decay pulls A towards 1 and meta tokens towards 0


@dataclass
class TrainConfig:
    preset: str = "hymba-small"
    kernels: str = ""  # op implementations, e.g. "attention=sdpa,rglru_scan=triton" (nanohybrid/ops.py)
    data: str = "embedded"
    tokenizer: str = "bytes"
    max_steps: int = 300
    tokens: int | None = None  # instead of max_steps: train on this many tokens
    batch_size: int = 8
    seq_len: int = 256
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr: float = 3e-4
    schedule: str = "cosine"  # "cosine", or "wsd" (warmup, stable, then linear decay over the last 20%)
    warmup: int = 30
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    dtype: str = "fp32"  # or "bf16" (autocast)
    compile: bool = False
    resume: bool = False
    out: str | None = None  # default out/<preset>
    seed: int = 1337
    eval_interval: int = 100
    eval_batches: int = 8
    sample_tokens: int = 200


def parse_value(text: str, annotation, name: str):
    """Convert `text` to the type a dataclass field is annotated with; a clear error otherwise."""
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    if text.lower() == "none" and type(None) in options:
        return None
    for option in options:
        if option is bool and text.lower() in ("true", "false", "1", "0"):
            return text.lower() in ("true", "1")
        if option in (int, float, str):
            try:
                return option(text)
            except ValueError:
                continue
    raise ValueError(f"--{name}={text}: expected {' or '.join(getattr(o, '__name__', str(o)) for o in options)}")


def parse_args(argv) -> tuple[TrainConfig, dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        if hints[field.name] is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default)
        else:
            parser.add_argument(flag, default=field.default,
                                type=lambda text, f=field: parse_value(text, hints[f.name], f.name))
    args, rest = parser.parse_known_args(argv)
    model_hints = typing.get_type_hints(ModelConfig)
    overrides = {}
    for item in rest:
        key, equals, value = item.removeprefix("--").partition("=")
        if not item.startswith("--") or not equals or key not in model_hints or key == "arch":
            raise ValueError(f"unknown option {item!r}: flags are {', '.join('--' + f.name.replace('_', '-') for f in dataclasses.fields(TrainConfig))}; "
                             f"model fields are --<field>=<value> for {', '.join(k for k in model_hints if k != 'arch')}")
        overrides[key] = parse_value(value, model_hints[key], key)
    train = TrainConfig(**vars(args))
    if train.schedule not in ("cosine", "wsd"):
        raise ValueError(f"--schedule={train.schedule}: choose cosine or wsd")
    if train.dtype not in ("fp32", "bf16"):
        raise ValueError(f"--dtype={train.dtype}: choose fp32 or bf16")
    return train, overrides


def learning_rate(train: TrainConfig, step: int, total: int) -> float:
    if step < train.warmup:
        return train.lr * (step + 1) / train.warmup
    if train.schedule == "wsd":  # Hymba's recipe: stable at the peak, linear decay over the final 20%
        decay_start = int(0.8 * total)
        if step < decay_start:
            return train.lr
        return train.lr + (train.min_lr - train.lr) * (step - decay_start) / max(1, total - decay_start)
    progress = (step - train.warmup) / max(1, total - train.warmup)
    return train.min_lr + 0.5 * (train.lr - train.min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


def make_optimizer(model: LanguageModel, train: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        (decay if parameter.dim() >= 2 and not name.endswith(NO_WEIGHT_DECAY) else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=train.lr, betas=(0.9, 0.95), fused=False)


def save_checkpoint(out: Path, model, optimizer, train: TrainConfig, step: int) -> None:
    """Write a complete checkpoint directory, then point `latest` at it; a crash never breaks the latest one."""
    name = f"step-{step:06d}"
    final, temporary = out / "checkpoints" / name, out / "checkpoints" / f"{name}.tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, temporary / "model.safetensors")
    (temporary / "config.json").write_text(json.dumps(
        {"model": dataclasses.asdict(model.config), "train": dataclasses.asdict(train), "step": step}, indent=2))
    torch.save({"optimizer": optimizer.state_dict(), "step": step}, temporary / "state.pt")
    shutil.rmtree(final, ignore_errors=True)
    temporary.rename(final)
    pointer = out / "latest.tmp"
    pointer.write_text(f"checkpoints/{name}\n")
    pointer.replace(out / "latest")
    for old in (out / "checkpoints").iterdir():
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)


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


@torch.no_grad()
def evaluate(model, tokens, train: TrainConfig) -> float:
    model.eval()
    losses = []
    for i in range(train.eval_batches):
        inputs, targets = get_batch(tokens, train.batch_size, train.seq_len, train.seed + 1, i)
        with torch.autocast("cpu", torch.bfloat16, enabled=train.dtype == "bf16"):
            losses.append(model(inputs, targets).loss.item())
    model.train()
    return sum(losses) / len(losses)


def plot_losses(metrics: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axis = plt.subplots(figsize=(6, 4))
    train_points = [(m["tokens"], m["loss"]) for m in metrics if "loss" in m]
    val_points = [(m["tokens"], m["val_loss"]) for m in metrics if "val_loss" in m]
    axis.plot(*zip(*train_points), alpha=0.5, label="train")
    if val_points:
        axis.plot(*zip(*val_points), "o-", label="validation")
    axis.set(xlabel="tokens", ylabel="loss (nats/token)", title=path.parent.name)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv=None) -> None:
    train, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    if train.kernels:
        ops.parse_selection(train.kernels)  # an unknown op, implementation or file is an error now, not mid-run
        os.environ["NANOHYBRID_KERNELS"] = train.kernels  # the same as setting it in the shell
    torch.manual_seed(train.seed)
    out = Path(train.out or f"out/{train.preset}")
    tokenizer = load_tokenizer(train.tokenizer)
    tokens_per_step = train.batch_size * train.seq_len * train.grad_accum
    total_steps = train.tokens // tokens_per_step if train.tokens else train.max_steps
    train_tokens = total_steps * tokens_per_step + train.seq_len + 1
    val_tokens = max(train_tokens // 50, train.seq_len + 2)  # validation: a 2% share, at least one window
    corpus = load_corpus(train.data, tokenizer, train_tokens, val_tokens, train.seed)

    start_step, metrics = 0, []
    if train.resume:
        meta, directory = load_checkpoint(out)
        config = ModelConfig(**meta["model"])
        model = LanguageModel(config)
        model.load_state_dict(load_file(directory / "model.safetensors"))
        optimizer = make_optimizer(model, train)
        state = torch.load(directory / "state.pt", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        start_step = state["step"]
        logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        metrics = [entry for entry in logged if entry["step"] <= start_step]
    else:
        config = get_config(train.preset, **overrides)
        model = LanguageModel(config)
        optimizer = make_optimizer(model, train)
    if config.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"the model's vocab_size={config.vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size}; "
                         f"pass --vocab_size={tokenizer.vocab_size}")
    step_model = torch.compile(model) if train.compile else model
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "metrics.jsonl").open("w")
    for entry in metrics:
        log.write(json.dumps(entry) + "\n")
    print(f"{train.preset}: {model.num_parameters() / 1e6:.2f}M parameters, {len(corpus['train']) / 1e6:.1f}M training tokens, "
          f"{total_steps} steps of {tokens_per_step} tokens -> {out}")

    progress = tqdm(range(start_step, total_steps), initial=start_step, total=total_steps, unit="step", dynamic_ncols=True)
    started = time.time()
    for step in progress:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(train, step, total_steps)
        loss_sum = 0.0
        for micro in range(train.grad_accum):
            inputs, targets = get_batch(corpus["train"], train.batch_size, train.seq_len, train.seed, step * train.grad_accum + micro)
            with torch.autocast("cpu", torch.bfloat16, enabled=train.dtype == "bf16"):
                loss = step_model(inputs, targets).loss / train.grad_accum
            loss.backward()
            loss_sum += loss.item()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip).item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        entry = {"step": step + 1, "tokens": (step + 1) * tokens_per_step, "loss": loss_sum, "grad_norm": grad_norm,
                 "lr": optimizer.param_groups[0]["lr"]}
        last = step + 1 == total_steps
        if (step + 1) % train.eval_interval == 0 or last:
            entry["val_loss"] = evaluate(model, corpus["val"], train)
            save_checkpoint(out, model, optimizer, train, step + 1)
        log.write(json.dumps(entry) + "\n")
        log.flush()
        metrics.append(entry)
        rate = (step + 1 - start_step) * tokens_per_step / (time.time() - started)
        last_val = next((m["val_loss"] for m in reversed(metrics) if "val_loss" in m), float("nan"))
        progress.set_postfix(loss=f"{loss_sum:.3f}", tok_s=f"{rate:.0f}", val=f"{last_val:.3f}")
    log.close()
    plot_losses(metrics, out / "loss.png")

    val_loss = evaluate(model, corpus["val"], train)
    print(f"validation loss {val_loss:.4f} nats/token, perplexity {math.exp(val_loss):.2f}")
    generator = torch.Generator().manual_seed(train.seed)
    sample = [t.item() for t in generate(model.eval(), [tokenizer.encode("def ")], train.sample_tokens, 0.8, 50, None, generator)]
    print("sample:\n" + tokenizer.decode(tokenizer.encode("def ") + sample))
    print(f"next: python sample.py --ckpt {out} --prompt 'def '")


if __name__ == "__main__":
    try:
        main()
    except ValueError as error:
        sys.exit(f"error: {error}")
