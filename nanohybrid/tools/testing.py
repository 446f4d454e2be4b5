"""How this project compares two tensors: relative error ‖actual − expected‖ / ‖expected‖ with a bound per dtype.

One number for the whole tensor, as in fla's `assert_close`: unlike an elementwise `allclose`, it does
not fail on a single near-zero entry, and unlike a max error it scales with the tensor. NaN or inf
anywhere fails.

Bounds (fp32 unless stated):
  SAME_MATH  1e-5  the same equations evaluated in another order (loop vs chunked vs matrix form,
                   prefill vs decode, our model vs transformers after a weight copy). fp32 rounding of
                   sums over up to a few hundred terms gives about 1e-7 to 1e-6; 1e-5 leaves a margin of
                   10x while a wrong mask, gate or off-by-one gives errors above 1e-2.
  FLOAT64    1e-12 the same maths in float64 on both sides (a reference given fp64 inputs against the
                   equations written out in fp64): rounding gives about 1e-16 to 1e-14, while one step
                   rounded to fp32 anywhere inside gives about 1e-7.
"""

import torch

SAME_MATH = 1e-5
FLOAT64 = 1e-12


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-30)).item()


def assert_close(actual: torch.Tensor, expected: torch.Tensor, bound: float = SAME_MATH, name: str = "tensor") -> None:
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    if not torch.isfinite(actual).all():
        raise AssertionError(f"{name}: contains NaN or inf")
    error = relative_error(actual, expected)
    if not error <= bound:
        max_abs = (actual.double() - expected.double()).abs().max().item()
        raise AssertionError(f"{name}: relative error {error:.3g} > bound {bound:.0e} (max abs diff {max_abs:.3g})")
