"""The field's production kernels behind the same ops, registered as "upstream" where they can run: on a
CUDA GPU, with the optional GPU packages installed (requirements-gpu.txt). The auto rule prefers them there.

    selective_scan   mamba_ssm's selective_scan_fn (CUDA); a decode step from a state: selective_state_update
    ssd              mamba_ssm's mamba_chunk_scan_combined (Triton: registered without mamba_ssm's CUDA build too)
    gated_delta_rule fla's chunk_gated_delta_rule (Triton; flash-linear-attention)
    attention        flash-attn's flash_attn_func, and flash_attn_varlen_func for packed documents
    causal_conv1d    causal-conv1d's causal_conv1d_fn (CUDA)

Each adapter only moves axes and renames arguments. What an upstream kernel cannot express, its `refuses`
names, and the auto rule then takes our Triton kernel for that call:
  - selective_scan_fn starts from a zero state (a state is taken only by a single decode step), and
    drops the final state's gradient (declared: state_gradient=False; training never uses it);
  - flash-attn keeps no always-visible prefix inside a window (Hymba's meta tokens in its SWA layers),
    cannot read a ring-buffer cache (keys out of stream order), and runs in fp16/bf16 only;
  - causal_conv1d_fn cuts the taps at documents (seq_idx) only without an initial state;
  - fla's chunk_gated_delta_rule takes key head dims up to 256, and no fp64 (its chunk length is its own, 64).

The adapters are made from the upstream functions they are given, so tests/test_upstream.py runs them
through the parity suite on a CPU with upstream's pure-PyTorch references standing in for the kernels.
"""

import sys
import types

import torch
import torch.nn.functional as F

from nanohybrid import ops
from nanohybrid.layers import input_documents, last_document_inputs


def _needs_gradients(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def selective_scan_adapter(selective_scan_fn, selective_state_update):
    """ops.selective_scan from mamba_ssm's selective_scan_fn (channels first: (b, d, l)) and, for a decode
    step from a state, selective_state_update (which updates the state in place)."""
    def selective_scan(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, initial_state=None):
        D, dt_bias = (None if t is None else t.float() for t in (D, dt_bias))  # mamba_ssm keeps both in fp32
        if initial_state is not None:  # one token (selective_scan_refusal)
            state = initial_state.float().clone()
            y = selective_state_update(state, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D,
                                       None if z is None else z[:, 0], dt_bias, dt_softplus)
            return y[:, None], state
        x, dt, B, C, z = (None if t is None else t.transpose(1, 2) for t in (x, dt, B, C, z))  # (b, ·, l)
        y, state = selective_scan_fn(x, dt, A, B, C, D, z, dt_bias, dt_softplus, return_last_state=True)
        return y.transpose(1, 2), state.float()
    return selective_scan


def selective_scan_refusal(x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state):
    if initial_state is not None and (x.shape[1] > 1 or _needs_gradients(x, dt, A, B, C, D, z, dt_bias, initial_state)):
        return "mamba_ssm's selective_scan_fn starts from a zero state (a state is taken by one decode step without gradients)"
    return None


def ssd_adapter(mamba_chunk_scan_combined):
    """ops.ssd from mamba_ssm's mamba_chunk_scan_combined: the same layout, (b, l, h, p) and (b, l, g, n)."""
    def ssd(x, dt, A, B, C, chunk_size, initial_state=None):
        y, state = mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, initial_states=initial_state,
                                             return_final_states=True)
        return y, state.float()
    return ssd


def gated_delta_rule_adapter(chunk_gated_delta_rule):
    """ops.gated_delta_rule from fla's chunk_gated_delta_rule: the same layout, (b, l, h, d). Our q comes scaled
    by 1/sqrt(d_k) already (the mixer scales it), so scale=1; fla keeps its states in fp32."""
    def gated_delta_rule(q, k, v, g, beta, chunk_size, initial_state=None):
        o, state = chunk_gated_delta_rule(q, k, v, g, beta, scale=1.0, output_final_state=True,
                                          initial_state=None if initial_state is None else initial_state.float())
        return o, state.float()
    return gated_delta_rule


def gated_delta_rule_refusal(q, k, v, g, beta, chunk_size, initial_state):
    if k.shape[-1] > 256:
        return f"fla's chunk_gated_delta_rule takes key head dims up to 256 (here {k.shape[-1]})"
    return None


def attention_adapter(flash_attn_func, flash_attn_varlen_func):
    """ops.attention from flash-attn, whose tensors are (b, l, h, hd) and whose mask is causal, aligned to the
    last key, with an optional window (i - left <= j <= i): one stream of keys, the queries its last l."""
    def attention(q, k, v, query_index, key_index, query_document, key_document, max_distance, n_meta, scale):
        batch, _, length, _ = q.shape
        head_dim_v = v.shape[-1]
        q, k, v = _one_head_dim(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        window = (-1, 0) if max_distance is None else (max_distance, 0)
        if _one_document(query_document, key_document, key_index, n_meta):
            out = flash_attn_func(q, k, v, softmax_scale=scale, causal=True, window_size=window)
        else:  # packed documents in a self-attention call: each document is a sequence of its own
            lengths = torch.cat([_run_lengths(row) for row in key_document])
            starts = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
            longest = int(lengths.max())
            out = flash_attn_varlen_func(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), starts, starts, longest,
                                         longest, softmax_scale=scale, causal=True, window_size=window)
            out = out.unflatten(0, (batch, length))
        return out[..., :head_dim_v].transpose(1, 2)  # (b, h, l, hd_v)
    return attention


def _one_head_dim(q, k, v):
    """flash-attn takes one head dim for q, k and v: zero-pad the narrower (Hymba's values are 2x wider);
    zeros add nothing to the scores, and the output's padding is cut off."""
    width = max(q.shape[-1], v.shape[-1])
    return (F.pad(t, (0, width - t.shape[-1])) for t in (q, k, v))


def _run_lengths(row: torch.Tensor) -> torch.Tensor:
    """(l,) document ids -> the length of each run of equal ids."""
    return torch.unique_consecutive(row, return_counts=True)[1]


def _one_document(query_document, key_document, key_index, n_meta) -> bool:
    """Every query and every non-meta key of a row in one document (meta tokens are visible anyway)."""
    tokens = key_document[:, int((key_index[0] < n_meta).sum()):]
    return bool((tokens == query_document[:, :1]).all()) and bool((query_document == query_document[:, :1]).all())


def attention_refusal(q, k, v, query_index, key_index, query_document, key_document, max_distance, n_meta, scale):
    length, keys = query_index.shape[1], key_index.shape[1]
    if not (bool((key_index.diff(dim=1) == 1).all()) and torch.equal(query_index, key_index[:, keys - length :])):
        return "flash-attn reads keys in stream order, the queries their last ones (not a ring-buffer cache)"
    if n_meta > 0 and max_distance is not None and bool((key_index[:, -1] > max_distance).any()):  # 0: first meta token
        return "flash-attn keeps no always-visible meta tokens inside a sliding window"
    if not _one_document(query_document, key_document, key_index, n_meta) and (length != keys or n_meta > 0):
        return "flash-attn separates packed documents only in a self-attention call without meta tokens"
    return None


def causal_conv1d_adapter(causal_conv1d_fn):
    """ops.causal_conv1d from causal-conv1d's causal_conv1d_fn, which takes x as (b, c, l): our (b, l, c)
    seen channels-last, the layout in which it returns the final state. With document starts it returns
    none, and the final state (the last inputs of the last document) is read off as the reference does."""
    def causal_conv1d(x, weight, bias=None, initial_state=None, starts=None):
        if starts is not None and bool(starts.any()):  # then without an initial state (causal_conv1d_refusal)
            last = weight.shape[1] - 1
            document = input_documents(starts, last)  # (b, K-1+l); the zero state's inputs are document 0
            y = causal_conv1d_fn(x.transpose(1, 2), weight, bias, seq_idx=document[:, last:].to(torch.int32))
            padded = F.pad(x.transpose(1, 2), (last, 0))  # (b, c, K-1+l)
            return y.transpose(1, 2), last_document_inputs(padded, document, last)
        y, state = causal_conv1d_fn(x.transpose(1, 2), weight, bias, initial_states=initial_state,
                                    return_final_states=True)
        return y.transpose(1, 2), state
    return causal_conv1d


def causal_conv1d_refusal(x, weight, bias, initial_state, starts):
    if initial_state is not None and starts is not None and bool(starts.any()):
        return "causal-conv1d's causal_conv1d_fn cuts at documents (seq_idx) only without an initial state"
    return None


def import_selective_scan_extension() -> bool:
    """Import mamba_ssm's CUDA extension (selective_scan_cuda, behind selective_scan_fn), or put an empty
    module in its place; True if the real one is there.

    mamba_ssm imports the extension when the package is imported, even for its Triton kernels (the SSD,
    the decode step). Built without it (MAMBA_SKIP_CUDA_BUILD, or copied as Python files) the Triton
    kernels still run, so an empty module stands in for it, as in the tests, and selective_scan_fn is left out.
    """
    extension = sys.modules.get("selective_scan_cuda")
    if extension is None:
        try:
            import selective_scan_cuda as extension
        except ImportError:
            extension = sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
    return hasattr(extension, "fwd")


def register_installed() -> None:
    """Register each upstream kernel whose package imports, when there is a GPU to run it."""
    if not torch.cuda.is_available():
        return
    scan_built = import_selective_scan_extension()
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except ImportError:
        pass
    else:
        if scan_built:
            ops.register("selective_scan", "upstream", devices=("cuda",), dtypes=ops.KERNEL_FLOATS, refuses=selective_scan_refusal,
                         state_gradient=False)(selective_scan_adapter(selective_scan_fn, selective_state_update))
        ops.register("ssd", "upstream", devices=("cuda",), dtypes=ops.KERNEL_FLOATS)(ssd_adapter(mamba_chunk_scan_combined))
    try:
        from causal_conv1d import causal_conv1d_fn
    except ImportError:
        pass
    else:
        ops.register("causal_conv1d", "upstream", devices=("cuda",), dtypes=ops.KERNEL_FLOATS,
                     refuses=causal_conv1d_refusal)(causal_conv1d_adapter(causal_conv1d_fn))
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except ImportError:
        pass
    else:
        ops.register("gated_delta_rule", "upstream", devices=("cuda",), dtypes=ops.KERNEL_FLOATS,
                     refuses=gated_delta_rule_refusal)(gated_delta_rule_adapter(chunk_gated_delta_rule))
    try:
        from flash_attn import flash_attn_func, flash_attn_varlen_func
    except ImportError:
        return
    ops.register("attention", "upstream", devices=("cuda",), dtypes=(torch.bfloat16, torch.float16),
                 refuses=attention_refusal)(attention_adapter(flash_attn_func, flash_attn_varlen_func))


register_installed()
