"""What every benchmark shares: the machine it ran on, timing with medians, the correctness gate, peak memory,
growth exponents, tables, plots.

Timing: `measure({name: function})` runs `warmup` untimed calls of each, then `repeats` timed rounds that
call the functions in turn (so that the two sides of a comparison see the same background load), and
reports each one's median and interquartile range (the middle half of the samples), which one slow
outlier does not move the way it moves a mean. On a GPU it synchronises before reading the clock.

The gate: `check(...)` compares two outputs by relative error ‖ours − theirs‖ / ‖theirs‖
(nanohybrid/tools/testing.py) and prints the result; a speedup is reported only for a pair whose check
passed (as fla's benchmarks do).
"""

import argparse
import datetime
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from nanohybrid.tools.testing import relative_error

RESULTS = Path(__file__).parent / "results"


def arguments(description: str, quick: str) -> argparse.ArgumentParser:
    """The options every benchmark takes: --quick (what it shrinks: `quick`), --device and --threads."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"{quick}: checks the script works")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads, the same for every measurement")
    return parser


def setup(threads: int, device: str) -> torch.device:
    """The same number of intra-op threads for every measurement of a run, and a fixed seed."""
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU is visible to PyTorch here; run on a machine with one, or use cpu")
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # as ops does for our CPU calls: both sides of every comparison alike
    torch.manual_seed(0)
    return torch.device(device)


@dataclass
class Timing:
    """Seconds per call: the median and the interquartile range of the timed repeats."""

    median: float
    q1: float
    q3: float

    def __str__(self) -> str:
        return f"{format_seconds(self.median)} [{format_seconds(self.q1)}–{format_seconds(self.q3)}]"


def format_seconds(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(functions: dict, device: torch.device, warmup: int, repeats: int) -> dict[str, Timing]:
    """Time each of `functions` (name -> callable): `warmup` untimed calls each, then `repeats` timed rounds in
    which every function runs once in turn, so that all of them see the same background load -> name -> Timing."""
    for function in functions.values():
        for _ in range(warmup):
            function()
    samples = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            synchronize(device)
            start = time.perf_counter()
            function()
            synchronize(device)
            samples[name].append(time.perf_counter() - start)
    return {name: summarise(times) for name, times in samples.items()}


def forward_backward(function, inputs: dict, upstream: list) -> tuple[tuple, tuple]:
    """One training call: the outputs (an op's output, and the final state for the scans and the conv) and
    the gradient of every floating-point input under the fixed upstream gradients (zeros where none
    reached an input); other inputs (flags, indices) pass through."""
    leaves = {name: value.detach().requires_grad_() if isinstance(value, torch.Tensor) and value.is_floating_point()
              else value for name, value in inputs.items()}
    outputs = function(**leaves)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    loss = sum((output.to(gradient.dtype) * gradient).sum() for output, gradient in zip(outputs, upstream))
    differentiable = [value for value in leaves.values() if isinstance(value, torch.Tensor) and value.requires_grad]
    gradients = torch.autograd.grad(loss, differentiable, allow_unused=True)
    return (tuple(output.detach() for output in outputs),
            tuple(torch.zeros_like(x) if g is None else g for g, x in zip(gradients, differentiable)))


def summarise(samples: list[float]) -> Timing:
    """Median and quartiles of two or more samples."""
    q1, median, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return Timing(median, q1, q3)


def check(name: str, ours: torch.Tensor, theirs: torch.Tensor, bound: float) -> bool:
    """The correctness gate: print the relative error of ours against theirs and whether it is within `bound`."""
    ours, theirs = ours.detach().float().cpu(), theirs.detach().float().cpu()
    comparable = ours.shape == theirs.shape and torch.isfinite(ours).all()
    error = relative_error(ours, theirs) if comparable else float("inf")
    passed = error <= bound
    print(f"  check {name}: relative error {error:.2g} (bound {bound:.0e}) {'ok' if passed else 'FAILED'}")
    return passed


def machine() -> list[str]:
    """The machine and software a run measured, one markdown bullet each."""
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    lines = [f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='minutes')}",
             f"- CPU: {cpu}, {os.cpu_count()} logical cores visible, torch threads: {torch.get_num_threads()}",
             f"- GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}",
             f"- Python {platform.python_version()}, torch {torch.__version__}"]
    try:
        import transformers
        lines[-1] += f", transformers {transformers.__version__}"
    except ImportError:
        pass
    return lines


def table(headers: list[str], rows: list[list]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(name: str, title: str, settings: str, sections: list[str]) -> Path:
    """bench/results/<name>.md: the title, the machine, the settings, then each section; printed too."""
    RESULTS.mkdir(exist_ok=True)
    text = "\n\n".join([f"# {title}", "\n".join(machine()), settings, *sections]) + "\n"
    path = RESULTS / f"{name}.md"
    path.write_text(text)
    print("\n" + text + f"\nwrote {path}")
    return path


def figure(rows: int, columns: int):
    """A matplotlib figure with a grid of plots, and its axes in reading order (the Agg backend: no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, 4.2 * rows), squeeze=False)
    return fig, list(axes.flat)


def log_log(axis, xs: list[int], xlabel: str, ylabel: str, title: str) -> None:
    """Log scales on both axes, the x ticks at the measured points."""
    axis.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel, title=title)
    axis.set_xticks(xs, [f"{x:,}" for x in xs])
    axis.minorticks_off()
    axis.grid(True, which="major", alpha=0.3)


def plot_times(rows: list[list], lengths, name: str, panel_rows: int = 1) -> None:
    """fwd+bwd time against T from table rows [panel, T, implementation, forward, fwd+bwd, ...]: a panel per
    distinct first column (in `panel_rows` rows), a line per implementation; rows not timed are left out."""
    panels = list(dict.fromkeys(row[0] for row in rows))
    fig, axes = figure(panel_rows, -(-len(panels) // panel_rows))
    for axis, panel in zip(axes, panels):
        for implementation in dict.fromkeys(row[2] for row in rows if row[0] == panel):
            points = [(row[1], row[4].median) for row in rows
                      if row[0] == panel and row[2] == implementation and not isinstance(row[4], str)]
            if points:
                axis.plot(*zip(*points), marker="o", label=implementation)
        log_log(axis, lengths, "sequence length T", "fwd+bwd seconds (median)", panel)
        axis.legend(fontsize=7)
    save_figure(fig, name)


def save_figure(fig, name: str) -> Path:
    import matplotlib.pyplot as plt
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")
    return path


def resident_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (high-water mark since the last reset) of this process, in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} missing from /proc/self/status: peak memory on CPU needs Linux")


def reset_peak(device) -> float:
    """Start counting the peak from now; returns the memory in use now (MB)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset the peak resident set size to the current one (Linux >= 4.0)
    return resident_mb("VmRSS")


def peak(device) -> float:
    """The peak memory since reset_peak (MB): the resident high-water mark on a CPU, PyTorch's allocations on a GPU."""
    return torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else resident_mb("VmHWM")


def exponent(contexts, values) -> float:
    """Slope of log(value) against log(context), least squares."""
    xs, ys = [math.log(c) for c in contexts], [math.log(max(v, 1e-12)) for v in values]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
