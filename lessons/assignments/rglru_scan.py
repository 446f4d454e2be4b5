"""Assignment: the RG-LRU scan, Griffin's gated linear recurrence.           Prerequisite: lesson 03.

Copy this file, fill in `rglru_scan`, and grade it:

    cp lessons/assignments/rglru_scan.py my_rglru_scan.py
    python -m lessons.assignments.grade rglru_scan my_rglru_scan.py:rglru_scan

The task. Griffin's RG-LRU (De et al. 2024, arXiv 2402.19427, §2.4) keeps one number per channel and
decays it with an input-dependent gate. The gates are computed before the scan (RGLRU.forward in
nanohybrid/rglru.py); your function gets their results and runs the recurrence over time:

    a_t = exp(log_a_t)                                   the decay, in (0, 1)
    h_t = a_t ⊙ h_{t-1} + sqrt(1 - a_t²) ⊙ x_t           h_0 = initial_state (zeros when None)
    at a document start (reset[b, t] is True):  a_t = 0 and sqrt(1 - a_t²) = 1, so h_t = x_t

x is already the gated input i_t ⊙ x_t. Return every h_t (after its update) and the final state h_l.

Shapes
  b batch   l length   R channels (lru_width)
  x, log_a (b, l, R)    reset (b, l) bool    initial_state (b, R) float32, or None
  returns h (b, l, R) in x's dtype and the final state (b, R) in float32

What is graded: nanohybrid/tools/parity.py compares your output h, your final state and the gradients of x,
log_a and initial_state with the reference in float64 (relative error at most 1e-4, on the CPU in
float32), on three cases: an odd length (37) with resets (at t = 0 in row 0, mid-row in row 1) and an
initial state; 64 steps without resets or initial state; a single token, with a reset in one row.
While your code runs, every fresh torch.empty tensor is filled with NaN.

Write it in PyTorch (autograd gives you the backward) or as a Triton kernel with your own backward
(lesson 08; without a GPU the grader runs Triton's interpreter, TRITON_INTERPRET=1). Keep the name
and the parameters: the grader, like the model, checks them against the reference's.

Hints, from the first line to the pitfalls
  1. One loop over t is enough: a state (b, R) in float32, `for t in range(l)`, each h_t appended to a
     list, torch.stack(outputs, dim=1) at the end. Autograd differentiates the loop for you.
  2. a_t and the normaliser sqrt(1 - a_t²) do not depend on the state: compute them for every t before
     the loop. Split the time axis once with .unbind(1); indexing x[:, t] in the loop costs a full-size
     gradient per step in the backward.
  3. reset is (b, l): give it a channel axis, reset[..., None], to broadcast against (b, l, R), and use
     torch.where(reset, value_at_a_reset, usual_value).
  4. At a reset a_t = 0 AND the normaliser is 1. Zeroing only a_t leaves h_t = sqrt(1 - a_t²) x_t. The
     reset forgets h_{t-1}, not h_t: zeroing the state after the update loses x_t too.
  5. initial_state=None means h_0 = 0: make it with torch.zeros (torch.empty is NaN here), and never
     write into initial_state in place.
  6. Return h in x's dtype (.to(x.dtype)) and the final state in float32: the last h_t, even when the
     last step is a reset.
"""


def rglru_scan(x, log_a, reset, initial_state=None):
    """The recurrence over a sequence. x = i_t ⊙ x_t and log_a (b, l, R); reset (b, l) bool; initial_state (b, R) or None.

    Returns h (b, l, R) in x's dtype and the final state (b, R) in fp32.
    """
    raise NotImplementedError("rglru_scan: not written yet (the task and hints are at the top of this file)")
