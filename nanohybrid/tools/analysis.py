"""Accounting for models that never need to be allocated (parameters, inference-cache bytes, tables),
and the analyses of where a layer's attention goes (Hymba's attention-map categories, the SSM's
implicit attention).

Models are built on PyTorch's meta device, which records shapes and allocates nothing, so even
Jamba-v0.1's 52B parameters are counted in a second. Cache bytes come from a formula per layer kind
that equals, byte for byte, what cache.InferenceCache allocates (tests/test_cache.py checks this).

    python -m nanohybrid.tools.analysis presets              the README's preset table
    python -m nanohybrid.tools.analysis cache                the published cache sizes, reproduced
    python -m nanohybrid.tools.analysis cache-plot out.png   cache bytes against context, every architecture
    python -m nanohybrid.tools.analysis projection           the 100M reproduction's cost, from a FLOPs estimate
"""

import argparse

import torch

from ..config import ARCHITECTURES, ModelConfig
from ..model import LanguageModel
from ..presets import PRESETS, get_config
from ..scan import implicit_attention

CATEGORIES = ("Meta", "BOS", "Self", "Cross")


def count_parameters(name: str, **overrides) -> tuple[int, int]:
    """(total, active) parameters of a preset; tied embeddings counted once, active = k of n experts."""
    with torch.device("meta"):
        model = LanguageModel(get_config(name, **overrides))
    return model.num_parameters(), model.num_parameters(active=True)


def _millions(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


def preset_table(names=None) -> str:
    """A markdown table: layers, widths, heads, state sizes and parameter counts of each preset."""
    rows = ["| preset | layers | d_model | heads (q/kv) | d_ff | SSM | window | meta | vocab | params |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name in names or PRESETS:
        config = get_config(name)
        mixers = {spec.mixer for spec in config.layers}
        total, active = count_parameters(name)
        if mixers & {"mamba", "hymba"}:
            ssm = f"S6 E={config.d_inner} N={config.d_state}"
        elif "mamba2" in mixers:
            ssm = f"SSD E={config.d_inner} N={config.d_state} P={config.mamba2_head_dim}"
        elif "rglru" in mixers:
            ssm = f"RG-LRU {config.rglru_width}"
        elif "gated_deltanet" in mixers:
            ssm = f"GDN {config.gdn_n_heads}/{config.gdn_value_heads}×{config.gdn_head_dim}"
        else:
            ssm = "–"
        has_attention = bool(mixers & {"attention", "gated_attention", "hymba"})
        has_mlp = any(spec.ffn != "none" for spec in config.layers)
        experts = f" ×{config.n_experts}" if any(spec.ffn == "moe" for spec in config.layers) else ""
        params = _millions(total) + (f" ({_millions(active)} active)" if active != total else "")
        rows.append(
            f"| `{name}` | {config.n_layers} | {config.d_model} "
            f"| {f'{config.n_heads}/{config.n_kv_heads}' if has_attention else '–'} "
            f"| {f'{config.d_ff}{experts}' if has_mlp else '–'} | {ssm} "
            f"| {config.sliding_window if has_attention and config.sliding_window else '–'} "
            f"| {config.n_meta_tokens or '–'} | {config.vocab_size} | {params} |"
        )
    return "\n".join(rows)


def projection_table(tokens: float = 10e9, seq_len: int = 1024) -> str:
    """The one-GPU reproduction's cost per model, from the FLOPs estimate."""
    rows = ["| preset | GFLOPs per token (fwd+bwd) | projected hours on one H100, 10B tokens |", "|---|---|---|"]
    for arch in ("hymba", "mamba2", "mamba2-ffn", "llama3", "samba"):
        per_token = training_flops_per_token(get_config(f"{arch}-100m"), seq_len)
        rows.append(f"| `{arch}-100m` | {per_token / 1e9:.2f} | {projected_hours(f'{arch}-100m', tokens, seq_len):.1f} |")
    return "\n".join(rows)


def cache_bytes(config: ModelConfig, context: int, batch: int = 1, dtype=torch.float32, state_dtype=torch.float32,
                meta_entries: bool = True, index_entries: bool = True) -> dict[tuple[int, str], int]:
    """Bytes an InferenceCache holds after `context` real tokens (after the meta prefix), by (layer, kind).

    dtype: keys, values and conv inputs (the activations' dtype); state_dtype: SSM and RG-LRU states,
    fp32 in this implementation. meta_entries=False leaves the meta tokens' KV slots out and
    index_entries=False the per-slot stream indices and document ids, as the papers' accounting does.
    """
    value_size, state_size = torch.tensor([], dtype=dtype).element_size(), torch.tensor([], dtype=state_dtype).element_size()
    n_meta, sizes = config.n_meta_tokens, {}
    for layer, spec in enumerate(config.layers):
        if spec.mixer in ("attention", "gated_attention", "hymba") and spec.kv_producer is None:
            distance = config.kv_cache_distance(layer)  # what the widest of the layer and its KV consumers sees
            if distance is None:
                slots = n_meta + context
                kind = "kv-global"
            else:
                slots = n_meta + min(context, distance)
                kind = "kv-window"
            slots -= 0 if meta_entries else n_meta
            value_head = config.d_inner // config.n_heads if spec.mixer == "hymba" else config.qk_head_dim
            sizes[(layer, kind)] = batch * slots * config.n_kv_heads * (config.qk_head_dim + value_head) * value_size
            if index_entries:
                sizes[(layer, "kv-index")] = batch * slots * 2 * 8  # int64 stream index and document id
        if spec.mixer in ("mamba", "hymba"):
            conv_channels, state = config.d_inner, config.d_inner * config.d_state
        elif spec.mixer == "mamba2":
            conv_channels = config.d_inner + 2 * config.mamba2_n_groups * config.d_state
            state = config.d_inner * config.d_state  # H heads × P × N
        elif spec.mixer == "rglru":
            conv_channels, state = config.rglru_width, config.rglru_width
        elif spec.mixer == "gated_deltanet":  # conv over [q | k | v]; a (d_k × d_v) state per value head
            conv_channels = 2 * config.gdn_n_heads * config.gdn_head_dim + config.gdn_value_heads * config.gdn_v_head_dim
            state = config.gdn_value_heads * config.gdn_head_dim * config.gdn_v_head_dim
        else:
            continue
        sizes[(layer, "conv")] = batch * conv_channels * (config.d_conv - 1) * value_size
        sizes[(layer, "ssm")] = batch * state * state_size
    return sizes


# The published cache sizes, each in the unit its paper used (docs/conventions.md, "Hymba layout"):
# (preset, context, published, unit, divisor).
PUBLISHED_CACHES = [
    ("hymba-paper", 8192, 78.6, "MB (10^6 B)", 1e6),  # Hymba Table 1 row F; 3 global + 14 SWA producers, + SSM, conv
    ("llama3-paper", 8192, 262, "B / 1,024,000", 1_024_000),  # Hymba Table 2, Llama-3.2-1B
    ("llama3-paper-3b", 8192, 918, "B / 1,024,000", 1_024_000),  # Hymba Table 2, Llama-3.2-3B
    ("jamba-paper", 262144, 4, "GiB (2^30 B)", 2**30),  # Jamba Table 1: 4GB of KV cache at 256K tokens
]


def published_cache_table() -> tuple[str, list[float]]:
    """The published cache sizes next to ours: fp16 throughout, no meta-token slots, no index bookkeeping.
    Returns the markdown table and each row's relative difference."""
    rows = ["| model | context | published | unit | ours | difference |", "|---|---|---|---|---|---|"]
    differences = []
    for name, context, published, unit, divisor in PUBLISHED_CACHES:
        sizes = cache_bytes(get_config(name), context, dtype=torch.float16, state_dtype=torch.float16,
                            meta_entries=False, index_entries=False)
        ours = sum(sizes.values()) / divisor
        differences.append(ours / published - 1)
        rows.append(f"| `{name}` | {context:,} | {published} | {unit} | {ours:.4g} | {differences[-1]:+.2%} |")
    return "\n".join(rows), differences


def plot_cache_sizes(path: str, size: str = "100m", contexts=tuple(2**k for k in range(8, 18))) -> None:
    """Cache bytes (fp16, batch 1) against context length for every architecture's `size` preset."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for arch in ARCHITECTURES:
        config = get_config(f"{arch}-{size}")
        totals = [sum(cache_bytes(config, n, dtype=torch.float16, index_entries=False).values()) / 1e6 for n in contexts]
        axis.plot(contexts, totals, marker="o", markersize=3, label=arch)
    axis.set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel="cache (MB, fp16 KV)",
             title=f"Inference cache against context, {size} presets")
    axis.legend(fontsize=8, ncol=2)
    axis.grid(True, which="major", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


H100_BF16_DENSE = 989e12  # FLOP/s, NVIDIA's datasheet figure for dense bf16 on the H100 SXM
ASSUMED_MFU = 0.4  # a typical model-FLOPs utilisation for a well-tuned 100M-parameter run


def training_flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Forward + backward FLOPs per token: 6 per active weight (Kaplan et al. 2020), plus attention's
    scores and weighted sum (12 · layers · context · head width), the context being the window where
    there is one, the SSM scans' elementwise work (about 9 FLOPs per state element and token), and the
    chunked gated delta rule's products per token (forward: about 4·C·(d_k + d_v) + 6·d_k·d_v per value
    head, C the chunk, times 3 with the backward)."""
    with torch.device("meta"):
        model = LanguageModel(config)
    embedding = config.vocab_size * config.d_model * (0 if config.tie_embeddings else 1)  # a lookup is free
    flops = 6 * (model.num_parameters(active=True) - embedding)
    for spec in config.layers:
        if spec.mixer in ("attention", "gated_attention", "hymba"):
            context = seq_len if spec.sliding_window is None else min(seq_len, spec.sliding_window)
            width = config.n_heads * (config.qk_head_dim + (config.d_inner // config.n_heads if spec.mixer == "hymba"
                                                            else config.qk_head_dim))
            flops += 6 * context * width  # QKᵀ and PV, each 2 FLOPs per multiply-add, times 3 for the backward
        if spec.mixer in ("mamba", "hymba", "mamba2"):
            flops += 3 * 9 * config.d_inner * config.d_state
        if spec.mixer == "gated_deltanet":
            key, value, chunk = config.gdn_head_dim, config.gdn_v_head_dim, min(config.chunk_size, seq_len)
            flops += 3 * config.gdn_value_heads * (4 * chunk * (key + value) + 6 * key * value)
    return flops


def projected_hours(preset: str, tokens: float, seq_len: int) -> float:
    """Projected wall time on one H100 from the FLOPs estimate (not a measurement)."""
    return training_flops_per_token(get_config(preset), seq_len) * tokens / (H100_BF16_DENSE * ASSUMED_MFU) / 3600


def attention_categories(probabilities, query_index, key_index, n_meta: int) -> dict[str, float]:
    """Hymba's attention-map categories (§2.4, Fig. 7; docs/conventions.md, "Attention-map categories"): the
    shares of the real queries' attention that land on the meta tokens (Meta), on the first real token
    (BOS), on the query itself (Self) and on every other real token (Cross), averaged over real query
    rows, heads and batch.

    probabilities (b, h, L, s), rows summing to 1; query_index (b, L) and key_index (b, s), stream
    indices: the n_meta meta tokens are 0 … M-1 and the first real token is M. The meta tokens' own
    rows are not scored, and BOS's own row counts as BOS. The four shares sum to 1.
    """
    query, key = query_index[:, None, :, None], key_index[:, None, None, :]  # (b, 1, L, 1), (b, 1, 1, s)
    meta, bos = key < n_meta, key == n_meta
    self_ = (key == query) & ~bos
    masks = dict(zip(CATEGORIES, (meta, bos, self_, ~(meta | bos | self_))))
    real_rows = query_index[0] >= n_meta
    return {name: (probabilities * mask)[:, :, real_rows].sum(-1).mean().item() for name, mask in masks.items()}


def implicit_attention_map(delta, A, B, C) -> torch.Tensor:
    """implicit_attention as an attention map: |M| with each row normalised to sum to 1, the form Hymba
    scores SSM heads in (Fig. 7, after Ben-Kish et al. and Zimerman et al.; docs/conventions.md,
    "Attention-map categories"). The paper does not say how negative entries are treated: we take
    magnitudes. Returns (d, l, l), channels as heads."""
    magnitude = implicit_attention(delta, A, B, C).abs()
    return magnitude / magnitude.sum(-1, keepdim=True).clamp_min(torch.finfo(magnitude.dtype).tiny)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["presets", "cache", "cache-plot", "projection"])
    parser.add_argument("path", nargs="?", default="cache_sizes.png", help="where cache-plot writes its PNG")
    args = parser.parse_args()
    if args.what == "presets":
        print(preset_table())
    elif args.what == "cache":
        print(published_cache_table()[0])
    elif args.what == "projection":
        print(projection_table())
    else:
        plot_cache_sizes(args.path)
        print(f"wrote {args.path}")


if __name__ == "__main__":
    main()
