"""Every implementation of every op at the papers' shapes: our Triton kernels against the readable reference
and against the upstream kernels (mamba_ssm, flash-attn, causal-conv1d, fla), each gated on its error first.

    python -m bench.kernels --device cuda            the measurement: T in {1024, 4096, 8192}, fp32 and bf16
    python -m bench.kernels --device cuda --quick    T = 1024 and 4096, bf16 only (bench/gpu_check.sh's step)
    python -m bench.kernels                          on a CPU (with or without --quick): toy widths, the kernels
                                                     in Triton's interpreter; checks the script, times mean nothing

Shapes (batch 1; the op's inputs as nanohybrid.tools.parity_cases.case_inputs makes them, no initial state, as in training):
  selective_scan  d_inner 3200, d_state 16: Hymba-1.5B's SSM heads (mamba_ssm's selective_scan_fn)
  ssd             50 heads × 64 = d_inner 3200, d_state 128, 1 group, chunk 256: mamba_ssm's Mamba2 defaults
  rglru_scan      width 2560: RecurrentGemma-2B, with a document starting mid-sequence
  gated_delta_rule  32 value heads, d_k = d_v = 128, chunk 64: Qwen3-Next-80B-A3B's GDN layers (fla's
                  chunk_gated_delta_rule)
  attention       global: 32 query heads × 128, 8 KV heads (Llama-3-8B); sliding window 1024 with 128 meta
                  tokens: 25 query heads × 64, 5 KV heads, values 128 wide (Hymba-1.5B)
  causal_conv1d   3200 channels, width 4 (Hymba-1.5B's and Mamba's conv)
  moe_experts     16 experts, top 2 (Jamba), at d_model 1024 with experts 3584 wide (Jamba's 3.5 ratio)

The gate: before it is timed, an implementation's output, final state and every input gradient (under one
random upstream gradient, none on the final state, which selective_scan_fn drops) must be as close to the
reference run in fp64 on the same device as nanohybrid/tools/parity.py demands: relative error 1e-4 in fp32, and
in bf16 at most 2× the error of the reference run in bf16. A case an upstream kernel refuses (flash-attn
has no always-visible prefix inside a window) is listed as refused. Timings: forward under no_grad, and
forward + backward, interleaved across implementations (bench/common.py's measure); the target is our
Triton kernels within 1.5× of the upstream kernel's fwd+bwd time.
"""

import torch

from bench.common import arguments, forward_backward, measure, plot_times, setup, table, write_report
from nanohybrid import ops
from nanohybrid.tools.parity import BF16_FACTOR, KERNEL_FP32, compare, positional_arguments, prepare
from nanohybrid.tools.parity_cases import case_inputs, prefill_layout
from nanohybrid.tools.testing import relative_error

TARGET_UPSTREAM_RATIO = 1.5  # our Triton kernel's fwd+bwd time over the upstream kernel's, at most
ORDER = ["reference", "sdpa", "triton", "upstream"]  # the rows of each case; a student's kernel would come last

# (op, name, the papers' widths, their case at length T, a toy case for the CPU check)
SHAPES = [
    ("selective_scan", "S6", "d_inner 3200, d_state 16", lambda T: dict(shape=(1, T, 3200, 16)),
     lambda T: dict(shape=(1, T, 16, 4))),
    ("ssd", "SSD", "50 heads × 64, d_state 128, chunk 256", lambda T: dict(shape=(1, T, 50, 64, 1, 128, 256), initial=False),
     lambda T: dict(shape=(1, T, 2, 16, 1, 16, 16), initial=False)),
    ("rglru_scan", "RG-LRU", "width 2560", lambda T: dict(shape=(1, T, 2560), resets=[(0, 0), (0, T // 2)], initial=False),
     lambda T: dict(shape=(1, T, 16), resets=[(0, 0), (0, T // 2)], initial=False)),
    ("gated_delta_rule", "gated delta rule", "32 heads, d_k = d_v = 128, chunk 64",
     lambda T: dict(shape=(1, T, 32, 128, 128, 64), initial=False), lambda T: dict(shape=(1, T, 2, 16, 16, 16), initial=False)),
    ("attention", "attention, global", "32 × 128, 8 KV heads",
     lambda T: dict(shape=(1, 32, 8, T, T, 128, 128), layout=prefill_layout),
     lambda T: dict(shape=(1, 4, 2, T, T, 16, 16), layout=prefill_layout)),
    ("attention", "attention, window + meta", "window 1024, 128 meta, 25 × 64, 5 KV heads",
     lambda T: dict(shape=(1, 25, 5, T, T, 64, 128), layout=prefill_layout, max_distance=1024, n_meta=128),
     lambda T: dict(shape=(1, 4, 1, T, T, 16, 32), layout=prefill_layout, max_distance=8, n_meta=4)),
    ("causal_conv1d", "conv1d", "3200 channels, width 4", lambda T: dict(shape=(1, T, 3200, 4), initial=False),
     lambda T: dict(shape=(1, T, 16, 4), initial=False)),
    ("moe_experts", "MoE", "16 experts top 2, d 1024, experts 3584", lambda T: dict(shape=(T, 1024, 3584, 16, 2)),
     lambda T: dict(shape=(T, 16, 24, 4, 2))),
]


def training_call(function, inputs: dict, upstream: list) -> list[torch.Tensor]:
    """forward_backward's outputs and input gradients, in one list."""
    outputs, gradients = forward_backward(function, inputs, upstream)
    return [*outputs, *gradients]


def worst(actual: list, expected: list, bounds: list) -> float:
    """The largest relative error over bound (above 1: the gate fails), through the parity suite's compare:
    inf where a result is misshapen or not finite."""
    checks = [compare("", "", result, truth, bound) for result, truth, bound in zip(actual, expected, bounds)]
    return max(check.error / check.bound for check in checks)


def candidates(op: str, device: str, dtype, arguments: tuple) -> dict:
    """name -> function, or the reason it is not run: every implementation of `op` for this device and dtype."""
    found = {}
    for name, implementation in sorted(ops.implementations(op).items(),
                                       key=lambda item: ORDER.index(item[0]) if item[0] in ORDER else len(ORDER)):
        if not implementation.supports(device, dtype):
            continue
        reason = implementation.refusal(arguments)
        found[name] = reason if reason else implementation.function
    return found


def run_case(op, label, case, length, dtype, device, repeats) -> list[list]:
    """Gate, then time, every implementation of one op at one shape, length and dtype -> table rows."""
    inputs = case_inputs(op, case, torch.Generator().manual_seed(length))
    inputs.pop("initial_state", None)  # training starts from zero (and selective_scan_fn takes no state)
    truth_inputs = prepare(inputs, device, torch.float64)
    reference = ops.implementations(op)["reference"].function
    with torch.no_grad():
        outputs = reference(**truth_inputs)
        shapes = [output.shape for output in (outputs if isinstance(outputs, tuple) else (outputs,))]
    generator = torch.Generator().manual_seed(0)
    upstream = [torch.randn(shape, generator=generator, dtype=torch.float64).to(device) for shape in shapes]
    if len(upstream) > 1:
        upstream[1].zero_()  # no gradient on the final state: selective_scan_fn drops it, and training never has one
    expected = training_call(reference, truth_inputs, upstream)
    del truth_inputs
    inputs = prepare(inputs, device, dtype)  # leaves that track gradients, as a training call's inputs are
    upstream = [gradient.float() for gradient in upstream]
    if dtype == torch.float32:
        bounds = [KERNEL_FP32] * len(expected)
    else:  # PyTorch's own error at this precision, as in the parity suite
        bounds = [BF16_FACTOR * max(relative_error(pytorch, value), 1e-3)
                  for pytorch, value in zip(training_call(reference, inputs, upstream), expected)]
    rows, timed = [], {}
    for name, function in candidates(op, device.type, dtype, positional_arguments(op, inputs)).items():
        if isinstance(function, str):
            rows.append([label, length, name, "refused", "refused", function, "–"])
            continue
        print(f"{label}, T={length}: {name}")
        try:
            ratio = worst(training_call(function, inputs, upstream), expected, bounds)
        except Exception as error:  # out of memory, or a kernel that crashes: a row, not the end of the run
            rows.append([label, length, name, "not timed", "not timed", "–", f"FAILED: {type(error).__name__}"])
            print(f"  {type(error).__name__}: {error}")
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        if ratio > 1:
            rows.append([label, length, name, "not timed", "not timed", "–", f"FAILED ({ratio:.2g}× its bound)"])
            continue
        timed[name] = function
    del expected

    def inference(function):
        def call():
            with torch.no_grad():
                function(**inputs)
        return call

    forward = measure({name: inference(function) for name, function in timed.items()}, device, 1, repeats)
    training = measure({name: lambda f=function: forward_backward(f, inputs, upstream)
                        for name, function in timed.items()}, device, 1, repeats)
    for name in timed:
        rows.append([label, length, name, forward[name], training[name], ratios(name, training), "ok"])
    return rows


def ratios(name: str, training: dict) -> str:
    """How this implementation's fwd+bwd time compares: the reference's over it, and for our Triton kernel its
    time over the upstream kernel's (the target: at most TARGET_UPSTREAM_RATIO)."""
    parts = []
    if name != "reference" and "reference" in training:
        parts.append(f"{training['reference'].median / training[name].median:.2f}× faster than the reference")
    if name == "triton" and "upstream" in training:
        ratio = training[name].median / training["upstream"].median
        verdict = "met" if ratio <= TARGET_UPSTREAM_RATIO else "missed"
        parts.append(f"{ratio:.2f}× upstream's time (target ≤ {TARGET_UPSTREAM_RATIO}×: {verdict})")
    return "; ".join(parts) or "–"


def main() -> None:
    parser = arguments(__doc__, "fewer lengths, bf16 only on a GPU; toy widths on a CPU")
    args = parser.parse_args()
    device = setup(args.threads, args.device)
    ops.load_backends()
    gpu = device.type == "cuda"
    if gpu:
        lengths, dtypes, repeats = ((1024, 4096), [torch.bfloat16], 5) if args.quick else \
            ((1024, 4096, 8192), [torch.float32, torch.bfloat16], 7)
    else:
        lengths, dtypes, repeats = (37, 64), [torch.float32], 2
    rows = []
    for dtype in dtypes:
        for op, name, widths, paper_case, toy_case in SHAPES:
            label = f"{name}, {widths if gpu else 'toy widths'} ({str(dtype)[6:]})"
            for length in lengths:
                try:
                    rows += run_case(op, label, paper_case(length) if gpu else toy_case(length), length, dtype, device,
                                     repeats)
                except torch.cuda.OutOfMemoryError:  # the fp64 reference at the longest lengths, say
                    rows.append([label, length, "(all)", "out of memory", "out of memory", "–", "–"])
                if gpu:
                    torch.cuda.empty_cache()
            report(rows, lengths, repeats, gpu, args.quick)  # after each shape: a run cut short keeps what it measured


def report(rows: list[list], lengths, repeats: int, gpu: bool, quick: bool) -> None:
    """bench/results/kernels_gpu[_quick].md and .png (on a CPU: kernels_interpreter_quick) from the rows so far."""
    headers = ["shape (dtype)", "T", "implementation", "forward: median [IQR]", "fwd+bwd: median [IQR]",
               "fwd+bwd compared", "gate"]
    settings = (f"Batch 1, no initial state; {repeats} timed calls each after one warm-up, interleaved. Gate: every "
                f"output and input gradient against the reference in fp64 on this device, relative error ≤ "
                f"{KERNEL_FP32:.0e} in fp32, ≤ {BF16_FACTOR:g}× the reference's own error in bf16. Target: our "
                f"Triton kernels' fwd+bwd within {TARGET_UPSTREAM_RATIO}× of the upstream kernel's."
                + ("" if gpu else " CPU: toy widths, kernels in Triton's interpreter, so the times say nothing "
                   "about the kernels; this run checks the script."))
    name = ("kernels_gpu" + ("_quick" if quick else "")) if gpu else "kernels_interpreter_quick"  # a check only
    write_report(name, "Kernels at the papers' shapes", settings, [table(headers, rows)])
    plot_times(rows, lengths, name, panel_rows=len({row[0].rsplit("(", 1)[1] for row in rows}))  # a row per dtype


if __name__ == "__main__":
    main()
