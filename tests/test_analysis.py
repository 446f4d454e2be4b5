"""The attention analyses of nanohybrid/tools/analysis.py: Hymba's Meta/BOS/Self/Cross categories on maps whose
shares are known in closed form, and the S6 implicit attention matrix against the scan it unrolls."""

import torch

from nanohybrid.scan import implicit_attention, selective_scan
from nanohybrid.tools.analysis import CATEGORIES, attention_categories, implicit_attention_map
from nanohybrid.tools.testing import SAME_MATH, assert_close

N_META, N_REAL = 3, 9
EXACT = 1e-6  # shares are means of a few dozen fp32 sums of fractions: rounding only


def uniform_causal(n_meta: int, n_real: int) -> torch.Tensor:
    """Every query spreads its attention evenly over all keys up to itself: (1, 1, L, L)."""
    length = n_meta + n_real
    mask = torch.tril(torch.ones(length, length))
    return (mask / mask.sum(-1, keepdim=True))[None, None]


def test_uniform_causal_attention_splits_as_counted():
    stream = torch.arange(N_META + N_REAL)[None]
    shares = attention_categories(uniform_causal(N_META, N_REAL), stream, stream, N_META)
    # Real query i (stream index N_META + i) sees N_META meta keys, BOS, i - 1 other real keys and itself.
    expected = dict.fromkeys(CATEGORIES, 0.0)
    for i in range(N_REAL):
        keys = N_META + i + 1
        expected["Meta"] += N_META / keys / N_REAL
        expected["BOS"] += 1 / keys / N_REAL
        expected["Self"] += (i > 0) / keys / N_REAL  # BOS's own row counts as BOS
        expected["Cross"] += max(i - 1, 0) / keys / N_REAL
    for name in CATEGORIES:
        assert abs(shares[name] - expected[name]) < EXACT, (name, shares[name], expected[name])
    assert abs(sum(shares.values()) - 1) < EXACT


def test_categories_read_stream_indices_not_column_order():
    """A diagonal map (every token attends to itself only) with its key columns shuffled: still all Self,
    except BOS's row. Without meta tokens BOS is stream index 0, as in a plain transformer."""
    length = N_REAL
    permutation = torch.randperm(length, generator=torch.Generator().manual_seed(0))
    stream = torch.arange(length)[None]
    probabilities = torch.eye(length)[:, permutation][None, None]  # column j is key permutation[j]
    shares = attention_categories(probabilities, stream, permutation[None], n_meta=0)
    assert abs(shares["Self"] - (length - 1) / length) < EXACT and abs(shares["BOS"] - 1 / length) < EXACT
    assert shares["Meta"] == 0 and shares["Cross"] == 0


def scan_inputs(length=12, channels=5, n_state=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(length, channels, generator=generator)
    delta = torch.nn.functional.softplus(torch.randn(length, channels, generator=generator))
    A = -torch.rand(channels, n_state, generator=generator) * 3 - 0.1
    B, C = torch.randn(2, length, n_state, generator=generator)
    return x, delta, A, B, C


def test_implicit_attention_is_the_scan():
    """y_t = Σ_s M[t, s] x_s equals the sequential scan (no D, no gate), so M is the scan's own matrix."""
    x, delta, A, B, C = scan_inputs()
    M = implicit_attention(delta, A, B, C)  # (d, l, l)
    y_scan, _ = selective_scan(x[None], delta[None], A, B[None], C[None])
    assert_close(torch.einsum("dts,sd->td", M, x), y_scan[0], SAME_MATH, "M x vs selective_scan")
    assert torch.all(M.triu(diagonal=1) == 0), "an output reads a future input"


def test_implicit_attention_map_is_a_causal_distribution():
    _, delta, A, B, C = scan_inputs()
    maps = implicit_attention_map(delta, A, B, C)
    assert_close(maps.sum(-1), torch.ones(maps.shape[:-1]), SAME_MATH, "row sums")
    assert torch.all(maps >= 0) and torch.all(maps.triu(diagonal=1) == 0)
    M = implicit_attention(delta, A, B, C)
    assert_close(maps * M.abs().sum(-1, keepdim=True), M.abs(), SAME_MATH, "rows of |M|, rescaled")
