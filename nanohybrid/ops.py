"""The kernel registry: every op the model runs, by name, with the implementations that can run it.

The model never calls a kernel directly: it calls `ops.selective_scan(...)`, `ops.attention(...)` and
so on, and the registry picks the implementation. Choose one in four ways (later ones win):

    default ("auto")   CPU: the CPU fast path (kernels/<op>/cpu.py; SDPA for attention), else the
                       reference; CUDA: the upstream kernels (mamba_ssm, flash-attn) when installed,
                       else our Triton kernels, else the reference
    environment        NANOHYBRID_KERNELS="rglru_scan=triton,attention=sdpa"
    command line       train_small.py / sample.py --kernels=rglru_scan=triton (same syntax)
    code               with ops.use(rglru_scan="triton"): ...

The rungs of the ladder, each an implementation name:

    reference          nanohybrid/<concept>.py: the paper's maths in plain PyTorch, differentiated by autograd
    cpu, sdpa          kernels/<op>/cpu.py (sdpa.py): the same maths, fast on a CPU (written-out backward passes,
                       blocking, layout work); sdpa is PyTorch's fused attention
    triton             kernels/<op>/triton.py: Triton kernels with their backward (Triton's interpreter on a CPU)
    upstream           kernels/upstream.py: the field's production kernels, on CUDA

A value is an implementation name, "auto" (the default rule), or a student's function given as
"path/to/file.py:function", checked against the reference's signature when it is loaded. Naming an
implementation that cannot run on the input's device or dtype is an error, never a silent fallback.

Each implementation declares the devices and dtypes it supports, whether it has a backward pass, and
which calls it refuses (`refuses(*arguments)` gives the reason, or None): the upstream kernels cannot
express everything the reference can (flash-attn has no always-visible prefix inside a window). Auto
then takes the next implementation; an explicit selection raises the reason.
"""

import contextlib
import functools
import importlib.util
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

OPS = ("selective_scan", "ssd", "rglru_scan", "gated_delta_rule", "attention", "moe_experts", "causal_conv1d", "rms_norm")
REFERENCE_MODULES = {"selective_scan": "scan", "ssd": "ssd", "rglru_scan": "rglru", "gated_delta_rule": "delta_rule", "attention": "attention",
                     "moe_experts": "moe", "causal_conv1d": "layers", "rms_norm": "layers"}  # each op's reference
RUNGS = ("cpu", "sdpa", "triton", "upstream")  # the fast rungs, in kernels/<op>/<rung>.py (upstream: kernels/upstream.py)
FLOATS = (torch.float32, torch.bfloat16, torch.float16, torch.float64)  # what PyTorch code runs in
KERNEL_FLOATS = FLOATS[:3]  # what the upstream kernels take


def compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype the readable references compute in for this input: fp32 for fp32, bf16 and fp16 (states
    and sums are kept in fp32), fp64 for fp64, so that the parity suite's reference run in float64 is exact."""
    return torch.promote_types(tensor.dtype, torch.float32)


@dataclass(frozen=True)
class Implementation:
    op: str
    name: str
    function: Callable
    devices: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...] = FLOATS
    backward: bool = True
    refuses: Callable[..., str | None] | None = None  # (the op's arguments) -> why it cannot take them, or None
    state_gradient: bool = True  # whether gradients flow back from the final state (scans)

    def supports(self, device: str, dtype: torch.dtype) -> bool:
        return device in self.devices and dtype in self.dtypes

    def refusal(self, arguments: tuple) -> str | None:
        """Why this implementation cannot take a call with these arguments; None if it can (or none are given)."""
        return None if self.refuses is None or not arguments else self.refuses(*arguments)


REGISTRY: dict[str, dict[str, Implementation]] = {op: {} for op in OPS}
_selection_stack: list[dict[str, str]] = []
_rungs_loaded: set[str] = set()


def register(op: str, name: str, devices=("cpu", "cuda"), dtypes=FLOATS, backward: bool = True, refuses=None,
             state_gradient: bool = True):
    """Decorator: register `function` as implementation `name` of `op`."""
    if op not in REGISTRY:
        raise ValueError(f"unknown op {op!r}; ops are {', '.join(OPS)}")

    def decorate(function):
        REGISTRY[op][name] = Implementation(op, name, function, tuple(devices), tuple(dtypes), backward, refuses,
                                            state_gradient)
        return function
    return decorate


def implementations(op: str) -> dict[str, Implementation]:
    """Every registered implementation of `op`, its reference always included."""
    if op not in REGISTRY:
        raise ValueError(f"unknown op {op!r}; ops are {', '.join(OPS)}")
    importlib.import_module(f"{__package__}.{REFERENCE_MODULES[op]}")
    return REGISTRY[op]


def load_rung(rung: str) -> None:
    """Import every kernels/<op>/<rung>.py (for "upstream", kernels/upstream.py) so that they register.

    Triton's interpreter must be switched on before a kernel is defined when there is no GPU.
    """
    if rung in _rungs_loaded:
        return
    _rungs_loaded.add(rung)
    if rung == "triton":
        _interpret_triton_without_a_gpu()
    if rung == "upstream":
        importlib.import_module("kernels.upstream")
        return
    for op in OPS:
        if importlib.util.find_spec(f"kernels.{op}") and importlib.util.find_spec(f"kernels.{op}.{rung}"):
            importlib.import_module(f"kernels.{op}.{rung}")


def load_backends() -> None:
    """Every rung of every op registered: the CPU fast paths, the Triton kernels and the upstream adapters."""
    for rung in RUNGS:
        load_rung(rung)


def _interpret_triton_without_a_gpu() -> None:
    """Triton kernels defined after this run in Triton's interpreter when there is no GPU."""
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


@functools.cache
def _prepare_cpu() -> None:
    """Done once, the first time an implementation is chosen for a CPU call. SSM and RG-LRU states decay
    geometrically into subnormal floats (below 1e-38 in fp32), on which CPUs compute many times slower;
    flushing them to zero changes no result that matters. It holds for the whole process."""
    torch.set_flush_denormal(True)


def parse_selection(text: str) -> dict[str, str]:
    """"rglru_scan=triton,attention=sdpa" -> {"rglru_scan": "triton", "attention": "sdpa"};
    a bare name ("triton", "reference", "auto") selects it for every op."""
    selection = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        op, equals, name = item.partition("=")
        if not equals:
            selection.update({each: op for each in OPS})
            continue
        if op not in OPS:
            raise ValueError(f"unknown op {op!r} in kernel selection {text!r}; ops are {', '.join(OPS)}")
        selection[op] = name
    for op, name in selection.items():
        resolve(op, name)  # fail now, not at the first forward pass
    return selection


@functools.cache
def _parsed(text: str) -> dict[str, str]:
    return parse_selection(text)


def _environment_selection() -> dict[str, str]:
    return _parsed(os.environ.get("NANOHYBRID_KERNELS", ""))


@contextlib.contextmanager
def use(**selection: str):
    """with ops.use(rglru_scan="triton", attention="sdpa"): ..."""
    for op, name in selection.items():
        if op not in OPS:
            raise ValueError(f"unknown op {op!r}; ops are {', '.join(OPS)}")
        resolve(op, name)
    _selection_stack.append(selection)
    try:
        yield
    finally:
        _selection_stack.pop()


def load_student_function(op: str, spec: str) -> Implementation:
    """"path/to/file.py:function" -> an Implementation, after checking its parameters against the reference.
    Loaded again whenever the file changes (a student edits and re-grades in one notebook)."""
    path = spec.rpartition(":")[0]
    if not path or not Path(path).is_file():
        raise ValueError(f"{op}={spec}: no such file {path!r}; write path/to/file.py:function")
    return _load_student_function(op, spec, Path(path).stat().st_mtime_ns)


@functools.cache
def _load_student_function(op: str, spec: str, modified: int) -> Implementation:
    path, _, function_name = spec.rpartition(":")
    _interpret_triton_without_a_gpu()  # a student's file may define Triton kernels
    module_spec = importlib.util.spec_from_file_location(f"student_{op}_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as error:
        raise ValueError(f"{op}={spec}: {path} line {error.lineno}: SyntaxError: {error.msg}; fix the file and run again") from None
    except Exception as error:  # the file runs code at import that fails: say where, in one line
        raise ValueError(f"{op}={spec}: importing {path} raised {type(error).__name__}: {error}") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ValueError(f"{op}={spec}: {path} defines no function {function_name!r}")
    expected = list(inspect.signature(implementations(op)["reference"].function).parameters)
    found = list(inspect.signature(function).parameters)
    if found != expected:
        raise ValueError(f"{op}={spec}: {function_name}({', '.join(found)}) must take ({', '.join(expected)})")
    return Implementation(op, spec, function, ("cpu", "cuda"))


def resolve(op: str, name: str) -> Implementation | None:
    """The implementation a selection names (None for "auto"); an unknown name lists what is registered."""
    if name == "auto":
        return None
    if ".py:" in name:
        return load_student_function(op, name)
    if name not in implementations(op):
        if name in RUNGS:
            load_rung(name)
        else:
            load_backends()
    if name not in REGISTRY[op]:
        raise ValueError(f"unknown implementation {name!r} of {op}; registered: {', '.join(REGISTRY[op])}")
    return REGISTRY[op][name]


AUTO = {"cuda": ("upstream", "triton", "reference"), "cpu": ("cpu", "sdpa", "reference")}


def default(op: str, device: str, dtype: torch.dtype, arguments: tuple = ()) -> Implementation:
    """The "auto" rule: upstream kernels, else ours, on CUDA; the CPU fast path (SDPA for attention), else the
    reference, on a CPU; the first of these that runs on the device and dtype and does not refuse the call's
    `arguments`."""
    preference = AUTO.get(device, ("reference",))
    for rung in preference[:-1]:
        load_rung(rung)
    for name in preference:
        implementation = implementations(op).get(name)
        if implementation is not None and implementation.supports(device, dtype) and not implementation.refusal(arguments):
            return implementation
    raise ValueError(f"no implementation of {op} runs on {device} in {dtype}; registered: {', '.join(REGISTRY[op])}")


def select(op: str, device: str, dtype: torch.dtype, arguments: tuple = ()) -> Implementation:
    """The implementation selected for `op` (the call's `arguments`, when given, checked against its refusals)."""
    if device == "cpu":
        _prepare_cpu()
    name = "auto"
    for selection in [_environment_selection(), *_selection_stack]:
        name = selection.get(op, name)
    implementation = resolve(op, name)
    if implementation is None:
        return default(op, device, dtype, arguments)
    if not implementation.supports(device, dtype):
        raise ValueError(f"{op}={implementation.name} does not run on {device} in {dtype} "
                         f"(it supports {', '.join(implementation.devices)}); choose another or auto")
    reason = implementation.refusal(arguments)
    if reason:
        raise ValueError(f"{op}={implementation.name} cannot take this call: {reason}; choose another or auto")
    return implementation


def _run(op: str, *arguments):
    first = arguments[0]
    return select(op, first.device.type, first.dtype, arguments).function(*arguments)


# The ops, with the reference's signatures (see each reference function for shapes).
def selective_scan(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, initial_state=None):
    return _run("selective_scan", x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state)


def ssd(x, dt, A, B, C, chunk_size, initial_state=None):
    return _run("ssd", x, dt, A, B, C, chunk_size, initial_state)


def rglru_scan(x, log_a, reset, initial_state=None):
    return _run("rglru_scan", x, log_a, reset, initial_state)


def gated_delta_rule(q, k, v, g, beta, chunk_size, initial_state=None):
    return _run("gated_delta_rule", q, k, v, g, beta, chunk_size, initial_state)


def attention(q, k, v, query_index, key_index, query_document, key_document, max_distance, n_meta, scale):
    return _run("attention", q, k, v, query_index, key_index, query_document, key_document, max_distance, n_meta, scale)


def moe_experts(x, expert_weights, experts, gate_proj, up_proj, down_proj):
    return _run("moe_experts", x, expert_weights, experts, gate_proj, up_proj, down_proj)


def causal_conv1d(x, weight, bias=None, initial_state=None, starts=None):
    return _run("causal_conv1d", x, weight, bias, initial_state, starts)


def rms_norm(x, scale, group_size, eps):
    return _run("rms_norm", x, scale, group_size, eps)
