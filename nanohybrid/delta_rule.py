"""The gated delta rule (Gated DeltaNet): its recurrence, one-token step and chunked (WY / UT) form.

References: Yang, Kautz & Hatamizadeh 2024, "Gated Delta Networks: Improving Mamba2 with Delta Rule"
(arXiv 2412.06464), §2-3, eq. (10); the chunked form of Yang et al. 2024, "Parallelizing Linear
Transformers with the Delta Rule over Sequence Length" (arXiv 2406.06484), §3. docs/delta_rule.md
derives the chunked form step by step.

Per head, the state S is a (d_k × d_v) matrix, a key -> value memory read by o_t = S_tᵀ q_t:

    S_t = α_t S_{t-1} + β_t k_t (v_t − α_t S_{t-1}ᵀ k_t)ᵀ          o_t = S_tᵀ q_t
        = α_t (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ

α_t = exp(g_t) ∈ (0, 1] decays the whole memory (Mamba-2's gate); the delta term then moves what the
memory returns for key k_t towards v_t, by the fraction β_t ∈ (0, 1): one step of online regression on
‖Sᵀ k_t − v_t‖² / 2 with learning rate β_t, for a unit key. Without the gate (g = 0) it is DeltaNet;
without the delta term it is gated linear attention. The mixer (gated_deltanet.py) L2-normalises q and k
and scales q by 1/√d_k before the op.

The chunked form. Inside a chunk of C positions, with γ_t = exp(g_1 + … + g_t) the decay from the chunk's
start and S_0 the state there, write the update as S_t = α_t S_{t-1} + k_t u_tᵀ. Unrolling,

    S_t = γ_t S_0 + Σ_{s≤t} (γ_t/γ_s) k_s u_sᵀ,   u_t = β_t (v_t − γ_t S_0ᵀ k_t − Σ_{s<t} (γ_t/γ_s) (k_tᵀ k_s) u_s).

The u_t depend on each other only through earlier ones: a unit lower-triangular system (I + A) U = B,
A[t, s] = β_t (γ_t/γ_s) k_tᵀ k_s for s < t. Its solution by forward substitution, U = T (β ⊙ V) −
T (β γ ⊙ K) S_0 with T = (I + A)⁻¹, is the UT transform (the WY representation of the chunk's product of
Householder-like factors). Then, with matrix products only,

    O = γ ⊙ (Q S_0) + (Q Kᵀ ∘ Γ) U,   Γ[t, s] = γ_t/γ_s for s ≤ t, else 0,
    S_C = γ_C S_0 + Σ_s (γ_C/γ_s) k_s u_sᵀ,

and S_C starts the next chunk: O(l·C) work instead of the recurrence's l sequential matrix updates.
Every ratio γ_t/γ_s is exp of the sum of g over exactly its own positions (ssd.segment_sum), never a
difference of two cumulative sums, which strong decay makes large and fp32 then rounds (as in ssd.py).

Shape glossary
  b batch   l length   h heads   d_k key (and query) head dim   d_v value head dim   C chunk length
  q, k (b, l, h, d_k)   v (b, l, h, d_v)   g (b, l, h), log α ≤ 0   beta (b, l, h), in (0, 1)
  state (b, h, d_k, d_v), fp32 (fp64 for fp64 inputs: ops.compute_dtype)
"""

import torch
import torch.nn.functional as F

from . import ops
from .ssd import segment_sum


def initial_state_or_zeros(k: torch.Tensor, v: torch.Tensor, initial_state: torch.Tensor | None) -> torch.Tensor:
    """S_0 (b, h, d_k, d_v) in the compute dtype: the given state, or zeros."""
    if initial_state is None:
        return k.new_zeros(*k.shape[:1], k.shape[2], k.shape[3], v.shape[3], dtype=ops.compute_dtype(v))
    return initial_state.to(ops.compute_dtype(v))


def gated_delta_step(state, q, k, v, g, beta):
    """One token. state (b, h, d_k, d_v); q, k (b, h, d_k); v (b, h, d_v); g, beta (b, h) -> o (b, h, d_v), new state."""
    dtype = state.dtype
    q, k, v, g, beta = (t.to(dtype) for t in (q, k, v, g, beta))
    state = torch.exp(g)[:, :, None, None] * state  # α_t S_{t-1}
    prediction = torch.einsum("bhkv,bhk->bhv", state, k)  # what the memory returns for k_t
    correction = beta[:, :, None] * (v - prediction)  # β_t (v_t − α_t S_{t-1}ᵀ k_t)
    state = state + torch.einsum("bhk,bhv->bhkv", k, correction)
    return torch.einsum("bhkv,bhk->bhv", state, q), state


def gated_delta_recurrent(q, k, v, g, beta, initial_state=None):
    """The recurrence, one token at a time. Returns o (b, l, h, d_v) in v's dtype and the final state."""
    state = initial_state_or_zeros(k, v, initial_state)
    outputs = []
    for t in range(q.shape[1]):
        o, state = gated_delta_step(state, q[:, t], k[:, t], v[:, t], g[:, t], beta[:, t])
        outputs.append(o)
    return torch.stack(outputs, dim=1).to(v.dtype), state


def to_chunks(t: torch.Tensor, chunk: int, dtype: torch.dtype) -> torch.Tensor:
    """(b, l, h, ...) -> (b, h, c, C, ...) in `dtype`, the tail padded with zeros to whole chunks of C."""
    t = F.pad(t.to(dtype), (0, 0) * (t.dim() - 2) + (0, -t.shape[1] % chunk))
    return t.unflatten(1, (-1, chunk)).movedim(3, 1)


@ops.register("gated_delta_rule", "reference")
def gated_delta_rule(q, k, v, g, beta, chunk_size, initial_state=None):
    """The chunked form (module docstring): the UT transform inside chunks of C positions, the state passed
    from chunk to chunk. Any length: the tail is padded with g = 0 and β = 0, which leave the state as it is.
    Returns o (b, l, h, d_v) in v's dtype and the final state (b, h, d_k, d_v)."""
    length, dtype = q.shape[1], ops.compute_dtype(v)
    state, outputs = initial_state_or_zeros(k, v, initial_state), []
    chunk = min(chunk_size, length)
    q, k, v, g, beta = (to_chunks(t, chunk, dtype) for t in (q, k, v, g, beta))  # (b, h, c, C, d), (b, h, c, C)
    segments = segment_sum(g)  # log(γ_t/γ_s) = Σ_{s<j≤t} g_j, -inf above the diagonal, (b, h, c, C, C)
    decay_ratio = torch.exp(segments)  # Γ: γ_t/γ_s for s ≤ t, 0 above the diagonal
    decay_from_start = torch.exp(torch.cumsum(g, dim=-1))  # γ_t, (b, h, c, C)
    decay_to_end = torch.exp(segments[..., -1, :])  # γ_C/γ_s, (b, h, c, C)

    # The UT transform: (I + A) U = β ⊙ V − (β γ ⊙ K) S_0, solved for the two right-hand sides apart.
    strictly_lower = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril(-1)
    A = (beta[..., None] * (k @ k.transpose(-1, -2)) * decay_ratio).masked_fill(~strictly_lower, 0.0)
    identity = torch.eye(chunk, dtype=dtype, device=q.device)
    def solve(rhs):  # T · rhs, T = (I + A)⁻¹: forward substitution
        return torch.linalg.solve_triangular(identity + A, rhs, upper=False, unitriangular=True)
    u_from_values = solve(beta[..., None] * v)  # T (β ⊙ V), (b, h, c, C, d_v)
    w = solve((beta * decay_from_start)[..., None] * k)  # W = T (β γ ⊙ K): U = T(β ⊙ V) − W S_0, (b, h, c, C, d_k)
    scores = (q @ k.transpose(-1, -2)) * decay_ratio  # Q Kᵀ ∘ Γ, the diagonal included, (b, h, c, C, C)

    for c in range(q.shape[2]):  # chunk to chunk
        u = u_from_values[:, :, c] - w[:, :, c] @ state  # U, (b, h, C, d_v)
        outputs.append(decay_from_start[:, :, c, :, None] * (q[:, :, c] @ state) + scores[:, :, c] @ u)
        state = (decay_from_start[:, :, c, -1, None, None] * state
                 + (decay_to_end[:, :, c, :, None] * k[:, :, c]).transpose(-1, -2) @ u)
    o = torch.stack(outputs, dim=2).flatten(2, 3).transpose(1, 2)[:, :length]  # (b, l, h, d_v)
    return o.to(v.dtype), state
