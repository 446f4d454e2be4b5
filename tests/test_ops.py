"""The kernel registry: the four ways to select an implementation, the auto defaults, student files
(a correct one passes the parity suite, a broken one fails it readably), and clear errors."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanohybrid import ops
from nanohybrid.model import LanguageModel
from nanohybrid.presets import get_config
from nanohybrid.tools.parity import check_implementation
from nanohybrid.tools.testing import SAME_MATH, assert_close

REPO = Path(__file__).resolve().parent.parent
STUDENTS = REPO / "tests" / "students"
CORRECT, BROKEN = f"{STUDENTS}/rglru_scan_correct.py:scan", f"{STUDENTS}/rglru_scan_forgets_resets.py:scan"


def selected(op, device="cpu", dtype=torch.float32):
    return ops.select(op, device, dtype).name


def test_cpu_defaults_are_the_cpu_fast_paths_sdpa_for_attention_else_the_reference():
    expected = {"selective_scan": "cpu", "ssd": "cpu", "rglru_scan": "cpu", "gated_delta_rule": "cpu",
                "attention": "sdpa", "moe_experts": "reference", "causal_conv1d": "cpu", "rms_norm": "cpu"}
    assert {op: selected(op) for op in ops.OPS} == expected


def test_every_cpu_fast_path_sits_beside_its_reference():
    """kernels/<op>/cpu.py registers as "cpu", one rung above the reference of nanohybrid/, for every op that has one."""
    for op in ops.OPS:
        implementations = ops.implementations(op)
        assert implementations["reference"].function.__module__.startswith("nanohybrid.")
        for name in ("cpu", "sdpa"):
            if name in implementations:
                assert implementations[name].function.__module__ == f"kernels.{op}.{name}"


def test_importing_nanohybrid_leaves_subnormals_alone_and_the_first_cpu_selection_flushes_them():
    """torch.set_flush_denormal is a process-wide setting: ops sets it where an implementation is chosen
    for a CPU call, not as a side effect of `import nanohybrid`."""
    script = ("import torch, nanohybrid; from nanohybrid import ops\n"
              "subnormal = lambda: (torch.tensor([1e-39]) * 1.0).item() != 0.0\n"
              "before = subnormal(); ops.select('rglru_scan', 'cpu', torch.float32); print(before, subnormal())")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert result.stdout.split() == ["True", "False"], result.stderr


def test_context_manager_selects_and_restores():
    with ops.use(attention="reference"):
        assert selected("attention") == "reference"
        with ops.use(attention="sdpa"):
            assert selected("attention") == "sdpa"
        assert selected("attention") == "reference"
    assert selected("attention") == "sdpa"


def test_environment_selects_and_context_overrides_it(monkeypatch):
    monkeypatch.setenv("NANOHYBRID_KERNELS", "attention=reference")
    assert selected("attention") == "reference"
    with ops.use(attention="sdpa"):
        assert selected("attention") == "sdpa"


def test_parse_selection():
    assert ops.parse_selection("rglru_scan=reference, attention=sdpa") == {"rglru_scan": "reference", "attention": "sdpa"}
    assert ops.parse_selection("reference") == dict.fromkeys(ops.OPS, "reference")
    assert ops.parse_selection("") == {}


def test_unknown_op_and_implementation_list_what_exists():
    with pytest.raises(ValueError, match="unknown op 'scan' in kernel selection 'scan=reference'; ops are selective_scan"):
        ops.parse_selection("scan=reference")
    with pytest.raises(ValueError, match="unknown implementation 'cudnn' of attention; registered: reference, sdpa"):
        ops.parse_selection("attention=cudnn")
    with pytest.raises(ValueError, match="unknown op 'atention'"):
        with ops.use(atention="sdpa"):
            pass


@pytest.fixture
def cuda_only():
    ops.register("attention", "cuda-only", devices=("cuda",))(ops.implementations("attention")["sdpa"].function)
    yield
    del ops.REGISTRY["attention"]["cuda-only"]


def test_an_implementation_on_a_device_it_does_not_support_is_an_error_not_a_fallback(cuda_only):
    with ops.use(attention="cuda-only"), pytest.raises(ValueError, match="attention=cuda-only does not run on cpu"):
        ops.attention(*[torch.zeros(1)] * 3, None, None, None, None, None, 0, 1.0)
    with ops.use(attention="auto"):
        assert selected("attention") == "sdpa"


def test_student_file_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match="no such file"):
        ops.parse_selection("rglru_scan=tests/students/missing.py:scan")
    with pytest.raises(ValueError, match="defines no function 'solve'"):
        ops.parse_selection(f"rglru_scan={STUDENTS}/rglru_scan_correct.py:solve")
    with pytest.raises(ValueError, match=r"scan\(x, a, initial_state\) must take \(x, log_a, reset, initial_state\)"):
        ops.parse_selection(f"rglru_scan={STUDENTS}/rglru_scan_wrong_signature.py:scan")


def test_a_correct_student_function_passes_the_parity_suite():
    checks = check_implementation("rglru_scan", ops.resolve("rglru_scan", CORRECT).function)
    assert checks and all(check.passed for check in checks), [str(c) for c in checks if not c.passed]


def test_a_broken_student_function_fails_it_readably():
    checks = check_implementation("rglru_scan", ops.resolve("rglru_scan", BROKEN).function)
    failures = [str(check) for check in checks if not check.passed]
    assert "FAIL  odd length, resets, initial state: output: relative error" in failures[0]
    assert any("dlog_a" in failure for failure in failures)
    assert all(check.passed for check in checks if check.case == "long, no reset, no initial state")


def test_the_model_calls_its_ops_through_the_registry():
    torch.manual_seed(0)
    model = LanguageModel(get_config("hawk-tiny"))
    tokens = torch.randint(0, 320, (2, 12))
    expected = model(tokens).logits
    with ops.use(rglru_scan=CORRECT):
        assert_close(model(tokens).logits, expected, SAME_MATH, "student scan in the model")
    positions = torch.arange(12).repeat(2, 1) % 6  # two documents per row: the scan must reset at 6
    right = model(tokens, positions=positions).logits
    assert not torch.allclose(right, expected, atol=1e-4)
    with ops.use(rglru_scan=BROKEN):  # this student forgot the resets, and the model shows it
        assert not torch.allclose(model(tokens, positions=positions).logits, right, atol=1e-4)


@pytest.mark.parametrize("script", ["sample.py", "train_small.py"])
def test_kernels_flag_rejects_an_unknown_implementation(script):
    arguments = ["--preset", "hawk-tiny"] if script == "sample.py" else []
    result = subprocess.run([sys.executable, script, *arguments, "--kernels=attention=cudnn"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode != 0 and "unknown implementation 'cudnn' of attention" in result.stderr


def test_sample_runs_with_a_student_kernel():
    result = subprocess.run([sys.executable, "sample.py", "--preset", "hawk-tiny", "--max-new-tokens", "3",
                             f"--kernels=rglru_scan={CORRECT}"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
