"""The independent implementations the tests compare against, imported in the order that works on CPU.

transformers decides when each modeling module is imported whether to bind mamba_ssm's CUDA/Triton
kernels (`use_kernel_func_from_hub_with_fallback`), and once bound to them it fails on a CPU (a
`torch.cuda.device` TypeError). So: import transformers' modeling modules first, which binds their
pure-PyTorch paths; only then make mamba_ssm importable by giving it a stub for its CUDA extension,
whose absence is the only thing stopping it on a CPU-only machine. Test modules import from here.

`bash tests/run.sh` installs them (tests/install_oracles.sh) and runs the suite. Without them the oracle
tests fail, saying how to install them: a missing oracle is a missing proof, never a skip.
"""

import sys
import types

import pytest
import torch

try:
    import transformers
except ImportError:
    raise ImportError("the oracle tests need transformers: run the tests with bash tests/run.sh, which installs it") from None

from transformers.models.jamba import modeling_jamba  # noqa: E402
from transformers.models.llama import modeling_llama  # noqa: E402
from transformers.models.mamba import modeling_mamba  # noqa: E402
from transformers.models.mamba2 import modeling_mamba2  # noqa: E402
from transformers.models.mistral import modeling_mistral  # noqa: E402
from transformers.models.qwen3_next import modeling_qwen3_next  # noqa: E402
from transformers.models.recurrent_gemma import modeling_recurrent_gemma  # noqa: E402


def assert_every_parameter_copied(ours: torch.nn.Module, theirs: torch.nn.Module, source) -> None:
    """source(our_name) -> (tensor read from `theirs`, its name there, or a tuple of the names it was assembled
    from). Every parameter of ours must equal its source and every parameter of theirs must be read, so that
    none silently stays random."""
    their_parameters = dict(theirs.named_parameters())
    read = set()
    for name, parameter in ours.named_parameters():
        tensor, source_names = source(name)
        source_names = (source_names,) if isinstance(source_names, str) else source_names
        missing = [source_name for source_name in source_names if source_name not in their_parameters]
        assert not missing, f"{name} <- {missing}: no such parameter"
        assert tensor.shape == parameter.shape, f"{name} <- {source_names}: {tuple(tensor.shape)} vs {tuple(parameter.shape)}"
        assert torch.equal(tensor, parameter), f"{name} was not copied from {source_names}"
        read.update(source_names)
    assert read == set(their_parameters), f"never read: {sorted(set(their_parameters) - read)}"
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


def import_mamba_ssm_references():
    """(selective_scan_ref, ssd_minimal_discrete) from mamba_ssm, or fail the calling test saying how to install it."""
    sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
    try:
        from mamba_ssm.modules.ssd_minimal import ssd_minimal_discrete
        from mamba_ssm.ops.selective_scan_interface import selective_scan_ref
    except ImportError as error:
        pytest.fail(f"mamba_ssm's references are not installed ({error}): run the tests with bash tests/run.sh")
    return selective_scan_ref, ssd_minimal_discrete


__all__ = ["transformers", "modeling_jamba", "modeling_llama", "modeling_mamba", "modeling_mamba2", "modeling_mistral",
           "modeling_qwen3_next", "modeling_recurrent_gemma", "assert_every_parameter_copied", "import_mamba_ssm_references"]
