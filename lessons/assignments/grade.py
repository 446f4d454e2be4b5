"""Grade a student's implementation of an op: the parity suite, one line per check, and a hint.

    python -m lessons.assignments.grade rglru_scan my_rglru_scan.py:rglru_scan

The function is loaded as the model loads it (ops.resolve: the same file and signature checks), then
nanohybrid/tools/parity.py runs it on the CPU in float32, with fresh torch.empty tensors filled with NaN, and
compares the output, the final state and every input gradient with the reference run in float64. When
checks fail, the hint says what to look at, read off which cases and quantities fail. Exit status: 0
when every check passes, 1 otherwise.
"""

import argparse
import os
import sys
import traceback
from pathlib import Path

import torch

from nanohybrid import ops
from nanohybrid.tools import parity

ASSIGNMENTS = ("rglru_scan", "selective_scan", "attention", "moe_experts", "gated_delta_rule")  # each has a skeleton
PRESETS = {"rglru_scan": "hawk-small", "selective_scan": "mamba-small", "ssd": "mamba2-small",
           "attention": "hymba-small", "moe_experts": "jamba-small",
           "gated_delta_rule": "gated-deltanet-small"}  # a model that runs the op, for the next step

# What each input is for, said when no gradient reaches it: the output does not depend on it.
INPUTS = {
    "rglru_scan": {"x": "x_t enters as sqrt(1 - a_t²) ⊙ x_t, or as x_t itself at a reset.",
                   "log_a": "a_t = exp(log_a_t) decays the state and sets the normaliser sqrt(1 - a_t²).",
                   "initial_state": "the state before the first token is h_0 = initial_state (zeros when None)."},
    "selective_scan": {"x": "x_t enters the state as Δ_t B_t x_t and the output as D ⊙ x_t.",
                       "dt": "Δ_t sets both the decay exp(Δ_t A) and the input step Δ_t B_t x_t.",
                       "A": "the decay is exp(Δ_t[d] A[d, n]), one per channel and state entry.",
                       "B": "the input enters the state as Δ_t[d] B_t[n] x_t[d].",
                       "C": "the output reads the state: y_t[d] = Σ_n C_t[n] h_t[d, n].",
                       "D": "when D is given, y_t gets the skip term D ⊙ x_t (after the scan, before the gate).",
                       "z": "when z is given, the output is gated: y_t ⊙ SiLU(z_t), after the D skip.",
                       "dt_bias": "when dt_bias is given, Δ = dt + dt_bias, added before the softplus.",
                       "initial_state": "the state before the first token is h_0 = initial_state (zeros when None)."},
    "attention": {"q": "the scores are q · kᵀ · scale.", "k": "the scores are q · kᵀ · scale.",
                  "v": "the output is the softmax-weighted sum of the values v."},
    "moe_experts": {"x": "each token runs through the experts it was routed to.",
                    "expert_weights": "each expert's output is multiplied by its routing weight expert_weights[t, j].",
                    **dict.fromkeys(("gate_proj", "up_proj", "down_proj"),
                                    "Expert(h) = W_down (SiLU(W_gate h) ⊙ W_up h) uses all three projections.")},
    "gated_delta_rule": {"q": "the output reads the updated state with the query: o_t = S_tᵀ q_t.",
                         "k": "k_t is where the pair is written: S_t gets β_t k_t (v_t − α_t S_{t-1}ᵀ k_t)ᵀ.",
                         "v": "the correction moves what k_t reads towards v_t: β_t k_t (v_t − α_t S_{t-1}ᵀ k_t)ᵀ.",
                         "g": "α_t = exp(g_t) decays the whole state before the correction, S ← α_t S.",
                         "beta": "β_t scales the correction: S_t = α_t S_{t-1} + β_t k_t (v_t − α_t S_{t-1}ᵀ k_t)ᵀ.",
                         "initial_state": "the state before the first token is S_0 = initial_state (zeros when None)."},
}

# Hints keyed by the cases that fail (in parity.CASES order), or "every case".
CASE_HINTS = {
    "rglru_scan": {
        "every case": "look at the recurrence itself: a_t = exp(log_a_t), h_t = a_t ⊙ h_{t-1} + sqrt(1 - a_t²) ⊙ "
                      "x_t, output h_t after the update at every t; the normaliser sqrt(1 - a_t²) multiplies x_t.",
        ("odd length, resets, initial state", "one token"):
            "the cases with resets fail and the one without passes: look at how resets are handled: at a reset "
            "a_t = 0 and the normaliser is 1, so h_t = x_t and the state before it is forgotten.",
        ("odd length, resets, initial state",): "only the odd-length case with resets mid-row fails: a reset can come "
            "at any step (row 1 resets at t = 11 and 30), not only at t = 0; in blocks, check the last partial block.",
    },
    "selective_scan": {
        "every case": "look at the recurrence: h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t x_t (zero-order hold for A, "
                      "Euler for B: Δ multiplies B x, not (exp(ΔA) - 1)/A), then y_t = Σ_n C_t[n] h_t[:, n] "
                      "with the updated state.",
        ("odd length, D, z, dt bias, initial state", "one token",
         "strong decay, long, D, z, dt bias, no initial state"):
            "the cases with D, z, dt_bias and dt_softplus fail while the bare one passes: check them in order: "
            "Δ = softplus(dt + dt_bias), h_0 = initial_state, y = (C · h + D ⊙ x) ⊙ SiLU(z).",
        ("odd length, D, z, dt bias, initial state", "one token"):
            "the cases with an initial state fail and those without pass: the state before the first token is "
            "h_0 = initial_state, which the first step decays and adds to like any other state.",
        ("bare, state 16",): "only the bare case fails: there D, z, dt_bias and initial_state are None and "
                             "dt_softplus is False (use dt as given), and the state size is 16.",
    },
    "attention": {
        "every case": "look at the core: scores = q · kᵀ · scale (the given scale), causal by stream index "
                      "(key_index <= query_index), -inf where hidden, softmax over keys, then · v: (b, h, l, hd_v).",
        ("sliding window 8, 4 meta tokens, MQA, wide values", "decoding from a ring buffer with holes",
         "sliding window 6, the last 9 of 30 keys queried"):
            "the cases with a sliding window fail: look at the window and the meta tokens: a key is visible when "
            "query_index - key_index <= max_distance (itself included), or when it is a meta token "
            "(key_index < n_meta): meta keys are always visible, however far back.",
        ("sliding window 8, 4 meta tokens, MQA, wide values", "decoding from a ring buffer with holes"):
            "the windows with meta tokens fail and the one without passes: meta keys (key_index < n_meta) are "
            "always visible, however far back, whatever the window.",
        ("decoding from a ring buffer with holes",):
            "only decoding from the ring buffer fails: its keys are cache slots out of order, so compare "
            "query_index with key_index (never positions 0..s-1); a slot never written holds EMPTY (int64 max), "
            "which key_index <= query_index hides.",
        ("three packed documents",): "only the packed documents fail: a query sees a key only from its own "
                                     "document (query_document == key_document), meta tokens excepted.",
        ("causal, GQA 4/2, odd length",):
            "only the GQA case fails: query head i reads key/value head i // (h / h_kv), consecutive query heads "
            "share one (repeat_interleave, not repeat: not i % h_kv).",
    },
    "moe_experts": {
        "every case": "look at the combination: y_t = Σ_j w_j · Expert_{e_j}(x_t) with the weights exactly as given "
                      "(Jamba does not renormalise the top-k weights, unlike Mixtral), Expert(h) = "
                      "W_down (SiLU(W_gate h) ⊙ W_up h) with each W applied as h @ Wᵀ, and every expert with "
                      "tokens runs.",
        ("top-1 of 8, an expert without tokens",):
            "only the case with an expert that gets no token fails: skip that expert and go on to the next "
            "(continue, not break or return); every later expert must still run.",
        ("top-2 of 4, odd token count",): "only the top-2 case fails: each token sums over all k of its slots "
                                          "(experts[:, j], expert_weights[:, j] for j < k).",
    },
    "gated_delta_rule": {
        "every case": "look at one step: decay first (S ← α_t S, α_t = exp(g_t): g is log α, not α), then the "
                      "prediction Sᵀ k_t from the decayed state, the correction S += β_t k_t (v_t − Sᵀ k_t)ᵀ, and "
                      "o_t = S_tᵀ q_t read from the updated state; the state is (d_k × d_v), read as Sᵀ q.",
        ("odd length, initial state", "one token", "strong decay, chunks of 64, long, initial state"):
            "the cases with an initial state fail and the one without passes; they are also the ones whose last "
            "chunk is partial. Check both: S_0 = initial_state is decayed by the first α_t like any state (in "
            "chunks: γ_t (Q S_0), −(β γ ⊙ K) S_0, γ_C S_0); the tail is padded with g = 0 and β = 0, a token that "
            "neither decays nor writes, the chunk capped at the length and the padded outputs cut off.",
        ("odd length, initial state", "strong decay, chunks of 64, long, initial state"):
            "the two cases whose last chunk is partial fail (37 = 2·16 + 5, 100 = 64 + 36): look at the tail: pad "
            "it with g = 0 and β = 0, a token that neither decays nor writes, so that the final state is the one "
            "after the last real token, and cut the padded outputs off.",
        ("strong decay, chunks of 64, long, initial state",):
            "only strong decay fails (g down to -27 a step, sums over a chunk in the hundreds): take each ratio "
            "γ_t/γ_s as exp of a segment sum Σ_{s<j≤t} g_j, -inf above the diagonal before the exp, never "
            "exp(cumsum_t) / exp(cumsum_s) (0/0) or exp(cumsum_t − cumsum_s) unmasked (overflows above the diagonal).",
    },
}
ONE_TOKEN = ("only the one-token case fails: check length 1: a loop that starts at t = 1, a .squeeze() that drops "
             "the length axis, or a block size computed from the length.")


def shapes(op: str, case: str) -> str:
    """"x (3, 1, 16), ..., max_distance=8": the inputs of one parity case, for error messages."""
    inputs = parity.case_inputs(op, parity.CASES[op][case], torch.Generator().manual_seed(0))
    return ", ".join(f"{name} {tuple(value.shape)}" if isinstance(value, torch.Tensor) else f"{name}={value}"
                     for name, value in inputs.items() if value is not None)


def hints(op: str, checks: list[parity.Check], spec: str, where: dict[str, str]) -> list[str]:
    """What to look at, from the pattern of failures: crashes, then NaN and shapes, then gradients, then cases."""
    failed = [check for check in checks if not check.passed]
    if not failed:
        return []
    crashed = [check for check in failed if check.quantity == "runs"]
    if crashed:
        check = crashed[0]
        if "NotImplementedError" in check.message:
            return [f"not implemented yet: {spec} still raises NotImplementedError; fill in its body "
                    "(the task and numbered hints are at the top of its file)"]
        if "does not require grad" in check.message:
            return ["no gradient reaches any input: your outputs are cut from the autograd graph (torch.no_grad(), "
                    ".detach(), .item(), .numpy(), or an autograd.Function without a backward)"]
        error = check.message.removeprefix("raised ")
        kind, _, message = error.partition(": ")
        at = f" at {where[error]}" if error in where else ""
        return [f"your function raised {kind}{at} in case '{check.case}' ({shapes(op, check.case)}): "
                f"{message.splitlines()[0]}"]
    returned = [check for check in failed if check.quantity == "returns"]
    if returned:
        return [f"your function {returned[0].message}"]
    for check in failed:
        if check.message.startswith("NaN"):
            return [f"part of {check.quantity} in '{check.case}' is NaN or inf: part of your output is never written "
                    "(the suite fills fresh torch.empty with NaN: start from torch.zeros or write every element), "
                    "or something overflows (exp of a large number, 0/0, a softmax over no visible key)"]
        if check.message.startswith("shape"):
            return [f"{check.quantity} in '{check.case}' has the wrong {check.message}: the function's docstring "
                    "gives every shape"]
    missing = [check.quantity[1:] for check in failed if check.message.startswith("missing")]
    if all(check.quantity.startswith("d") for check in failed):
        names = ", ".join(sorted({check.quantity for check in failed}))
        return [f"your forward is right but the backward isn't ({names}): if you wrote a custom autograd.Function, "
                "check its backward with torch.autograd.gradcheck in float64 on a tiny case, one gradient per input; "
                "with plain PyTorch ops, look for .detach(), .data or in-place writes"]
    if missing:
        return [f"no gradient reaches {name}: your output does not depend on it, and it should: "
                f"{INPUTS.get(op, {}).get(name, '')}" for name in dict.fromkeys(missing)]
    failing = tuple(case for case in parity.CASES[op] if any(check.case == case for check in failed))
    key = "every case" if len(failing) == len(parity.CASES[op]) else failing
    if key in CASE_HINTS.get(op, {}):
        return [("every case fails: " if key == "every case" else "") + CASE_HINTS[op][key]]
    if failing == ("one token",):
        return [ONE_TOKEN]
    return [f"compare the failing cases above with the equations at the top of "
            f"nanohybrid/{ops.REFERENCE_MODULES[op]}.py, starting with the first failing quantity"]


def located(function, path: Path, where: dict[str, str]):
    """`function`, recording for each exception it raises the line of the student's file it came from."""
    def run(**inputs):
        try:
            return function(**inputs)
        except Exception as error:
            frames = [frame for frame in traceback.extract_tb(error.__traceback__)
                      if Path(frame.filename).resolve() == path]
            if frames:
                where[f"{type(error).__name__}: {error}"] = f"{path.name}:{frames[-1].lineno}"
            raise
    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lessons.assignments.grade", description=__doc__.splitlines()[0])
    parser.add_argument("op", choices=ops.OPS, help="the op the function implements")
    parser.add_argument("function", help="path/to/file.py:function")
    args = parser.parse_args(argv)
    if ".py:" not in args.function:
        print(f"error: {args.function!r}: write the function as path/to/file.py:function", file=sys.stderr)
        return 1
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton kernels run in the interpreter on a CPU (lesson 08)
    try:
        implementation = ops.resolve(args.op, args.function)
    except Exception as error:  # the registry's one-line errors; a file that does not import says why
        message = str(error) if isinstance(error, ValueError) else f"{args.function}: {type(error).__name__}: {error}"
        print(f"error: {message}", file=sys.stderr)
        return 1
    path, where = Path(args.function.rpartition(":")[0]).resolve(), {}
    print(f"grading {args.function} as {args.op} against nanohybrid/{ops.REFERENCE_MODULES[args.op]}.py "
          f"(CPU, float32, {len(parity.CASES[args.op])} cases)")
    checks = parity.check_implementation(args.op, located(implementation.function, path, where))
    for check in checks:
        print(str(check).splitlines()[0])
    passed = sum(check.passed for check in checks)
    print(f"{passed}/{len(checks)} checks passed")
    for hint in hints(args.op, checks, args.function, where):
        print(f"hint: {hint}")
    if passed < len(checks):
        return 1
    print(f"next: python train_small.py --preset={PRESETS[args.op]} --kernels={args.op}={args.function}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
