"""The scans alone, forward and forward + backward, against the pure-PyTorch scans of mamba_ssm and transformers.

    python -m bench.scan_ops --quick          about a minute: T in {128, 256}, 2 timed calls
    python -m bench.scan_ops                  the measurement: T in {256, 1024, 4096}, 5 timed calls
    python -m bench.scan_ops --device cuda    adds our Triton kernels and the upstream ones (mamba_ssm's,
                                              through the registry, when installed)
    python -m bench.scan_ops --ops ssd        only the named ops (the registry's names)

Widths (paper-like, CPU-feasible; batch 2, fp32):
  S6      d_inner 512, d_state 16 (Mamba-130M: 1536, 16). Ours: nanohybrid/scan.py through the registry;
          mamba_ssm's selective_scan_ref; transformers' mamba_selective_scan (MambaMixer's CPU scan).
  SSD     8 heads × head dim 64 = d_inner 512, d_state 64, 1 group, chunk 64, a non-zero initial state.
          Ours chunked (the registry's), quadratic and loop (nanohybrid/ssd.py); transformers' mamba2_chunk_scan.
  RG-LRU  width 512, a document reset in row 1. Ours: nanohybrid/rglru.py through the registry;
          transformers' RecurrentGemmaRglru._rnn_scan, after the gate normalisation its forward applies.
  Gated DeltaNet  8 heads × d_k = d_v = 64, chunk 64, q and k L2-normalised (q scaled by 1/√d_k), a non-zero
          initial state. Ours chunked (the registry's) and the reference (nanohybrid/delta_rule.py); transformers'
          torch_chunk_gated_delta_rule (Qwen3-Next's CPU path).

Every implementation takes the same inputs (each in its own layout) and must match ours before it is timed:
output, final state and the gradient of every input under one random upstream gradient. "forward" runs
under torch.no_grad (inference); "fwd+bwd" records the graph and back-propagates (training). A call
expected to take longer than --max-call-seconds (at least linear growth from the previous length) is not
run: the references that index the time axis inside their loop have a backward quadratic in T.
"""

import functools

import torch
import torch.nn.functional as F

from bench.common import (arguments, check, format_seconds, forward_backward, measure, plot_times, setup, table,
                          write_report)
from nanohybrid import ops
from nanohybrid.delta_rule import gated_delta_rule
from nanohybrid.mamba import init_dt_bias
from nanohybrid.ssd import ssd_quadratic, ssd_recurrent
from tests.oracles import (import_mamba_ssm_references, modeling_mamba, modeling_mamba2, modeling_qwen3_next,
                           modeling_recurrent_gemma, transformers)
from tests.test_oracles_mamba import reference_s6

BATCH, D_INNER, S6_STATE = 2, 512, 16
SSD_HEADS, SSD_HEAD_DIM, SSD_STATE, SSD_CHUNK = 8, 64, 64, 64
DELTA_HEADS, DELTA_HEAD_DIM, DELTA_CHUNK = 8, 64, 64
LABELS = {"selective_scan": "S6 selective scan", "ssd": "SSD (Mamba-2)", "rglru_scan": "RG-LRU",
          "gated_delta_rule": "Gated DeltaNet"}  # each op's rows
GATE = 1e-4  # relative error, outputs and gradients: the same fp32 math in another order


def s6_inputs(length, generator):
    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    dt_bias = torch.empty(D_INNER)
    init_dt_bias(dt_bias)  # Mamba's Δ init: softplus(bias) log-uniform in [1e-3, 0.1]
    return dict(x=randn(BATCH, length, D_INNER), dt=0.1 * randn(BATCH, length, D_INNER),
                A=-torch.arange(1.0, S6_STATE + 1).repeat(D_INNER, 1), B=randn(BATCH, length, S6_STATE),
                C=randn(BATCH, length, S6_STATE), D=randn(D_INNER), z=randn(BATCH, length, D_INNER), dt_bias=dt_bias)


def ssd_inputs(length, generator):
    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    return dict(x=randn(BATCH, length, SSD_HEADS, SSD_HEAD_DIM), dt=F.softplus(randn(BATCH, length, SSD_HEADS) - 3),
                A=-torch.linspace(1, 16, SSD_HEADS), B=randn(BATCH, length, 1, SSD_STATE),
                C=randn(BATCH, length, 1, SSD_STATE), initial_state=randn(BATCH, SSD_HEADS, SSD_HEAD_DIM, SSD_STATE))


def rglru_inputs(length, generator):
    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    reset = torch.zeros(BATCH, length, dtype=torch.bool)
    reset[:, 0] = reset[1, length // 2] = True  # position 0: every stream starts a document; row 1 has a second
    # log a = -c · r · softplus(p), c = 8, with softplus(p) = 0.05 (the init spans 0.001-0.1): a between 0.67 and 1
    return dict(x=randn(BATCH, length, D_INNER), log_a=-8.0 * torch.sigmoid(randn(BATCH, length, D_INNER)) * 0.05,
                reset=reset)


def delta_rule_inputs(length, generator):
    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    heads = (BATCH, length, DELTA_HEADS)
    return dict(q=F.normalize(randn(*heads, DELTA_HEAD_DIM), dim=-1) * DELTA_HEAD_DIM**-0.5,
                k=F.normalize(randn(*heads, DELTA_HEAD_DIM), dim=-1), v=randn(*heads, DELTA_HEAD_DIM),
                g=-0.5 * F.softplus(randn(*heads)), beta=torch.sigmoid(randn(*heads)),
                initial_state=randn(BATCH, DELTA_HEADS, DELTA_HEAD_DIM, DELTA_HEAD_DIM))


def registry(op, implementation, **fixed):
    """Our op as the model calls it: through nanohybrid.ops, with `implementation` selected."""
    def run(**inputs):
        with ops.use(**{op: implementation}):
            return getattr(ops, op)(**inputs, **fixed)
    run.state_gradient = ops.resolve(op, implementation).state_gradient
    return run


def transformers_s6(x, dt, A, B, C, D, z, dt_bias):
    y, state = modeling_mamba.mamba_selective_scan(x.mT, dt.mT, A, B.mT, C.mT, D, z.mT, delta_bias=dt_bias,
                                                   delta_softplus=True, return_last_state=True)
    return y.mT, state


def transformers_ssd(x, dt, A, B, C, initial_state):
    return modeling_mamba2.mamba2_chunk_scan(x, dt, A, B, C, SSD_CHUNK, initial_states=initial_state,
                                             return_final_states=True)


def transformers_delta_rule(q, k, v, g, beta, initial_state):
    """Qwen3-Next's CPU path scales q by 1/√d_k itself; ours comes scaled, so it gets q · √d_k."""
    return modeling_qwen3_next.torch_chunk_gated_delta_rule(q * DELTA_HEAD_DIM**0.5, k, v, g, beta,
                                                            chunk_size=DELTA_CHUNK, initial_state=initial_state,
                                                            output_final_state=True)


@functools.cache
def recurrent_gemma_rglru():
    """transformers' RG-LRU layer, for its _rnn_scan method (which uses none of the layer's weights)."""
    config = transformers.RecurrentGemmaConfig(lru_width=D_INNER, hidden_size=D_INNER, num_attention_heads=8)
    return modeling_recurrent_gemma.RecurrentGemmaRglru(config)


def transformers_rglru(x, log_a, reset):
    """What RecurrentGemmaRglru.forward does after its gates: a, sqrt(1 - a²) with a bounded gradient, resets,
    then its _rnn_scan."""
    reset = reset[:, :, None]
    multiplier = modeling_recurrent_gemma.SqrtBoundDerivative.apply(1 - torch.exp(2 * log_a))
    multiplier = reset + ~reset * multiplier
    return recurrent_gemma_rglru()._rnn_scan(x * multiplier, torch.exp(log_a), reset, None)


def implementations(device) -> dict:
    """op -> (inputs, {name: function}), ours first; our Triton kernels too on a GPU."""
    selective_scan_ref, _ = import_mamba_ssm_references()
    ours = "cpu" if device.type == "cpu" else "reference"  # the registry's fast path on a CPU
    s6 = {f"ours (registry: {ours})": registry("selective_scan", ours, dt_softplus=True),
          "mamba_ssm selective_scan_ref": lambda **inputs: reference_s6(selective_scan_ref, **inputs),
          "transformers mamba_selective_scan": transformers_s6}
    ssd = {f"ours chunked (registry: {ours})": registry("ssd", ours, chunk_size=SSD_CHUNK),
           "ours quadratic": ssd_quadratic, "ours loop": ssd_recurrent,
           "transformers mamba2_chunk_scan": transformers_ssd}
    rglru = {f"ours (registry: {ours})": registry("rglru_scan", ours),
             "transformers _rnn_scan": transformers_rglru}
    delta = {f"ours chunked (registry: {ours})": registry("gated_delta_rule", ours, chunk_size=DELTA_CHUNK),
             "ours reference": functools.partial(gated_delta_rule, chunk_size=DELTA_CHUNK),
             "transformers torch_chunk_gated_delta_rule": transformers_delta_rule}
    if device.type == "cuda":
        ops.load_backends()
        for op, functions, fixed in (("selective_scan", s6, dict(dt_softplus=True)),
                                     ("ssd", ssd, dict(chunk_size=SSD_CHUNK)), ("rglru_scan", rglru, {}),
                                     ("gated_delta_rule", delta, dict(chunk_size=DELTA_CHUNK))):
            for name in ("triton", "upstream"):
                if name in ops.implementations(op):
                    label = "ours (registry: triton)" if name == "triton" else "upstream kernel (registry: upstream)"
                    functions[label] = registry(op, name, **fixed)
    return {"selective_scan": (s6_inputs, s6), "ssd": (ssd_inputs, ssd), "rglru_scan": (rglru_inputs, rglru),
            "gated_delta_rule": (delta_rule_inputs, delta)}


def run_length(op, make_inputs, functions, length, args, device, previous: dict) -> list[list]:
    """One op at one length: gate, then time every implementation that fits the time limit."""
    inputs = {k: v.to(device) for k, v in make_inputs(length, torch.Generator().manual_seed(length)).items()}
    generator = torch.Generator().manual_seed(0)
    names = list(functions)
    with torch.no_grad():
        shapes = [t.shape for t in functions[names[0]](**inputs)]
    upstream = [torch.randn(shape, generator=generator).to(device) for shape in shapes]
    if not all(getattr(function, "state_gradient", True) for function in functions.values()):
        print(f"{op}: no gradient on the final state, which an implementation here drops (declared)")
        upstream[1] = torch.zeros_like(upstream[1])
    rows, runnable, expected = [], {}, None
    for name in names:
        estimate = previous.get(name, 0) * length / previous.get("length", length)
        if estimate > args.max_call_seconds:
            rows.append([op, length, name, "not run", f"not run: ≥ {format_seconds(estimate)}", "–", "–"])
            continue
        print(f"{op}, T={length}: {name}")
        outputs, grads = forward_backward(functions[name], inputs, upstream)  # the gate, and the warm-up
        if expected is None:
            expected, passed = (outputs, grads), True
        else:
            (expected_y, expected_state), expected_grads = expected
            passed = (check("output", outputs[0], expected_y, GATE)
                      & check("final state", outputs[1], expected_state, GATE)
                      & check("input gradients", torch.cat([g.flatten() for g in grads]),
                              torch.cat([g.flatten() for g in expected_grads]), GATE))
        runnable[name] = passed
    previous["length"] = length

    def inference(function):
        def call():
            with torch.no_grad():
                function(**inputs)
        return call

    forward = measure({name: inference(functions[name]) for name in runnable}, device, 1, args.repeats)
    training = measure({name: lambda f=functions[name]: forward_backward(f, inputs, upstream) for name in runnable},
                       device, 0, args.repeats)
    previous.update({name: timing.median for name, timing in training.items()})
    ours = names[0]
    for name, passed in runnable.items():
        if name == ours:
            speedup = "–"
        elif not passed:
            speedup = "check failed"
        else:
            speedup = (f"{training[name].median / training[ours].median:.2f}× / "
                       f"{forward[name].median / forward[ours].median:.2f}×")
        rows.append([op, length, name, forward[name], training[name], speedup, "ok" if passed else "FAILED"])
    return sorted(rows, key=lambda row: names.index(row[2]))


def main() -> None:
    parser = arguments(__doc__, "short sequences, few repeats")
    parser.add_argument("--max-call-seconds", type=float, default=60.0, help="skip calls expected to take longer")
    parser.add_argument("--ops", nargs="+", choices=list(LABELS), default=list(LABELS), help="only these ops")
    args = parser.parse_args()
    device = setup(args.threads, args.device)
    lengths, args.repeats = ((128, 256), 2) if args.quick else ((256, 1024, 4096), 5)
    rows = []
    available = implementations(device)
    for op in args.ops:
        make_inputs, functions = available[op]
        previous = {}
        for length in lengths:
            rows += run_length(LABELS[op], make_inputs, functions, length, args, device, previous)
    headers = ["op", "T", "implementation", "forward: median [IQR]", "fwd+bwd: median [IQR]",
               "first row faster by (fwd+bwd / fwd)", "gate"]
    settings = (f"Batch {BATCH}, fp32. S6: d_inner {D_INNER}, d_state {S6_STATE}. SSD: {SSD_HEADS} heads × "
                f"{SSD_HEAD_DIM}, d_state {SSD_STATE}, 1 group, chunk {SSD_CHUNK}, initial state. "
                f"RG-LRU: width {D_INNER}. Gated DeltaNet: {DELTA_HEADS} heads × {DELTA_HEAD_DIM}, "
                f"chunk {DELTA_CHUNK}, initial state. "
                f"1 warm-up call (the gate), then {args.repeats} timed calls each, interleaved. Gate: output, final "
                f"state and input gradients within relative error {GATE:.0e} of ours (the first row of each op). "
                f"Target: ours ≥ 10× faster than selective_scan_ref.")
    name = "scan_ops" + ("_gpu" if device.type == "cuda" else "") + ("_quick" if args.quick else "")
    write_report(name, "Scan ops", settings, [table(headers, rows)])
    plot_times(rows, lengths, name)


if __name__ == "__main__":
    main()
