"""The upstream adapters (kernels/upstream.py) through the parity suite on a CPU: mamba_ssm's own
pure-PyTorch references stand in for its kernels, and transcriptions of flash-attn's and causal-conv1d's
documented semantics for theirs (neither has a CPU build). This checks what the adapters do (axes,
argument names, the calls they refuse); the kernels themselves are checked by tests/test_kernels.py on
a GPU, where they register."""

import pytest
import torch

from kernels import upstream
from nanohybrid import ops
from nanohybrid.tools.parity import check_implementation
from tests.oracles import import_mamba_ssm_references, modeling_qwen3_next
from tests.test_oracles_mamba import reference_ssd


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1)):
    """flash-attn's documented semantics: q (b, l, h, hd), k, v (b, s, h_kv, hd); query head i reads key
    head i // (h / h_kv); query i may see keys [i + s - l - left, i + s - l + right] (causal: right = 0)."""
    length, keys = q.shape[1], k.shape[1]
    aligned = torch.arange(length)[:, None] + keys - length  # the query's own position among the keys
    key = torch.arange(keys)[None, :]
    left, right = window_size
    visible = (key <= aligned) if causal else torch.ones(length, keys, dtype=torch.bool)
    if left >= 0:
        visible &= key >= aligned - left
    if right >= 0:
        visible &= key <= aligned + right
    group = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
    scores = torch.einsum("blhd,bshd->bhls", q, k) * softmax_scale
    return torch.einsum("bhls,bshd->blhd", scores.masked_fill(~visible, float("-inf")).softmax(-1), v)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1)):
    """flash-attn's variable-length form: sequences packed along the first axis, cut at cu_seqlens."""
    pieces = [flash_attn_func(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], dropout_p, softmax_scale, causal, window_size)
              for q0, q1, k0, k1 in zip(cu_seqlens_q[:-1], cu_seqlens_q[1:], cu_seqlens_k[:-1], cu_seqlens_k[1:])]
    return torch.cat(pieces, dim=1)[0]


def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, initial_states=None, return_final_states=False):
    """mamba_chunk_scan_combined's interface over mamba_ssm's minimal SSD (ssd_minimal_discrete)."""
    _, ssd_minimal_discrete = import_mamba_ssm_references()
    y, final = reference_ssd(ssd_minimal_discrete, x, dt, A, B, C, initial_states,
                             pad_to=-(-x.shape[1] // chunk_size) * chunk_size, chunk_size=chunk_size)
    return (y, final) if return_final_states else y


def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False):
    """causal-conv1d's documented semantics and limits: x (b, c, l), weight (c, K); seq_idx (b, l) keeps every
    tap inside its own sequence, and then comes without initial states and returns no final states; final
    states come only from a channels-last x (x.stride(1) == 1)."""
    assert seq_idx is None or (initial_states is None and not return_final_states), "seq_idx: no states"
    assert not return_final_states or x.stride(1) == 1, "final states need a channels-last x"
    length, last = x.shape[-1], weight.shape[1] - 1
    before = x.new_zeros(*x.shape[:2], last) if initial_states is None else initial_states
    padded = torch.cat([before, x], dim=-1)
    taps = [weight[:, k, None] * padded[:, :, k : k + length] for k in range(last + 1)]
    if seq_idx is not None:
        sequence = torch.nn.functional.pad(seq_idx, (last, 0), value=-1)  # the zero padding is in no sequence
        taps = [tap * (sequence[:, None, k : k + length] == seq_idx[:, None]) for k, tap in enumerate(taps)]
    out = sum(taps) + (0 if bias is None else bias[:, None])
    return (out, padded[:, :, -last:]) if return_final_states else out


def chunk_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False):
    """fla's chunk_gated_delta_rule interface over transformers' torch_chunk_gated_delta_rule (Qwen3-Next's CPU
    path), which always scales q by 1/sqrt(d_k) itself: q is given to it times scale · sqrt(d_k)."""
    scale = k.shape[-1] ** -0.5 if scale is None else scale
    q = q * (scale * k.shape[-1] ** 0.5)
    return modeling_qwen3_next.torch_chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=64,
                                                            initial_state=initial_state,
                                                            output_final_state=output_final_state)


def adapters():
    """op -> (adapter function, its refusals, whether its final state carries a gradient), made from the stand-ins."""
    selective_scan_ref, _ = import_mamba_ssm_references()
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update_ref
    return {
        "selective_scan": (upstream.selective_scan_adapter(selective_scan_ref, selective_state_update_ref),
                           upstream.selective_scan_refusal, False),
        "ssd": (upstream.ssd_adapter(mamba_chunk_scan_combined), None, True),
        "gated_delta_rule": (upstream.gated_delta_rule_adapter(chunk_gated_delta_rule),
                             upstream.gated_delta_rule_refusal, True),
        "attention": (upstream.attention_adapter(flash_attn_func, flash_attn_varlen_func), upstream.attention_refusal, True),
        "causal_conv1d": (upstream.causal_conv1d_adapter(causal_conv1d_fn), upstream.causal_conv1d_refusal, True),
    }


# What each adapter must take, and what it must refuse or take forward only (no backward upstream).
EXPECTED = {
    "selective_scan": {"refused": {"odd length, D, z, dt bias, initial state"}, "forward only": {"one token"}},
    "ssd": {"refused": set(), "forward only": set()},
    "gated_delta_rule": {"refused": set(), "forward only": set()},
    "attention": {"refused": {"sliding window 8, 4 meta tokens, MQA, wide values", "decoding from a ring buffer with holes"},
                  "forward only": set()},
    "causal_conv1d": {"refused": {"documents after an initial state"}, "forward only": set()},
}


@pytest.mark.parametrize("op", list(EXPECTED))
def test_adapter_passes_the_parity_suite_on_what_it_takes(op):
    function, refuses, state_gradient = adapters()[op]
    checks = check_implementation(op, function, refuses=refuses, state_gradient=state_gradient)
    failures = [str(check) for check in checks if not check.passed]
    assert checks and not failures, "\n" + "\n".join(failures)
    assert {c.case for c in checks if c.quantity.startswith("refused")} == EXPECTED[op]["refused"]
    assert {c.case for c in checks if c.quantity.startswith("gradients not compared")} == EXPECTED[op]["forward only"]
    assert any(c.quantity.startswith("d") for c in checks), "no gradient was compared"


def test_fla_refuses_key_heads_wider_than_its_kernels():
    q = k = torch.zeros(1, 4, 2, 512)
    v, g = torch.zeros(1, 4, 2, 8), torch.zeros(1, 4, 2)
    assert "up to 256" in upstream.gated_delta_rule_refusal(q, k, v, g, g, 64, None)
    assert upstream.gated_delta_rule_refusal(q[..., :256], k[..., :256], v, g, g, 64, None) is None


def test_a_wrong_axis_in_an_adapter_fails_the_suite():
    """The suite sees through the adapters: flash-attn given (b, h, l, hd) instead of (b, l, h, hd) fails."""
    def heads_first(q, k, v, *args, **kwargs):
        return flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), *args, **kwargs).transpose(1, 2)
    function = upstream.attention_adapter(heads_first, flash_attn_varlen_func)
    checks = check_implementation("attention", function, refuses=upstream.attention_refusal,
                                  cases=["causal, GQA 4/2, odd length"])
    assert any(not check.passed for check in checks)


@pytest.fixture
def registered(monkeypatch):
    """The adapters registered as "upstream", as register_installed() does on a GPU, but for the CPU."""
    for op, (function, refuses, state_gradient) in adapters().items():
        monkeypatch.setitem(ops.REGISTRY[op], "upstream", ops.Implementation(
            op, "upstream", function, ("cpu", "cuda"), ops.FLOATS, True, refuses, state_gradient))


def test_auto_takes_upstream_where_it_can_and_the_next_kernel_where_it_refuses(registered):
    from nanohybrid.tools.parity import positional_arguments
    from nanohybrid.tools.parity_cases import CASES, case_inputs
    def arguments(case):
        inputs = case_inputs("attention", CASES["attention"][case], torch.Generator().manual_seed(0))
        return positional_arguments("attention", inputs)
    taken, refused = arguments("causal, GQA 4/2, odd length"), arguments("decoding from a ring buffer with holes")
    assert ops.default("attention", "cuda", torch.bfloat16, taken).name == "upstream"
    assert ops.default("attention", "cuda", torch.bfloat16, refused).name != "upstream"
    with ops.use(attention="upstream"), pytest.raises(ValueError, match="attention=upstream cannot take this call: "
                                                      "flash-attn reads keys in stream order"):
        ops.attention(*refused)


@pytest.mark.parametrize("arch, selected", [("llama3", ["attention"]), ("mamba", ["selective_scan", "causal_conv1d"]),
                                            ("mamba2", ["ssd", "causal_conv1d"]), ("griffin", ["causal_conv1d"]),
                                            ("gated-deltanet", ["gated_delta_rule", "causal_conv1d"])])
def test_tiny_model_on_the_upstream_adapters_matches_the_reference_and_decodes_alike(registered, arch, selected):
    """Training (logits, every gradient) and cached greedy decoding with the adapter selected."""
    from nanohybrid.generate import decode, prefill
    from nanohybrid.model import LanguageModel
    from nanohybrid.presets import get_config
    from nanohybrid.tools.parity import assert_model_matches_reference

    torch.manual_seed(0)
    model = LanguageModel(get_config(f"{arch}-tiny"))
    tokens = torch.randint(0, 320, (2, 13))
    selection = dict.fromkeys(selected, "upstream")
    assert_model_matches_reference(model, tokens, selection)
    continuations = []
    for each in ({}, selection):
        with ops.use(**each), torch.no_grad():
            logits, cache = prefill(model, tokens[:, :5])
            continuations.append(torch.stack(list(decode(model, logits, cache, 6, temperature=0)), dim=1))
    assert torch.equal(*continuations)


@pytest.mark.parametrize("extension", ["not built", "built"])
def test_mamba_ssm_triton_kernels_register_without_its_cuda_extension(monkeypatch, extension):
    """On a GPU, mamba_ssm installed without its CUDA build (MAMBA_SKIP_CUDA_BUILD) still gives its Triton SSD;
    selective_scan_fn, which needs the extension, registers only when the extension is there."""
    import sys
    import types

    import_mamba_ssm_references()  # mamba_ssm importable on CPU, as on a GPU machine without its CUDA build
    if extension == "built":
        monkeypatch.setitem(sys.modules, "selective_scan_cuda", types.SimpleNamespace(fwd=lambda *args: None))
    else:
        monkeypatch.delitem(sys.modules, "selective_scan_cuda")  # as on a machine where it was never built
    monkeypatch.setattr(ops, "REGISTRY", {op: dict(implementations) for op, implementations in ops.REGISTRY.items()})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    upstream.register_installed()
    assert ops.REGISTRY["ssd"]["upstream"].devices == ("cuda",)
    assert ("upstream" in ops.REGISTRY["selective_scan"]) == (extension == "built")
    assert hasattr(sys.modules["selective_scan_cuda"], "fwd") == (extension == "built")  # else the stand-in
