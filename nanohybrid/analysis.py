"""Accounting for models that never need to be allocated: parameter counts and the preset table.

Models are built on PyTorch's meta device, which records shapes and allocates nothing, so even
Jamba-v0.1's 52B parameters are counted in a second.

    python -m nanohybrid.analysis presets            the README's preset table
"""

import argparse

import torch

from .config import PRESETS, get_config
from .model import LanguageModel


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
        else:
            ssm = "–"
        has_attention = bool(mixers & {"attention", "hymba"})
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", choices=["presets"], help="which table to print")
    parser.parse_args()
    print(preset_table())


if __name__ == "__main__":
    main()
