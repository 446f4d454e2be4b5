"""The settings of a training run (TrainConfig), read from the command line, and how --resume takes a
run's own settings back from its checkpoint. train_small.py is the loop built on these.

Flags set the run (--max-steps, --lr, ...); any other --key=value must be a ModelConfig field and is
type-checked against it. An unknown key is an error, as in nanoGPT's "poor man's configurator": one
dataclass per concern, no config framework to learn. Every value is checked when a TrainConfig is made,
so a value that cannot train is one clear line before anything runs or is written.
"""

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass

import torch

from ..config import ModelConfig
from .training import BETAS

SUFFIXES = {"K": 10**3, "M": 10**6, "B": 10**9}
LARGEST_FLOAT32 = torch.finfo(torch.float32).max
LARGEST_LR = LARGEST_FLOAT32 * (1 - BETAS[0])  # AdamW's first step, lr / (1 - β1), is an fp32 scalar
THIS_INVOCATION = ("resume", "overwrite", "out", "compare", "size", "kernels", "compile")  # never taken from a checkpoint
NOT_THE_CURVE = (*THIS_INVOCATION, "preset", "eval_interval", "eval_batches", "sample_tokens")  # change no loss


@dataclass
class TrainConfig:
    preset: str = "hymba-small"
    compare: bool = False  # train Hymba's apples-to-apples five (hymba, mamba2, mamba2-ffn, llama3, samba) instead
    size: str = "small"  # the preset size --compare uses
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
    resume: bool = False  # continue out/'s latest checkpoint, with its run's settings unless flags say otherwise
    overwrite: bool = False  # start again in an out/ that already holds a run, deleting that run
    out: str | None = None  # default out/<preset>
    seed: int = 1337
    eval_interval: int = 100
    eval_batches: int = 8
    sample_tokens: int = 200

    def __post_init__(self):
        """A value that cannot train is an error here, before anything runs or is written."""
        for name in ("max_steps", "batch_size", "seq_len", "grad_accum", "eval_interval", "eval_batches"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"--{flag(name)}={getattr(self, name)}: must be at least 1")
        for name in ("warmup", "weight_decay", "sample_tokens"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"--{flag(name)}={getattr(self, name)}: must be 0 or more")
        if self.tokens is not None and not self.tokens >= self.tokens_per_step:
            raise ValueError(f"--tokens={self.tokens}: less than one step of --batch-size x --seq-len x --grad-accum = "
                             f"{self.tokens_per_step} tokens")
        if not 0 < self.lr <= LARGEST_LR:
            raise ValueError(f"--lr={self.lr}: use a positive learning rate that fp32 can hold (typically 1e-4 to 1e-2)")
        if not 0 <= self.min_lr <= LARGEST_FLOAT32:
            raise ValueError(f"--min-lr={self.min_lr}: use 0 or a positive learning rate")
        if not self.grad_clip > 0:
            raise ValueError(f"--grad-clip={self.grad_clip}: must be positive (inf turns clipping off)")
        if self.schedule not in ("cosine", "wsd"):
            raise ValueError(f"--schedule={self.schedule}: choose cosine or wsd")
        if self.dtype not in ("fp32", "bf16"):
            raise ValueError(f"--dtype={self.dtype}: choose fp32 or bf16")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len * self.grad_accum

    @property
    def total_steps(self) -> int:
        return self.tokens // self.tokens_per_step if self.tokens else self.max_steps


def flag(name: str) -> str:
    return name.replace("_", "-")


def parse_value(text: str, annotation, name: str):
    """Convert `text` to the type a dataclass field is annotated with; a clear error otherwise."""
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    if text.lower() == "none" and type(None) in options:
        return None
    for option in options:
        if option is bool and text.lower() in ("true", "false", "1", "0"):
            return text.lower() in ("true", "1")
        if option is int and text[-1:].upper() in SUFFIXES and text[:-1].replace(".", "", 1).isdigit():
            return int(float(text[:-1]) * SUFFIXES[text[-1].upper()])  # --tokens=10B
        if option in (int, float, str):
            try:
                return option(text)
            except ValueError:
                continue
    raise ValueError(f"--{name}={text}: expected {' or '.join(getattr(o, '__name__', str(o)) for o in options)}")


def parse_args(argv, description: str = "") -> tuple[TrainConfig, dict, set[str]]:
    """(the run's settings, ModelConfig overrides, the names of the settings the command line gave)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        option = "--" + flag(field.name)
        if hints[field.name] is bool:
            parser.add_argument(option, action=argparse.BooleanOptionalAction, default=field.default)
        else:
            parser.add_argument(option, default=field.default,
                                type=lambda text, f=field: parse_value(text, hints[f.name], f.name))
    args, rest = parser.parse_known_args(argv)
    model_hints = typing.get_type_hints(ModelConfig)
    overrides = {}
    for item in rest:
        key, equals, value = item.removeprefix("--").partition("=")
        if not item.startswith("--") or not equals or key not in model_hints or key == "arch":
            raise ValueError(f"unknown option {item!r}: flags are {', '.join('--' + flag(f.name) for f in dataclasses.fields(TrainConfig))}; "
                             f"model fields are --<field>=<value> for {', '.join(k for k in model_hints if k != 'arch')}")
        overrides[key] = parse_value(value, model_hints[key], key)
    given = {field.name for field in dataclasses.fields(TrainConfig)
             if any(item.partition("=")[0] in (f"--{flag(field.name)}", f"--no-{flag(field.name)}") for item in argv)}
    return TrainConfig(**vars(args)), overrides, given


def resumed_settings(run: TrainConfig, given: set[str] | None, saved: dict, step: int) -> tuple[TrainConfig, list[str]]:
    """--resume continues with the settings the run was started with; a flag given now overrides its
    setting, with a note when that makes the curve differ from one uninterrupted run (a different
    schedule, batch or learning rate from step `step` + 1 on). given=None: every setting is as given.
    -> (the settings, the notes)."""
    if given is None:
        return run, []
    kept = {name: value for name, value in saved.items()
            if name in vars(run) and name not in given and name not in THIS_INVOCATION}
    if "max_steps" in given and "tokens" not in given:
        kept["tokens"] = None  # --max-steps now counts the run, not the saved --tokens
    run = dataclasses.replace(run, **kept)
    changed = [name for name in sorted(given - set(NOT_THE_CURVE)) if name in saved and saved[name] != getattr(run, name)]
    return run, [f"note: --{flag(name)}={getattr(run, name)} where the run was started with {saved[name]}: from step "
                 f"{step + 1} on, the curve is not that of one uninterrupted run with these settings" for name in changed]
