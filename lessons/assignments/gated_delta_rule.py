"""Assignment: the gated delta rule, Gated DeltaNet's recurrence.            Prerequisite: lesson 10.

Copy this file, fill in `gated_delta_rule`, and grade it:

    cp lessons/assignments/gated_delta_rule.py my_gated_delta_rule.py
    python -m lessons.assignments.grade gated_delta_rule my_gated_delta_rule.py:gated_delta_rule

The task. Gated DeltaNet (Yang, Kautz & Hatamizadeh 2024, arXiv 2412.06464, §3, eq. 10) keeps per head a
(d_k × d_v) state S, a key -> value memory read by the query. Each token decays the memory by α_t, then
moves what it returns for the key k_t towards the value v_t by the fraction β_t (one gradient step on
‖Sᵀ k_t − v_t‖² / 2, the delta rule):

    α_t = exp(g_t)                                               the decay, g_t ≤ 0
    S_t = α_t S_{t-1} + β_t k_t (v_t − α_t S_{t-1}ᵀ k_t)ᵀ          S_0 = initial_state (zeros when None)
        = α_t (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ
    o_t = S_tᵀ q_t                                               read after the update

The mixer (nanohybrid/gated_deltanet.py) has already L2-normalised q and k, scaled q by 1/√d_k and
computed β_t = σ(b_t) and g_t; your function runs the recurrence over time. Return every o_t and the
final state S_l. chunk_size is the chunk length C of the chunked form (lesson 10, §3); a plain loop over
time may ignore it.

Shapes
  b batch   l length   h heads   d_k key (and query) head dim   d_v value head dim   C chunk length
  q, k (b, l, h, d_k)    v (b, l, h, d_v)    g, beta (b, l, h)    chunk_size an int
  initial_state (b, h, d_k, d_v) float32, or None
  returns o (b, l, h, d_v) in v's dtype and the final state (b, h, d_k, d_v) in float32

What is graded: nanohybrid/tools/parity.py compares your o, your final state and the gradients of q, k,
v, g, beta and initial_state with the reference in float64 (relative error at most 1e-4, on the CPU in
float32), on four cases: an odd length (37) against chunks of 16, with an initial state; two whole
chunks of 16 without one; a single token; strong decay (g from -0.04 to -27 for 90% of the steps) over
100 steps against chunks of 64, with an initial state. While your code runs, every fresh torch.empty
tensor is filled with NaN.

Write it in PyTorch (autograd gives you the backward) or as a Triton kernel with your own backward
(lesson 08; without a GPU the grader runs Triton's interpreter, TRITON_INTERPRET=1). Keep the name
and the parameters: the grader, like the model, checks them against the reference's.

Hints, from the first line to the pitfalls
  1. One loop over t passes: a state (b, h, d_k, d_v), `for t in range(l)`, each o_t appended to a list,
     torch.stack(outputs, dim=1) at the end; autograd differentiates the loop. Split the time axis once
     with .unbind(1). For speed, the chunked form of lesson 10 loops over chunks instead: the unit
     lower-triangular system (I + A) U = β ⊙ V − (β γ ⊙ K) S_0 per chunk (torch.linalg.solve_triangular
     with unitriangular=True, or forward substitution row by row), then matrix products.
  2. The order inside a step: decay first, S ← α_t S; then the prediction S_tᵀ k_t from the decayed
     state; then the correction; then read o_t = S_tᵀ q_t from the updated state, not the old one.
  3. g_t and β_t are (b, h): give them axes to broadcast, [..., None, None] against the state and
     [..., None] against a vector. einsum says the shapes: "bhkv,bhk->bhv" reads the state with a key.
  4. The state in float32: cast q, k, v, g and beta to float32 before the loop (the model may run in
     bf16; its state must not). Return o in v's dtype (.to(v.dtype)) and the final state in float32.
  5. initial_state=None means S_0 = 0: make it with torch.zeros (torch.empty is NaN here), and never
     write into initial_state in place. In the chunked form S_0 enters three places: the outputs as
     γ_t (Q S_0), the right-hand side as −(β γ ⊙ K) S_0, and the chunk's final state as γ_C S_0.
  6. The tail (chunked form): a length that is not a multiple of C leaves a short last chunk. Cap C at
     the length (one token), pad the rest with g = 0 and β = 0, a token that neither decays nor writes
     (anything else changes the final state), and cut the padded outputs off before returning.
  7. The decay ratio γ_t / γ_s (chunked form) under strong decay: the cumulative sum of g over a chunk of
     64 reaches several hundred. exp(cumsum_t) / exp(cumsum_s) is 0 / 0; exp(cumsum_t − cumsum_s)
     overflows above the diagonal (and inf · 0 is NaN after the mask), and rounds where it does not.
     Take each ratio as exp of a segment sum, Σ_{s<j≤t} g_j, set to −inf above the diagonal before the
     exp (nanohybrid/ssd.py's segment_sum builds it).
"""


def gated_delta_rule(q, k, v, g, beta, chunk_size, initial_state=None):
    """The chunked form (module docstring): the UT transform inside chunks of C positions, the state passed
    from chunk to chunk. Any length: the tail is padded with g = 0 and β = 0, which leave the state as it is.
    Returns o (b, l, h, d_v) in v's dtype and the final state (b, h, d_k, d_v)."""
    raise NotImplementedError("gated_delta_rule: not written yet (the task and hints are at the top of this file)")
