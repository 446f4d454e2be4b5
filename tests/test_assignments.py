"""The classroom assignments (lessons/assignments): each unfilled skeleton loads with the reference's
signature and says it is not implemented yet; the grader passes correct solutions (the references, a
Triton kernel) and fails broken ones, with exit status 1 and a hint that points at the bug."""

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from lessons.assignments import grade
from nanohybrid import ops
from nanohybrid.tools import parity
from nanohybrid.tools.parity import Check

REPO = Path(__file__).resolve().parent.parent
STUDENTS = "tests/students"


def run_grader(capsys, op: str, spec: str) -> tuple[int, str]:
    status = grade.main([op, spec])
    captured = capsys.readouterr()
    return status, captured.out + captured.err


@pytest.fixture(autouse=True)
def in_repository_root(monkeypatch):
    monkeypatch.chdir(REPO)  # the paths below are relative, as a student types them


CORRECT = {**{op: f"reference_solutions.py:{op}" for op in grade.ASSIGNMENTS},
           "gated_delta_rule": "gated_delta_rule_recurrent.py:gated_delta_rule"}  # a loop, the reference is chunked


@pytest.mark.parametrize("op", grade.ASSIGNMENTS)
def test_a_correct_solution_passes(capsys, op):
    status, output = run_grader(capsys, op, f"{STUDENTS}/{CORRECT[op]}")
    total = len(output.splitlines()) - 3  # the header, the summary and the next step around one line per check
    assert status == 0 and f"{total}/{total} checks passed" in output and "FAIL" not in output, output
    assert f"next: python train_small.py --preset={grade.PRESETS[op]} --kernels={op}=" in output


def test_a_triton_kernel_passes(capsys):
    status, output = run_grader(capsys, "rglru_scan", f"{STUDENTS}/triton_solutions.py:rglru_scan")
    assert status == 0 and "19/19 checks passed" in output, output


@pytest.mark.parametrize("op", grade.ASSIGNMENTS)
def test_each_skeleton_has_the_reference_signature_and_docstring(op):
    skeleton = ops.resolve(op, f"lessons/assignments/{op}.py:{op}").function
    reference = ops.implementations(op)["reference"].function
    assert inspect.signature(skeleton) == inspect.signature(reference) and skeleton.__doc__ == reference.__doc__


@pytest.mark.parametrize("op", grade.ASSIGNMENTS)
def test_the_unfilled_skeleton_is_not_implemented_yet(capsys, op):
    status, output = run_grader(capsys, op, f"lessons/assignments/{op}.py:{op}")
    assert status == 1, output
    assert f"hint: not implemented yet: lessons/assignments/{op}.py:{op} still raises NotImplementedError" in output


BROKEN = [  # (op, file, what the hint must say)
    ("rglru_scan", "rglru_scan_forgets_resets.py:scan", "at a reset a_t = 0 and the normaliser is 1"),
    ("rglru_scan", "rglru_scan_drops_normaliser.py:scan", "the normaliser sqrt(1 - a_t²) multiplies x_t"),
    ("rglru_scan", "rglru_scan_wrong_backward.py:scan",
     "your forward is right but the backward isn't (dinitial_state, dlog_a, dx): if you wrote a custom autograd"),
    ("rglru_scan", "rglru_scan_leaves_output_unwritten.py:scan",
     "part of your output is never written (the suite fills fresh torch.empty with NaN"),
    ("rglru_scan", "rglru_scan_returns_only_h.py:scan", "your function returned one tensor of shape (2, 37, 24); "
     "return a tuple (h, final_state)"),
    ("rglru_scan", "rglru_scan_squeezes.py:scan", "raised IndexError at rglru_scan_squeezes.py:11 in case 'long, "
     "no reset, no initial state' (x (1, 64, 40), log_a (1, 64, 40), reset (1, 64)): tuple index out of range"),
    ("selective_scan", "selective_scan_ignores_initial_state.py:scan",
     "no gradient reaches initial_state: your output does not depend on it, and it should: the state before"),
    ("selective_scan", "selective_scan_forgets_d.py:scan", "no gradient reaches D: your output does not depend on it, "
     "and it should: when D is given, y_t gets the skip term"),
    ("selective_scan", "selective_scan_forgets_z_gate.py:scan", "no gradient reaches z: your output does not depend "
     "on it, and it should: when z is given, the output is gated"),
    ("selective_scan", "selective_scan_zoh_for_b.py:scan", "Euler for B: Δ multiplies B x, not (exp(ΔA) - 1)/A"),
    ("attention", "attention_ignores_window.py:attention", "sliding window fail: look at the window and the meta"),
    ("attention", "attention_hides_meta_tokens.py:attention", "meta keys (key_index < n_meta) are always visible, however far back"),
    ("attention", "attention_ignores_documents.py:attention", "only the packed documents fail: a query sees a key "
     "only from its own document"),
    ("attention", "attention_gqa_head_mapping.py:attention", "only the GQA case fails: query head i reads key/value "
     "head i // (h / h_kv)"),
    ("attention", "attention_uses_positions.py:attention", "only decoding from the ring buffer fails: its keys are "
     "cache slots out of order, so compare query_index with key_index"),
    ("moe_experts", "moe_experts_renormalises.py:moe_experts", "Jamba does not renormalise the top-k weights"),
    ("moe_experts", "moe_experts_drops_weighting.py:moe_experts", "no gradient reaches expert_weights"),
    ("moe_experts", "moe_experts_stops_at_empty_expert.py:moe_experts", "only the case with an expert that gets no "
     "token fails: skip that expert"),
    ("gated_delta_rule", "gated_delta_rule_wrong_gradient.py:gated_delta_rule",
     "your forward is right but the backward isn't (dg): if you wrote a custom autograd.Function"),
    ("gated_delta_rule", "gated_delta_rule_repeats_last_token.py:gated_delta_rule", "the tail is padded with g = 0 "
     "and β = 0, a token that neither decays nor writes"),
    ("gated_delta_rule", "gated_delta_rule_ignores_initial_state.py:gated_delta_rule", "no gradient reaches "
     "initial_state: your output does not depend on it, and it should: the state before the first token is S_0"),
]


@pytest.mark.parametrize("op, spec, hint", BROKEN, ids=[spec.partition(".py")[0] for _, spec, _ in BROKEN])
def test_a_broken_solution_fails_with_a_hint_at_its_bug(capsys, op, spec, hint):
    status, output = run_grader(capsys, op, f"{STUDENTS}/{spec}")
    assert status == 1 and "FAIL" in output, output
    hints = [line for line in output.splitlines() if line.startswith("hint: ")]
    assert len(hints) == 1 and hint in hints[0], output


def test_a_wrong_gradient_fails_on_that_gradient_alone(capsys):
    spec = f"{STUDENTS}/gated_delta_rule_wrong_gradient.py:gated_delta_rule"
    status, output = run_grader(capsys, "gated_delta_rule", spec)
    failed = [line for line in output.splitlines() if line.startswith("FAIL")]
    assert status == 1 and len(failed) == len(parity.CASES["gated_delta_rule"]), output
    assert all(": dg: relative error" in line for line in failed), output


@pytest.mark.parametrize("spec, error", [
    ("rglru_scan_wrong_signature.py:scan", "scan(x, a, initial_state) must take (x, log_a, reset, initial_state)"),
    ("rglru_scan_correct.py:solve", "defines no function 'solve'"),
    ("missing.py:scan", "no such file 'tests/students/missing.py'"),
    ("rglru_scan_correct.py", "write the function as path/to/file.py:function"),
])
def test_a_function_that_cannot_be_loaded_is_one_line_error(capsys, spec, error):
    status, output = run_grader(capsys, "rglru_scan", f"{STUDENTS}/{spec}")
    assert status == 1 and output.startswith("error: ") and error in output and output.count("\n") == 1, output


def test_a_file_that_does_not_import_says_why(capsys, tmp_path):
    solution = tmp_path / "solution.py"
    solution.write_text("def rglru_scan(x, log_a, reset, initial_state=None)\n    return x\n")
    status, output = run_grader(capsys, "rglru_scan", f"{solution}:rglru_scan")
    assert status == 1 and "SyntaxError" in output and "line 1" in output and output.count("\n") == 1, output


def test_the_hint_for_failures_only_at_one_token():
    checks = [Check(case, quantity, 0.5 if case == "one token" else 0.0, 1e-4)
              for case in parity.CASES["rglru_scan"] for quantity in ("output", "final state", "dx")]
    assert grade.hints("rglru_scan", checks, "scan.py:scan", {}) == [grade.ONE_TOKEN]


def test_the_hint_for_a_wrong_tail_of_the_delta_rule():
    partial = ("odd length, initial state", "strong decay, chunks of 64, long, initial state")  # 37 and 100 steps
    checks = [Check(case, quantity, 0.5 if case in partial else 0.0, 1e-4)
              for case in parity.CASES["gated_delta_rule"] for quantity in ("output", "final state")]
    [hint] = grade.hints("gated_delta_rule", checks, "delta.py:gated_delta_rule", {})
    assert hint.startswith("the two cases whose last chunk is partial fail") and "pad it with g = 0 and β = 0" in hint


def test_every_case_hint_names_cases_of_the_parity_suite():
    for op, hints in grade.CASE_HINTS.items():
        for key in hints:
            assert key == "every case" or set(key) <= set(parity.CASES[op]), (op, key)


def test_the_command_line_exits_1_on_a_failure():
    result = subprocess.run([sys.executable, "-m", "lessons.assignments.grade", "attention",
                             f"{STUDENTS}/attention_ignores_documents.py:attention"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
    assert "16/20 checks passed" in result.stdout and "hint: only the packed documents fail" in result.stdout
