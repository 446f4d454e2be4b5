"""The named presets `ARCH-SIZE`: each architecture at the sizes `tiny`, `small`, `100m` and `paper`.

    tiny    tests and lessons: every pattern feature (window wrap, KV-sharing pairs and triples, MoE) under 1M
    small   the CPU default run and the CPU comparison: about 5M parameters, byte-level vocabulary
    100m    the one-GPU reproduction: 100M ± 5% with the SmolLM tokenizer, equal depth
    paper   the published configurations, built on the meta device for parameter and cache accounting

What an architecture's published form fixes comes first (ARCH_DEFAULTS); the sizes come from SIZES, and
ARCH_SIZES adjusts the few sizes an architecture needs for its pattern or to reach the same parameter
count as its peers. The published configurations are in PAPER; docs/conventions.md and
docs/delta_rule.md give their sources.
"""

from dataclasses import fields

from .config import ARCHITECTURES, WINDOWED, ModelConfig
from .meta_tokens import DEFAULT_META_TOKENS

ARCH_DEFAULTS = {
    "hymba": dict(ssm_inner_norms=True, window_convention="distance", norm_eps=1e-6, n_meta_tokens=DEFAULT_META_TOKENS,
                  fusion_beta_init=0.1, embedding_padding_idx=0),
    "jamba": dict(ssm_inner_norms=True, rotary_fraction=0.0, norm_eps=1e-6, tie_embeddings=False),
    "griffin": dict(norm_offset=True, mlp_activation="gelu_tanh", mlp_bias=True, attention_out_bias=True,
                    n_kv_heads=1, rotary_fraction=0.5, window_convention="distance", norm_eps=1e-6),
    "hawk": dict(norm_offset=True, mlp_activation="gelu_tanh", mlp_bias=True, norm_eps=1e-6),
    "samba": dict(),
    "mamba2": dict(),
    "mamba2-ffn": dict(),
    "llama3": dict(rope_theta=500000.0),
    "mamba": dict(),
    "gated-deltanet": dict(),
    # Qwen3-Next: zero-centred norms, RoPE on a quarter of each head, renormalised top-k weights.
    "qwen3-next": dict(norm_offset=True, norm_eps=1e-6, rotary_fraction=0.25, normalize_expert_weights=True),
}

SIZES = {
    # Tests and lessons: every pattern feature (window wrap, KV-sharing pairs and triples, MoE) at < 1M params.
    "tiny": dict(vocab_size=320, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, d_state=16,
                 sliding_window=8, mamba2_head_dim=16, mamba2_n_groups=2, chunk_size=8, n_experts=4,
                 gdn_n_heads=2, gdn_n_value_heads=4, gdn_head_dim=32, max_seq_len=512),
    # The CPU default run and the CPU comparison: about 5M params, byte-level vocabulary, 6 layers.
    "small": dict(vocab_size=320, d_model=256, n_layers=6, n_heads=4, n_kv_heads=2, d_ff=768, d_state=16,
                  sliding_window=64, mamba2_head_dim=32, chunk_size=64, n_experts=4, gdn_n_heads=4, gdn_n_value_heads=8,
                  gdn_head_dim=64, max_seq_len=2048),
    # The one-GPU reproduction: about 100M params with the SmolLM tokenizer (vocab 49152), 12 layers,
    # SmolLM-135M's width and heads (576, 9 query / 3 KV heads), the window of Hymba's 300M runs (256).
    "100m": dict(vocab_size=49152, d_model=576, n_layers=12, n_heads=9, n_kv_heads=3, d_ff=2944,
                 d_state=16, sliding_window=256, chunk_size=256, n_experts=8, gdn_n_heads=9, gdn_n_value_heads=18,
                 gdn_head_dim=64, max_seq_len=4096),
}

# Per-architecture sizes. In `small` and `100m`, the five apples-to-apples architectures (hymba, mamba2,
# mamba2-ffn, llama3, samba) have the same depth and the same parameter count within 2%: the MLP width
# (or, for Mamba-2 without MLP, the model width) makes up for what the mixers differ by.
ARCH_SIZES = {
    ("hymba", "tiny"): dict(n_layers=8, n_meta_tokens=8),  # globals 0, 3, 7; KV pair [1, 2], triple [4, 5, 6]
    ("jamba", "tiny"): dict(n_layers=8, d_ff=64),  # one Jamba block: attention at 4, MoE on odd layers
    ("griffin", "tiny"): dict(n_layers=3, d_ff=192),  # (RG-LRU, RG-LRU, MQA); MLP branch 3·d
    ("hawk", "tiny"): dict(d_ff=192),
    ("samba", "tiny"): dict(n_layers=4),
    ("hymba", "small"): dict(d_model=192, n_heads=3, n_kv_heads=1, d_ff=896, n_meta_tokens=32),
    ("mamba2", "small"): dict(d_model=352, d_state=64),
    ("mamba2-ffn", "small"): dict(d_ff=512, d_state=64),
    ("llama3", "small"): dict(d_ff=832),
    ("samba", "small"): dict(d_ff=640),
    ("jamba", "small"): dict(n_layers=8, d_ff=128),
    ("mamba", "small"): dict(d_model=352),
    # Gated DeltaNet layers as Qwen3-Next sizes them: query/key width d, value width 2d (twice the heads).
    # Chunks of 32 in small: the same function as 64, and on a CPU the fastest (docs/delta_rule.md, "The presets").
    ("gated-deltanet", "small"): dict(d_ff=384, chunk_size=32),
    ("qwen3-next", "tiny"): dict(n_layers=4, d_ff=32, shared_expert_d_ff=32),  # GDN, GDN, GDN, attention
    ("qwen3-next", "small"): dict(d_ff=88, shared_expert_d_ff=88, chunk_size=32),  # the experts' width, as d_ff in Jamba
    # SmolLM's token 0 is <|endoftext|>, the document separator: its input row learns, as in every other 100m preset.
    ("hymba", "100m"): dict(d_ff=1920, embedding_padding_idx=None),
    ("mamba2", "100m"): dict(d_model=864, d_state=128, mamba2_head_dim=64),
    ("mamba2-ffn", "100m"): dict(d_ff=2176, d_state=128, mamba2_head_dim=64),
    ("samba", "100m"): dict(d_ff=2560),
    ("jamba", "100m"): dict(n_layers=8, d_ff=448),
    ("griffin", "100m"): dict(d_ff=2880),
    ("hawk", "100m"): dict(d_ff=2816),
    ("mamba", "100m"): dict(d_model=864),
    ("gated-deltanet", "100m"): dict(d_ff=1920, chunk_size=64),  # chunks of 64, as fla's kernels take
    ("qwen3-next", "100m"): dict(d_ff=240, shared_expert_d_ff=240, chunk_size=64),
}

# The published configurations, built on the meta device for parameter and cache accounting.
PAPER = {
    # Hymba-1.5B (Hymba Table 11 and the released config; docs/conventions.md, "Hymba layout").
    # RoPE base with NTK scaling to 8K: θ·(2·8192/2048 - 1)^(hd/(hd-2)).
    "hymba-paper": dict(vocab_size=32001, d_model=1600, n_layers=32, n_heads=25, n_kv_heads=5, d_ff=5504,
                        d_state=16, d_conv=4, dt_rank=100, sliding_window=1024, max_seq_len=8192,
                        rope_theta=10000.0 * 7.0 ** (64 / 62)),
    # Llama-3.2-1B and -3B (RoPE frequency scaling for long context left out: it changes no parameter).
    "llama3-paper": dict(vocab_size=128256, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, d_ff=8192,
                         max_seq_len=131072),
    "llama3-paper-3b": dict(vocab_size=128256, d_model=3072, n_layers=28, n_heads=24, n_kv_heads=8, d_ff=8192,
                            max_seq_len=131072),
    # Jamba-v0.1 (Jamba §2-3 and transformers' JambaConfig defaults; docs/conventions.md, "Jamba layout").
    "jamba-paper": dict(vocab_size=65536, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, d_ff=14336,
                        d_state=16, n_experts=16, experts_per_token=2, max_seq_len=262144),
    # RecurrentGemma-2B (DeepMind's recurrentgemma presets; docs/conventions.md, "Griffin / RecurrentGemma
    # layout"): the official window convention, scaled embeddings, soft cap.
    "griffin-paper": dict(vocab_size=256000, d_model=2560, n_layers=26, n_heads=10, head_dim=256, d_ff=7680,
                          lru_width=2560, sliding_window=2048, scale_embeddings=True, logit_softcap=30.0,
                          max_seq_len=8192),
    # Qwen3-Next-80B-A3B (transformers' Qwen3NextConfig defaults and the released config; docs/delta_rule.md,
    # "Qwen3-Next-80B-A3B"): 48 layers, 512 experts of width 512, 10 routed and one shared per token.
    "qwen3-next-paper": dict(vocab_size=151936, d_model=2048, n_layers=48, n_heads=16, n_kv_heads=2, head_dim=256,
                             gdn_n_heads=16, gdn_n_value_heads=32, gdn_head_dim=128, n_experts=512, experts_per_token=10,
                             d_ff=512, shared_expert_d_ff=512, rope_theta=10_000_000.0, tie_embeddings=False,
                             chunk_size=64, max_seq_len=262144),
}


def _build_presets() -> dict[str, dict]:
    presets = {}
    for arch in ARCHITECTURES:
        for size, fields_ in SIZES.items():
            preset = {**fields_, **ARCH_DEFAULTS[arch], **ARCH_SIZES.get((arch, size), {})}
            if arch not in WINDOWED:
                preset["sliding_window"] = None
            presets[f"{arch}-{size}"] = dict(arch=arch, **preset)
    for name, fields_ in PAPER.items():
        arch = name.split("-paper")[0]
        presets[name] = dict(arch=arch, **{**ARCH_DEFAULTS[arch], **fields_})
    return presets


PRESETS = _build_presets()


def get_config(name: str, **overrides) -> ModelConfig:
    """The preset `name` (ARCH-SIZE), with fields replaced by `overrides`."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    known = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown config field(s) {', '.join(unknown)}; valid fields: {', '.join(sorted(known))}")
    return ModelConfig(**{**PRESETS[name], **overrides})
