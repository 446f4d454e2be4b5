"""The parity suite's cases (nanohybrid/tools/parity.py): for every op, inputs chosen to break kernels.

Lengths that are not multiples of a block or chunk; batch, heads and groups above one; non-zero initial
states; single-token decoding; masks with holes (a ring-buffer cache with empty slots, packed documents);
an expert no token is routed to; strong decay. Each case is a dict of sizes and switches, which
case_inputs turns into the op's keyword arguments, in fp32 on the CPU, from a seeded generator.

Strong decay (cases with decay="strong"): Δ = softplus(N(1, 1)) (S6: its dt_bias added inside) and
A = -exp(3 + N(0, 1)/2), one A per SSD head, per S6 channel and state entry, so every one forgets within
a few steps (Δ·|A| from 6 to 80 for 90% of the steps, the median 25); the RG-LRU's log a and the gated delta
rule's g = -exp(2·N(0, 1)) span both ends, from -0.04 to -27 for 90% of the steps. Long sequences, SSD chunks of 64
and 256 and delta-rule chunks of 64 on lengths that are a multiple of neither. Inside a chunk of 256
the cumulative log decay reaches ~10⁴, where fp32's spacing is ~1e-3: a decay taken as exp(cum_t - cum_s)
or exp(cum_end - cum_s), or a gradient taken as a difference of sums over the chunk, is off by that much
wherever it matters, and dA misses by 2e-4 to 2e-3. A decay built from exactly its own terms (a segment
sum, a sum to the chunk's end) is rounded relative to its own exponent, which matters only where that
exponent is small (exp of a large one is ~0); these cases then stay at the ~1e-7 rounding of the others,
and KERNEL_FP32 holds with the same margin. (The delta rule's cumulative g reaches ~500 in a chunk of 64: a
difference form, transformers' torch_chunk_gated_delta_rule, is off by ~3e-6 there, 30x the others' rounding.)
"""

import torch
import torch.nn.functional as F

from .. import ops


def case_inputs(op: str, case: dict, generator: torch.Generator) -> dict:
    """The keyword arguments of one case, in fp32 on the CPU."""
    def randn(*shape):
        return torch.randn(*shape, generator=generator)
    strong = case.get("decay") == "strong"  # the module docstring's "strong decay"
    if op == "selective_scan":
        b, l, d, n = case["shape"]
        x, dt = randn(b, l, d), randn(b, l, d)
        A = -torch.exp(3 + 0.5 * randn(d, n)) if strong else -torch.exp(randn(d, n) * 0.5)
        inputs = dict(x=x, dt=dt + 1 if strong else dt - 1, A=A, B=randn(b, l, n), C=randn(b, l, n))
        if case.get("full", True):
            inputs.update(D=randn(d), z=randn(b, l, d), dt_bias=randn(d) * 0.5, dt_softplus=True)
            if case.get("initial", True):
                inputs["initial_state"] = randn(b, d, n)
        else:
            inputs["dt"] = F.softplus(inputs["dt"])
        return inputs
    if op == "ssd":
        b, l, h, p, g, n, chunk = case["shape"]
        x, dt = randn(b, l, h, p), randn(b, l, h)
        A = -torch.exp(3 + 0.5 * randn(h)) if strong else -torch.exp(randn(h))
        inputs = dict(x=x, dt=F.softplus(dt + 1 if strong else dt - 1), A=A, B=randn(b, l, g, n),
                      C=randn(b, l, g, n), chunk_size=chunk)
        if case.get("initial", True):
            inputs["initial_state"] = randn(b, h, p, n)
        return inputs
    if op == "rglru_scan":
        b, l, r = case["shape"]
        reset = torch.zeros(b, l, dtype=torch.bool)
        for row, position in case.get("resets", []):
            reset[row, position] = True
        x = randn(b, l, r)
        log_a = -torch.exp(2 * randn(b, l, r)) if strong else -F.softplus(randn(b, l, r)) * 0.3
        inputs = dict(x=x, log_a=log_a, reset=reset)
        if case.get("initial", True):
            inputs["initial_state"] = randn(b, r)
        return inputs
    if op == "gated_delta_rule":  # q and k L2-normalised per head, q scaled by 1/sqrt(d_k), as the mixer passes them
        b, l, h, d_k, d_v, chunk = case["shape"]
        q, k = F.normalize(randn(b, l, h, d_k), dim=-1) * d_k**-0.5, F.normalize(randn(b, l, h, d_k), dim=-1)
        g = -torch.exp(2 * randn(b, l, h)) if strong else -0.5 * F.softplus(randn(b, l, h))
        inputs = dict(q=q, k=k, v=randn(b, l, h, d_v), g=g, beta=torch.sigmoid(randn(b, l, h)), chunk_size=chunk)
        if case.get("initial", True):
            inputs["initial_state"] = randn(b, h, d_k, d_v)
        return inputs
    if op == "attention":
        b, h, h_kv, l, s, hd, hd_v = case["shape"]
        query_index, key_index, query_document, key_document = case["layout"](b, l, s)
        return dict(q=randn(b, h, l, hd), k=randn(b, h_kv, s, hd), v=randn(b, h_kv, s, hd_v),
                    query_index=query_index, key_index=key_index, query_document=query_document,
                    key_document=key_document, max_distance=case.get("max_distance"), n_meta=case.get("n_meta", 0),
                    scale=hd**-0.5)
    if op == "moe_experts":
        t, d, hidden, n, k = case["shape"]
        logits = randn(t, n)
        if "unused_expert" in case:
            logits[:, case["unused_expert"]] = -1e9  # no token is routed to it
        weights, experts = torch.topk(logits.softmax(-1), k, dim=-1)
        return dict(x=randn(t, d), expert_weights=weights, experts=experts, gate_proj=randn(n, hidden, d) * d**-0.5,
                    up_proj=randn(n, hidden, d) * d**-0.5, down_proj=randn(n, d, hidden) * hidden**-0.5)
    if op == "causal_conv1d":
        b, l, c, K = case["shape"]
        starts = None
        if "starts" in case:
            starts = torch.zeros(b, l, dtype=torch.bool)
            for row, position in case["starts"]:
                starts[row, position] = True
        inputs = dict(x=randn(b, l, c), weight=randn(c, K) * K**-0.5, starts=starts)
        if case.get("bias", True):
            inputs["bias"] = randn(c)
        if case.get("initial", True):
            inputs["initial_state"] = randn(b, c, K - 1)
        return inputs
    if op == "rms_norm":
        b, l, D, group_size = case["shape"]
        return dict(x=randn(b, l, D) * 3, scale=1 + 0.5 * randn(D), group_size=group_size, eps=1e-6)
    raise ValueError(f"unknown op {op!r}; ops are {', '.join(ops.OPS)}")


def prefill_layout(b, l, s):
    """Prefill of s keys, the last l of them queried: one document, every slot filled in order."""
    key_index = torch.arange(s).expand(b, s)
    return key_index[:, s - l :], key_index, torch.ones(b, l, dtype=torch.long), torch.ones(b, s, dtype=torch.long)


def _ring_decode(b, l, s):
    """Decoding l tokens as the cache lays them out: 4 meta slots, a ring of s - 4 - l slots written
    modulo its size (so out of order), then the new tokens. Row 0 has wrapped its ring; row 1, at a
    different length, has not filled it yet: its slots never written hold EMPTY."""
    from ..cache import EMPTY
    ring, rows = s - 4 - l, []
    for length in (4 + 3 * ring + 1, 4 + ring - 2)[:b]:
        slots = [EMPTY] * ring
        for i in range(max(4, length - ring), length):
            slots[(i - 4) % ring] = i
        rows.append(list(range(4)) + slots + list(range(length, length + l)))
    key_index = torch.tensor(rows)
    return key_index[:, -l:], key_index, torch.ones(b, l, dtype=torch.long), torch.ones(b, s, dtype=torch.long)


def _documents(b, l, s):
    """Three packed documents; attention must stop at their boundaries."""
    query_index, key_index, _, _ = prefill_layout(b, l, s)
    document = torch.bucketize(key_index, torch.tensor([s // 4, 2 * s // 3]), right=True)  # uneven lengths
    return query_index, key_index, document[:, s - l :], document


CASES = {
    "selective_scan": {
        "odd length, D, z, dt bias, initial state": dict(shape=(2, 37, 12, 4)),
        "bare, state 16": dict(shape=(1, 16, 8, 16), full=False),
        "one token": dict(shape=(3, 1, 8, 4)),
        "strong decay, long, D, z, dt bias, no initial state": dict(shape=(1, 100, 8, 4), decay="strong",
                                                                    initial=False),
    },
    "ssd": {
        "odd length, 2 groups, initial state": dict(shape=(2, 37, 4, 8, 2, 8, 16)),
        "two whole chunks, no initial state": dict(shape=(1, 64, 2, 16, 1, 16, 32), initial=False),
        "one token": dict(shape=(2, 1, 4, 8, 2, 8, 16)),
        "strong decay, chunks of 64, 4 heads per group": dict(shape=(1, 100, 4, 4, 1, 4, 64), decay="strong"),
        "strong decay, chunks of 256, length 500, no initial state": dict(shape=(2, 500, 8, 4, 2, 4, 256),
                                                                          decay="strong", initial=False),
    },
    "rglru_scan": {
        "odd length, resets, initial state": dict(shape=(2, 37, 24), resets=[(0, 0), (1, 11), (1, 30)]),
        "long, no reset, no initial state": dict(shape=(1, 64, 40), initial=False),
        "one token": dict(shape=(3, 1, 16), resets=[(2, 0)]),
        "strong decay, long, initial state": dict(shape=(2, 100, 24), decay="strong"),
    },
    "gated_delta_rule": {
        "odd length, initial state": dict(shape=(2, 37, 3, 8, 6, 16)),
        "two whole chunks, no initial state": dict(shape=(1, 32, 2, 16, 8, 16), initial=False),
        "one token": dict(shape=(2, 1, 3, 8, 6, 16)),
        "strong decay, chunks of 64, long, initial state": dict(shape=(1, 100, 2, 8, 8, 64), decay="strong"),
    },
    "attention": {
        "causal, GQA 4/2, odd length": dict(shape=(2, 4, 2, 37, 37, 16, 16), layout=prefill_layout),
        "sliding window 8, 4 meta tokens, MQA, wide values": dict(shape=(1, 4, 1, 41, 41, 16, 32), layout=prefill_layout,
                                                                 max_distance=8, n_meta=4),
        "decoding from a ring buffer with holes": dict(shape=(2, 2, 2, 3, 19, 16, 16), layout=_ring_decode,
                                                       max_distance=12, n_meta=4),
        "three packed documents": dict(shape=(1, 2, 1, 30, 30, 8, 8), layout=_documents),
        "sliding window 6, the last 9 of 30 keys queried": dict(shape=(2, 2, 1, 9, 30, 8, 8), layout=prefill_layout,
                                                               max_distance=6),
    },
    "moe_experts": {
        "top-2 of 4, odd token count": dict(shape=(37, 16, 24, 4, 2)),
        "top-1 of 8, an expert without tokens": dict(shape=(20, 8, 16, 8, 1), unused_expert=3),
    },
    "causal_conv1d": {
        "odd length, bias, initial state": dict(shape=(2, 37, 12, 4)),
        "documents, no bias, no initial state": dict(shape=(2, 29, 8, 4), starts=[(0, 0), (0, 9), (1, 20), (1, 27)],
                                                     bias=False, initial=False),
        "documents after an initial state": dict(shape=(2, 13, 8, 4), starts=[(0, 2), (1, 11)]),
        "one token, initial state": dict(shape=(3, 1, 8, 4)),
    },
    "rms_norm": {
        "odd token count": dict(shape=(2, 37, 24, 24)),
        "4 groups (Mamba-2's grouped norm)": dict(shape=(3, 5, 32, 8)),
        "one token": dict(shape=(1, 1, 16, 16)),
    },
}
