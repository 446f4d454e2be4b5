"""Assignment: the experts of a mixture-of-experts layer, Jamba's grouped SwiGLU computation.
Prerequisite: lesson 07 (the MoE router).

Copy this file, fill in `moe_experts`, and grade it:

    cp lessons/assignments/moe_experts.py my_moe_experts.py
    python -m lessons.assignments.grade moe_experts my_moe_experts.py:moe_experts

The task. Jamba (arXiv 2403.19887, §2) replaces every other MLP with n SwiGLU experts. The router
(nanohybrid/moe.py, `route`) has already chosen, for each token t, its k experts e_{t,j} and their
weights w_{t,j}: the top k of the softmax of its logits, NOT renormalised to sum to 1 (unlike
Mixtral). Your function computes the weighted sum of those experts' outputs:

    Expert_e(h) = W_down[e] (SiLU(W_gate[e] h) ⊙ W_up[e] h)
    y_t         = Σ_{j < k} w_{t,j} · Expert_{e_{t,j}}(x_t)

Every weight is stored (out, in), as nn.Linear stores it: W h is F.linear(h, W) = h @ Wᵀ.

Shapes
  t tokens (batch × length, flattened)   d d_model   I expert hidden width   n experts   k experts per token
  x (t, d)    expert_weights (t, k) float    experts (t, k) int64, distinct within a row
  gate_proj, up_proj (n, I, d)    down_proj (n, d, I)
  returns y (t, d) in x's dtype

What is graded: nanohybrid/tools/parity.py compares your y and the gradients of x, expert_weights,
gate_proj, up_proj and down_proj with the reference in float64 (relative error at most 1e-4, on the CPU
in float32), on two cases: top-2 of 4 experts over 37 tokens; top-1 of 8 experts, where expert 3
gets no token. While your code runs, every fresh torch.empty is NaN.

Write it in PyTorch (autograd gives you the backward) or as a Triton kernel with your own backward
(lesson 08; without a GPU the grader runs Triton's interpreter, TRITON_INTERPRET=1): a kernel sorts
the (token, slot) pairs by expert so that each expert's tokens are contiguous, and runs one grouped
matmul over the groups. Keep the name and the parameters: the grader checks them against the reference's.

Hints, from the first line to the pitfalls
  1. Loop over the experts, `for expert in range(n)`: find the (token, slot) pairs routed to it with
     torch.nonzero(experts == expert, as_tuple=True), run the expert on x[token] only, and add the
     weighted result into a zero-initialised (t, d) output.
  2. Add with out.index_add_(0, token, ...): a token reaches its output once per slot, so k experts
     each contribute to its row.
  3. The weight of a (token, slot) pair is expert_weights[token, slot]; give it a trailing axis ([:, None])
     to scale the (tokens, d) rows.
  4. Use the weights as they are: no renormalisation over the k slots, no second softmax.
  5. An expert may receive no token (the second case): skip it with `continue`. `break` or `return`
     there silently drops every expert after it.
  6. Accumulate in float32 and return x's dtype; start from torch.zeros (torch.empty is NaN here).
"""

import torch


def moe_experts(x, expert_weights, experts, gate_proj, up_proj, down_proj) -> torch.Tensor:
    """The experts, one at a time: each runs on the tokens routed to it.

    x (t, d); expert_weights, experts (t, k); gate_proj, up_proj (n, I, d); down_proj (n, d, I) -> (t, d).
    """
    raise NotImplementedError("moe_experts: not written yet (the task and hints are at the top of this file)")
