"""Train a small hybrid language model on CPU in minutes (or a 100M one on a GPU).

    python train_small.py                                   hymba-small on the Python standard library
    python train_small.py --preset=llama3-small --max-steps=100
    python train_small.py --preset=hymba-tiny --d_model=96  any ModelConfig field: --field=value
    python train_small.py --resume --out=out/hymba-small    continue the latest checkpoint

Flags set the run (--max-steps, --lr, ...; nanohybrid/tools/settings.py lists them with their defaults);
any other --key=value must be a ModelConfig field and is type-checked against it.

Writes out/<run>/: checkpoints/step-NNNNNN/ (model.safetensors, config.json, state.pt with optimizer
and data position), `latest` naming the newest complete checkpoint, metrics.jsonl and loss.png.
"""

import contextlib
import dataclasses
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from nanohybrid import ops
from nanohybrid.generate import generate
from nanohybrid.model import LanguageModel
from nanohybrid.presets import get_config
from nanohybrid.tools.compare import RECALL_ALSO
from nanohybrid.tools.compare import TABLE_3_ARCHITECTURES as COMPARED
from nanohybrid.tools.compare import train_mqar, write_report
from nanohybrid.tools.data import get_batch, load_corpus
from nanohybrid.tools.settings import TrainConfig, parse_args, resumed_settings
from nanohybrid.tools.tokenizer import load_tokenizer
from nanohybrid.tools.training import (MetricsLog, learning_rate, load_checkpoint, load_model, make_optimizer,
                                       nonfinite_parameters, plot_losses, remove_run, run_directory, save_checkpoint,
                                       validation_loss)


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


def train(run: TrainConfig, overrides: dict, rank: int = 0, world: int = 1, device=torch.device("cpu"),
          given: set[str] | None = None) -> dict:
    """One training run; returns its summary. With world > 1 the processes share each step's micro-batches.
    `given`: the settings the command line named (the others come from the checkpoint on --resume)."""
    out, main_process = Path(run.out or f"out/{run.preset}"), rank == 0
    if main_process:
        run_directory(out, run.resume, run.overwrite)
    start_step, notes = 0, []
    if run.resume:
        if overrides:
            raise ValueError(f"--{next(iter(overrides))}: a resumed run keeps its checkpoint's model; drop the model "
                             "fields, or start a new run with another --out")
        model, meta = load_model(out)
        state = torch.load(load_checkpoint(out)[1] / "state.pt", weights_only=True)
        start_step = state["step"]
        run, notes = resumed_settings(run, given, meta["train"], start_step)
        if start_step >= run.total_steps:
            raise ValueError(f"{out} is already at step {start_step} of {run.total_steps}; pass --max-steps (or "
                             f"--tokens) beyond it to train further")
    else:
        torch.manual_seed(run.seed)  # the initial weights
        model = LanguageModel(get_config(run.preset, **overrides))
    if run.grad_accum % world:
        raise ValueError(f"--grad-accum={run.grad_accum} must be a multiple of the {world} processes")
    tokenizer = load_tokenizer(run.tokenizer)
    tokens_per_step, total_steps = run.tokens_per_step, run.total_steps
    train_tokens = total_steps * tokens_per_step + run.seq_len + 1
    corpus = load_corpus(run.data, tokenizer, train_tokens, max(train_tokens // 50, run.seq_len + 2), run.seed)
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
    if main_process:  # everything checked: from here on the run directory changes
        if run.overwrite and not run.resume:
            remove_run(out)
        log = MetricsLog(out / "metrics.jsonl", keep_through=start_step)
        for note in notes:
            print(note, file=sys.stderr)
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
        step_loss = loss_sum.item()
        if not (math.isfinite(step_loss) and math.isfinite(grad_norm)):
            what = f"the loss became {step_loss}" if not math.isfinite(step_loss) else \
                f"the gradient norm became {grad_norm} (loss {step_loss:.4g})"
            stop_diverged(out, f"{what} at step {step + 1}, so training stopped before that update")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if not main_process:
            continue
        entry = {"step": step + 1, "tokens": (step + 1) * tokens_per_step, "loss": step_loss,
                 "grad_norm": grad_norm, "lr": optimizer.param_groups[0]["lr"]}
        if (step + 1) % run.eval_interval == 0 or step + 1 == total_steps:
            entry["val_loss"] = validation_loss(model, corpus["val"], run.batch_size, run.seq_len, run.eval_batches, run.seed + 1, bf16)
            broken = nonfinite_parameters(model)
            if broken or not math.isfinite(entry["val_loss"]):
                stop_diverged(out, f"after the update of step {step + 1} the validation loss is {entry['val_loss']}"
                              + (f" and {broken[0]} holds NaN or inf" if broken else "") + ", so it was not saved")
        log.append(entry)
        if "val_loss" in entry:
            log.sync()  # the metrics up to this checkpoint are on disk before `latest` names it
            save_checkpoint(out, model, optimizer, dataclasses.asdict(run), step + 1)
        rate = (step + 1 - start_step) * tokens_per_step / (time.time() - started)
        shown = {"loss": f"{entry['loss']:.3f}", "tok_s": f"{rate:.0f}"}
        last_val = next((m["val_loss"] for m in reversed(log.entries) if "val_loss" in m), None)
        if last_val is not None:  # no column until the first evaluation
            shown["val"] = f"{last_val:.3f}"
        progress.set_postfix(shown)
    if not main_process:
        return {}
    log.close()
    plot_losses(log.entries, out / "loss.png")
    val_loss = log.entries[-1]["val_loss"]  # the last step is always evaluated
    print(f"validation loss {val_loss:.4f} nats/token, perplexity {math.exp(val_loss):.2f}")
    return {"preset": run.preset, "out": str(out), "val_loss": val_loss, "parameters": model.num_parameters(),
            "tokens_per_second": (total_steps - start_step) * tokens_per_step / (time.time() - started),
            "model": model, "tokenizer": tokenizer}


def stop_diverged(out: Path, what: str) -> None:
    latest = (out / "latest").read_text().strip() if (out / "latest").exists() else None
    good = f"the last good checkpoint is {out}/{latest}: lower --lr and --resume" if latest else \
        "no good checkpoint was written yet: lower --lr and start again with --overwrite"
    raise ValueError(f"{what}; {good}")


def compare(run: TrainConfig, overrides: dict, rank: int, world: int, device, given: set[str] | None = None) -> None:
    """Hymba's Table 3 at our scale: the five architectures, one recipe, equal size; then recall (MQAR), for
    them and for RECALL_ALSO beside them."""
    root, results, recall_only = Path(run.out or f"out/compare-{run.size}"), [], []
    for arch in COMPARED if rank == 0 else ():  # every run directory is checked before the first run starts
        run_directory(root / f"{arch}-{run.size}", run.resume, run.overwrite)
    for arch in COMPARED:
        preset = f"{arch}-{run.size}"
        summary = train(dataclasses.replace(run, preset=preset, out=str(root / preset)), overrides, rank, world, device, given)
        if rank == 0:
            print(f"{preset}: MQAR ...", flush=True)
            results.append({"arch": arch, **summary, "mqar": train_mqar(arch, run.seed, device)})
    for arch in RECALL_ALSO if rank == 0 else ():
        print(f"{arch}: MQAR ...", flush=True)
        recall_only.append({"arch": arch, "mqar": train_mqar(arch, run.seed, device)})
    if rank == 0:
        print(write_report(results, root, recall_only))
        print(f"wrote {root}/results.md, results.csv and comparison.png")


def main(argv=None) -> None:
    run, overrides, given = parse_args(sys.argv[1:] if argv is None else argv, __doc__)
    if run.kernels:
        ops.parse_selection(run.kernels)  # an unknown op, implementation or file is an error now, not mid-run
        os.environ["NANOHYBRID_KERNELS"] = run.kernels  # the same as setting it in the shell
    rank, world, device = setup_distributed()
    try:
        if run.compare:
            return compare(run, overrides, rank, world, device, given)
        summary = train(run, overrides, rank, world, device, given)
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
    except (ValueError, OSError) as error:  # bad input, or a disk that cannot take the run: one line, exit 1
        sys.exit(f"error: {error}")
