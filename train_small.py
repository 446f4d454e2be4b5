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
import contextlib
import dataclasses
import json
import math
import os
import sys
import time
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from nanohybrid import ops
from nanohybrid.config import ModelConfig, get_config
from nanohybrid.generate import generate
from nanohybrid.model import LanguageModel
from nanohybrid.tools.compare import TABLE_3_ARCHITECTURES as COMPARED
from nanohybrid.tools.compare import train_mqar, write_report
from nanohybrid.tools.data import get_batch, load_corpus
from nanohybrid.tools.tokenizer import load_tokenizer
from nanohybrid.tools.training import (learning_rate, load_checkpoint, load_model, make_optimizer, plot_losses,
                                       save_checkpoint, validation_loss)

SUFFIXES = {"K": 10**3, "M": 10**6, "B": 10**9}


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
        if option is int and text[-1:].upper() in SUFFIXES and text[:-1].replace(".", "", 1).isdigit():
            return int(float(text[:-1]) * SUFFIXES[text[-1].upper()])  # --tokens=10B
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


def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun one process per device: NCCL on GPUs, gloo on CPUs."""
    if "WORLD_SIZE" not in os.environ:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, local_rank = dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return rank, dist.get_world_size(), device


def train(run: TrainConfig, overrides: dict, rank: int = 0, world: int = 1, device=torch.device("cpu")) -> dict:
    """One training run; returns its summary. With world > 1 the processes share each step's micro-batches."""
    torch.manual_seed(run.seed)
    out, main_process = Path(run.out or f"out/{run.preset}"), rank == 0
    if run.grad_accum % world:
        raise ValueError(f"--grad-accum={run.grad_accum} must be a multiple of the {world} processes")
    tokenizer = load_tokenizer(run.tokenizer)
    tokens_per_step = run.batch_size * run.seq_len * run.grad_accum
    total_steps = run.tokens // tokens_per_step if run.tokens else run.max_steps
    train_tokens = total_steps * tokens_per_step + run.seq_len + 1
    corpus = load_corpus(run.data, tokenizer, train_tokens, max(train_tokens // 50, run.seq_len + 2), run.seed)

    start_step, metrics = 0, []
    if run.resume:
        model, meta = load_model(out)
        state = torch.load(load_checkpoint(out)[1] / "state.pt", weights_only=True)
        start_step = state["step"]
        logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        metrics = [entry for entry in logged if entry["step"] <= start_step]
    else:
        model = LanguageModel(get_config(run.preset, **overrides))
    if model.config.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"the model's vocab_size={model.config.vocab_size} is smaller than the tokenizer's "
                         f"{tokenizer.vocab_size}; pass --vocab_size={tokenizer.vocab_size}")
    if run.seq_len > model.config.max_seq_len:
        raise ValueError(f"--seq-len={run.seq_len} exceeds the model's max_seq_len={model.config.max_seq_len}; "
                         f"lower it or pass --max_seq_len={run.seq_len}")
    model.to(device)
    optimizer = make_optimizer(model, run.lr, run.weight_decay)
    if run.resume:
        optimizer.load_state_dict(state["optimizer"])
    step_model = torch.compile(model) if run.compile else model
    if world > 1:  # experts that get no token in a micro-batch leave parameters unused
        moe = any(spec.ffn == "moe" for spec in model.config.layers)
        step_model = DistributedDataParallel(step_model, find_unused_parameters=moe)
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
        log = (out / "metrics.jsonl").open("w")
        log.writelines(json.dumps(entry) + "\n" for entry in metrics)
        print(f"{run.preset}: {model.num_parameters() / 1e6:.2f}M parameters, {len(corpus['train']) / 1e6:.1f}M training "
              f"tokens, {total_steps} steps of {tokens_per_step} tokens on {world} x {device.type} -> {out}")

    bf16 = run.dtype == "bf16"
    local_micro_batches = range(rank, run.grad_accum, world)  # this process's share of each step
    progress = tqdm(range(start_step, total_steps), initial=start_step, total=total_steps, unit="step",
                    dynamic_ncols=True, disable=not main_process)
    started = time.time()
    for step in progress:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, total_steps, run.lr, run.min_lr, run.warmup, run.schedule)
        loss_sum = torch.zeros((), device=device)
        for i, micro in enumerate(local_micro_batches):
            inputs, targets = get_batch(corpus["train"], run.batch_size, run.seq_len, run.seed, step * run.grad_accum + micro)
            last_micro_batch = i == len(local_micro_batches) - 1
            with contextlib.nullcontext() if world == 1 or last_micro_batch else step_model.no_sync():
                with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                    loss = step_model(inputs.to(device), targets.to(device)).loss / len(local_micro_batches)
                loss.backward()  # DDP averages the gradients over the processes
            loss_sum += loss.detach() / world
        if world > 1:
            dist.all_reduce(loss_sum)  # each process's share of the step's mean loss, summed
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), run.grad_clip).item()
        if not (math.isfinite(loss_sum.item()) and math.isfinite(grad_norm)):
            latest = (out / "latest").read_text().strip() if (out / "latest").exists() else "none yet"
            raise ValueError(f"the loss became {loss_sum.item()} at step {step + 1}, so training stopped before that "
                             f"update; the last good checkpoint is {out}/{latest}: lower --lr and --resume")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if not main_process:
            continue
        entry = {"step": step + 1, "tokens": (step + 1) * tokens_per_step, "loss": loss_sum.item(),
                 "grad_norm": grad_norm, "lr": optimizer.param_groups[0]["lr"]}
        if (step + 1) % run.eval_interval == 0 or step + 1 == total_steps:
            entry["val_loss"] = validation_loss(model, corpus["val"], run.batch_size, run.seq_len, run.eval_batches, run.seed + 1, bf16)
            save_checkpoint(out, model, optimizer, dataclasses.asdict(run), step + 1)
        log.write(json.dumps(entry) + "\n")
        log.flush()
        metrics.append(entry)
        rate = (step + 1 - start_step) * tokens_per_step / (time.time() - started)
        last_val = next((m["val_loss"] for m in reversed(metrics) if "val_loss" in m), float("nan"))
        progress.set_postfix(loss=f"{entry['loss']:.3f}", tok_s=f"{rate:.0f}", val=f"{last_val:.3f}")
    if not main_process:
        return {}
    log.close()
    plot_losses(metrics, out / "loss.png")
    val_loss = validation_loss(model, corpus["val"], run.batch_size, run.seq_len, run.eval_batches, run.seed + 1, bf16)
    print(f"validation loss {val_loss:.4f} nats/token, perplexity {math.exp(val_loss):.2f}")
    return {"preset": run.preset, "out": str(out), "val_loss": val_loss, "parameters": model.num_parameters(),
            "tokens_per_second": (total_steps - start_step) * tokens_per_step / (time.time() - started),
            "model": model, "tokenizer": tokenizer}


def compare(run: TrainConfig, overrides: dict, rank: int, world: int, device) -> None:
    """Hymba's Table 3 at our scale: the five architectures, one recipe, equal size; then recall (MQAR)."""
    root, results = Path(run.out or f"out/compare-{run.size}"), []
    for arch in COMPARED:
        preset = f"{arch}-{run.size}"
        summary = train(dataclasses.replace(run, preset=preset, out=str(root / preset)), overrides, rank, world, device)
        if rank == 0:
            print(f"{preset}: MQAR ...", flush=True)
            results.append({"arch": arch, **summary, "mqar": train_mqar(arch, run.seed, device)})
    if rank == 0:
        print(write_report(results, root))
        print(f"wrote {root}/results.md, results.csv and comparison.png")


def main(argv=None) -> None:
    run, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    if run.kernels:
        ops.parse_selection(run.kernels)  # an unknown op, implementation or file is an error now, not mid-run
        os.environ["NANOHYBRID_KERNELS"] = run.kernels  # the same as setting it in the shell
    rank, world, device = setup_distributed()
    try:
        if run.compare:
            return compare(run, overrides, rank, world, device)
        summary = train(run, overrides, rank, world, device)
    finally:
        if world > 1:
            dist.destroy_process_group()
    if rank == 0:
        model, tokenizer, out = summary["model"].eval(), summary["tokenizer"], summary["out"]
        prompt = tokenizer.encode("def ")
        generator = torch.Generator(device=device).manual_seed(run.seed)
        sample = [t.item() for t in generate(model, [prompt], run.sample_tokens, 0.8, 50, None, generator)]
        print("sample:\n" + tokenizer.decode(prompt + sample))
        print(f"next: python sample.py --ckpt {out} --prompt 'def '")


if __name__ == "__main__":
    try:
        main()
    except ValueError as error:
        sys.exit(f"error: {error}")
