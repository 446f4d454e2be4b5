"""Peak memory of one long prompt against its length, for every `tiny` preset: it must grow linearly.

    python -m bench.prefill_memory --quick      prompts of 1K, 2K and 4K tokens (3-4 minutes on 2 cores)
    python -m bench.prefill_memory              prompts of 1K ... 16K tokens (see bench/README.md)

For each `tiny` preset, prompt length L and call (batch 1, fp32, random weights and tokens, no gradients,
the default `auto` kernels: on a CPU the sdpa rung for attention), a fresh Python process builds the model,
runs a 16-token warm-up call, resets the peak and makes one call:
  forward   model(tokens): the full forward pass, no cache (what scoring or evaluating a text runs)
  prefill   nanohybrid.generate.prefill: the prompt into a fresh InferenceCache (what generation starts with)
memory    peak resident memory during that call above the resident memory before it (bench/common.py: on
          Linux the kernel's high-water mark, reset through /proc/self/clear_refs; on a GPU
          torch.cuda.max_memory_allocated); it includes the activations, the logits (L × vocab) and the cache.

Growth exponent: least squares of log(memory) on log(L) over the upper half of the lengths (at least 3
points): 1 is linear, 2 quadratic. A call that holds an (L × L) score or mask matrix shows 2.
"""

import argparse
import json
import subprocess
import sys

import torch

from bench.common import arguments, exponent, figure, log_log, peak, reset_peak, save_figure, setup, table, write_report
from nanohybrid.config import ARCHITECTURES
from nanohybrid.generate import prefill
from nanohybrid.model import LanguageModel
from nanohybrid.presets import get_config

CALLS = ("forward", "prefill")
WARMUP_TOKENS = 16


def worker(args) -> None:
    """One (preset, length, call) point; prints one JSON line."""
    device = setup(args.threads, args.device)
    config = get_config(args.preset, max_seq_len=args.length)
    model = LanguageModel(config).to(device).eval()
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, config.vocab_size, (1, args.length), generator=generator).to(device)
    run = (lambda tokens: model(tokens)) if args.call == "forward" else (lambda tokens: prefill(model, tokens))
    with torch.no_grad():
        run(prompt[:, :WARMUP_TOKENS])  # first-call allocations (thread pools, the meta-token prefix) not counted
        baseline = reset_peak(device)
        run(prompt)
    print(json.dumps({"peak_mb": peak(device) - baseline}))


def measure_point(preset: str, length: int, call: str, args) -> float:
    command = [sys.executable, "-m", "bench.prefill_memory", "--worker", preset, str(length), call,
               "--threads", str(args.threads), "--device", args.device]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"{preset} {call} at {length} tokens failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]


def report(results: dict, presets: list[str], lengths: list[int], args) -> None:
    headers = ["preset", "call", *(f"{length:,}" for length in lengths), "exponent"]
    upper = max(3, len(lengths) // 2 + 1)
    rows = [[f"`{preset}`", call, *(f"{results[preset, length, call]:,.1f}" for length in lengths),
             f"{exponent(lengths[-upper:], [results[preset, length, call] for length in lengths[-upper:]]):.2f}"]
            for preset in presets for call in CALLS]
    settings = (f"Batch 1, fp32, `tiny` presets with random weights, no gradients, the `auto` kernels on "
                f"{args.device}; one process per point. Peak MB above the resident memory before the call, against "
                f"the prompt length in tokens; exponent: log-log slope over the longest {upper} lengths.")
    name = "prefill_memory" + ("_gpu" if args.device == "cuda" else "") + ("_quick" if args.quick else "")
    write_report(name, "Peak memory of a long prompt", settings, [table(headers, rows)])
    fig, axes = figure(1, len(CALLS))
    for axis, call in zip(axes, CALLS):
        for preset in presets:
            axis.plot(lengths, [max(results[preset, length, call], 1e-3) for length in lengths], marker="o",
                      markersize=3, label=preset)
        log_log(axis, lengths, "prompt length (tokens)", "peak MB above the model", call)
    axes[0].legend(fontsize=7, ncol=2)
    save_figure(fig, name)


def main() -> None:
    parser = arguments(__doc__, "prompts of 1K, 2K and 4K tokens")
    parser.add_argument("--arch", nargs="*", default=list(ARCHITECTURES))
    parser.add_argument("--worker", nargs=3, metavar=("PRESET", "LENGTH", "CALL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.preset, args.length, args.call = args.worker[0], int(args.worker[1]), args.worker[2]
        return worker(args)
    setup(args.threads, args.device)
    presets = [f"{arch}-tiny" for arch in args.arch]
    lengths = [1024, 2048, 4096] if args.quick else [2**k for k in range(10, 15)]
    results = {}
    for preset in presets:
        for length in lengths:
            for call in CALLS:
                results[preset, length, call] = measure_point(preset, length, call, args)
                print(f"{preset} {call} {length}: {results[preset, length, call]:.1f} MB")
    report(results, presets, lengths, args)


if __name__ == "__main__":
    main()
