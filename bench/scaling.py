"""How inference cost grows with the context: prefill, decode, peak memory and cache bytes, per architecture.

    python -m bench.scaling --quick             about two minutes: contexts 256, 512, 1K
    python -m bench.scaling                     the measurement: contexts 256 ... 16K (long: see bench/README.md)
    python -m bench.scaling --prefill-chunk 1024   prefill in chunks, as sample.py --prefill-chunk does

For each `small` preset and context L (batch 1, fp32, random weights and tokens), a fresh Python process:
  prefill   the prompt of L tokens into an empty InferenceCache (nanohybrid.generate.prefill): L / median seconds
  decode    greedy steps from that cache, each timed on its own: 1 / median seconds per token
  memory    peak resident memory during the first prefill and decode, above the resident memory after the
            model was built: on Linux the kernel's high-water mark (VmHWM) is reset (/proc/self/clear_refs)
            after the build and read after the decode; a process per point, so that no memory freed by an
            earlier point is reused unseen. On a GPU: torch.cuda.max_memory_allocated above the baseline.
  cache     InferenceCache.nbytes() after the prefill, checked against analysis.cache_bytes (the formula)

Growth exponents: least squares of log(cost) on log(L) over the upper half of the contexts (at least
3 points): 1 is linear, 2 quadratic, 0 flat. A curve "bends" where its local exponent (between neighbouring
contexts) changes most, if by more than 0.3.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from bench.common import (arguments, exponent, figure, log_log, peak, reset_peak, save_figure, setup, synchronize,
                          table, write_report)
from nanohybrid.config import ARCHITECTURES
from nanohybrid.generate import prefill
from nanohybrid.model import LanguageModel
from nanohybrid.presets import get_config
from nanohybrid.tools.analysis import cache_bytes

BEND = 0.3  # smallest change of the local exponent reported as a bend
# Untimed rounds per point, at least this many and this long: a fresh process runs its first calls slower
# (measured: samba-small's 256-token prefill ran 1.5x slower than later over its first four calls).
WARMUP_ROUNDS, WARMUP_SECONDS = 2, 2.0


def worker(args) -> None:
    """One (architecture, context) point; prints one JSON line."""
    device = setup(args.threads, args.device)
    config = get_config(f"{args.arch}-small", max_seq_len=args.context + args.decode_tokens)
    model = LanguageModel(config).to(device).eval()
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, config.vocab_size, (1, args.context), generator=generator).to(device)
    baseline = reset_peak(device)

    def decode_steps(logits, cache):
        times = []
        with torch.no_grad():
            for _ in range(args.decode_tokens):
                token = logits.argmax(dim=-1, keepdim=True)
                synchronize(device)
                start = time.perf_counter()
                logits = model(token, cache=cache).logits[:, -1]
                synchronize(device)
                times.append(time.perf_counter() - start)
        return times

    prefill_times, decode_times, rounds, began = [], [], 0, time.perf_counter()
    while len(prefill_times) < args.repeats:  # rounds of prefill + decode; memory is the first round's
        timed = rounds >= WARMUP_ROUNDS and time.perf_counter() - began >= WARMUP_SECONDS
        synchronize(device)
        start = time.perf_counter()
        logits, cache = prefill(model, prompt, args.prefill_chunk)
        synchronize(device)
        prefill_time, cache_size = time.perf_counter() - start, sum(cache.nbytes().values())
        times = decode_steps(logits, cache)
        if rounds == 0:
            peak_mb, measured_cache = peak(device) - baseline, cache_size
        if timed:
            prefill_times.append(prefill_time)
            decode_times += times
        rounds += 1
    print(json.dumps(dict(prefill_s=statistics.median(prefill_times), decode_s=statistics.median(decode_times),
                          peak_mb=peak_mb, cache_bytes=measured_cache,
                          formula_bytes=sum(cache_bytes(config, args.context).values()))))


def measure_point(arch: str, context: int, args) -> dict:
    command = [sys.executable, "-m", "bench.scaling", "--worker", arch, str(context), "--threads", str(args.threads),
               "--device", args.device, "--repeats", str(args.repeats), "--decode-tokens", str(args.decode_tokens)]
    if args.prefill_chunk:
        command += ["--prefill-chunk", str(args.prefill_chunk)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"{arch} at {context} tokens failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def growth(contexts, values) -> tuple[str, str]:
    """The exponent over the upper half of the range, and where the curve bends (or '–')."""
    upper = max(3, len(contexts) // 2 + 1)
    fit = exponent(contexts[-upper:], values[-upper:])
    local = [exponent(contexts[i:i + 2], values[i:i + 2]) for i in range(len(contexts) - 1)]
    changes = [(abs(after - before), contexts[i + 1], before, after)
               for i, (before, after) in enumerate(zip(local[:-1], local[1:]))]
    if changes and max(changes)[0] > BEND:
        _, where, before, after = max(changes)
        return f"{fit:.2f}", f"at {where:,}: {before:.2f} → {after:.2f}"
    return f"{fit:.2f}", "–"


SERIES = {  # short name -> (axis label, the value of one point)
    "prefill": ("prefill seconds", lambda point: point["prefill_s"]),
    "decode": ("decode seconds per token", lambda point: point["decode_s"]),
    "memory": ("peak MB above the model", lambda point: max(point["peak_mb"], 1e-3)),
    "cache": ("cache MiB", lambda point: point["cache_bytes"] / 2**20),
}


def report(results: dict, archs: list[str], contexts: list[int], args) -> None:
    rows, fits = [], []
    for arch in archs:
        points = [results[arch, context] for context in contexts]
        for context, point in zip(contexts, points):
            rows.append([f"`{arch}-small`", f"{context:,}", f"{context / point['prefill_s']:,.0f}",
                         f"{1 / point['decode_s']:,.1f}", f"{point['peak_mb']:,.1f}",
                         f"{point['cache_bytes'] / 2**20:,.3f}"])
        fits.append([f"`{arch}-small`", *(cell for _, value in SERIES.values()
                                           for cell in growth(contexts, [value(point) for point in points]))])
    prefill_mode = f"in chunks of {args.prefill_chunk}" if args.prefill_chunk else "in one call"
    settings = (f"Batch 1, fp32, `small` presets with random weights; prefill {prefill_mode}; {args.repeats} timed "
                f"prefills and {args.repeats} × {args.decode_tokens} timed decode steps per point, after at least "
                f"{WARMUP_ROUNDS} untimed rounds of prefill and decode lasting {WARMUP_SECONDS:g} s (memory: the first "
                f"round). Cache bytes equal analysis.cache_bytes at every point.")
    name = "scaling" + ("_gpu" if args.device == "cuda" else "") + (f"_chunk{args.prefill_chunk}" if args.prefill_chunk
                                                                    else "") + ("_quick" if args.quick else "")
    measured = table(["preset", "context", "prefill tokens/s", "decode tokens/s", "peak MB above the model",
                      "cache MiB"], rows)
    exponents = table(["preset", *(f"{series} {what}" for series in SERIES for what in ("exponent", "bend"))], fits)
    fit_note = "Growth exponents (log-log least squares over the upper half of the contexts) and bends:"
    write_report(name, "Scaling with context", settings, [measured, fit_note + "\n\n" + exponents])
    fig, axes = figure(2, 2)
    for axis, (label, value) in zip(axes, SERIES.values()):
        for arch in archs:
            axis.plot(contexts, [value(results[arch, c]) for c in contexts], marker="o", markersize=3, label=arch)
        log_log(axis, contexts, "context (tokens)", label, label)
    axes[0].legend(fontsize=7, ncol=2)
    save_figure(fig, name)


def main() -> None:
    parser = arguments(__doc__, "contexts up to 1K, few repeats")
    parser.add_argument("--arch", nargs="*", default=list(ARCHITECTURES))
    parser.add_argument("--prefill-chunk", type=int, default=None, help="prefill N tokens per call (default: all)")
    parser.add_argument("--worker", nargs=2, metavar=("ARCH", "CONTEXT"), help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--decode-tokens", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.arch, args.context = args.worker[0], int(args.worker[1])
        return worker(args)
    setup(args.threads, args.device)
    contexts = [256, 512, 1024] if args.quick else [2**k for k in range(8, 15)]
    args.repeats, args.decode_tokens = (2, 8) if args.quick else (3, 32)
    results = {}
    for arch in args.arch:
        for context in contexts:
            point = measure_point(arch, context, args)
            if point["cache_bytes"] != point["formula_bytes"]:
                raise AssertionError(f"{arch} at {context} tokens: cache bytes differ from the formula: {point}")
            print(f"{arch} {context}: {point}")
            results[arch, context] = point
    report(results, args.arch, contexts, args)


if __name__ == "__main__":
    main()
