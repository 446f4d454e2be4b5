"""ModelConfig and the layer pattern of every architecture (the named presets are in presets.py).

One config describes every model. The architecture name fixes the layer pattern (which mixer each
block uses, whether it has an MLP or a mixture of experts, which attention layers use a sliding
window and which share keys and values); the other fields set the sizes. Each pattern, its sources
(papers and released code) and its published configurations are in docs/conventions.md: "Hymba layout",
"Jamba layout", "Griffin / RecurrentGemma layout", and "Samba, Mamba and Llama 3 layouts".

    hymba       hybrid head in every block; global attention in the first, middle and last blocks,
                sliding window elsewhere, adjacent sliding-window blocks share K/V; SwiGLU MLP
    jamba       attention where i % attn_layer_period == attn_layer_offset (8, 4), Mamba-1 (inner norms)
                elsewhere; MoE where i % expert_layer_period == expert_layer_offset (2, 1)
    griffin     block_types repeated, by default (RG-LRU, RG-LRU, local MQA); GeGLU MLP    hawk: RG-LRU only
    samba       Mamba-1 on even blocks, sliding-window attention on odd blocks; SwiGLU MLP
    mamba2      Mamba-2 blocks, no MLP                                    mamba2-ffn: Mamba-2 + MLP
    mamba       Mamba-1 blocks, no MLP                                    llama3: attention + MLP
    gated-deltanet  Gated DeltaNet blocks with SwiGLU MLPs (the GDN paper's model)
    qwen3-next  three Gated DeltaNet blocks, then one gated-attention block (full_attention_interval = 4);
                a mixture of experts with a sigmoid-gated shared expert after every mixer
"""

import math
from dataclasses import dataclass, replace

ARCHITECTURES = ("hymba", "jamba", "griffin", "hawk", "samba", "mamba2", "mamba2-ffn", "llama3", "mamba",
                 "gated-deltanet", "qwen3-next")
WINDOWED = ("hymba", "griffin", "samba")  # the architectures with sliding-window layers (llama3's is opt-in: Mistral)


@dataclass(frozen=True)
class LayerSpec:
    """One block: x += mixer(norm(x)); then x += ffn(norm(x)) unless ffn is "none"."""

    mixer: str  # "attention" | "gated_attention" | "hymba" | "mamba" | "mamba2" | "rglru" | "gated_deltanet"
    ffn: str  # "mlp" | "moe" | "none"
    sliding_window: int | None = None  # None: global attention
    kv_producer: int | None = None  # a KV consumer reads this layer's keys and values


@dataclass
class ModelConfig:
    arch: str
    vocab_size: int = 320
    d_model: int = 64
    n_layers: int = 4
    max_seq_len: int = 1024  # longest input in tokens, meta tokens not counted
    init_std: float = 0.02
    # Norms, embedding and output head.
    norm_eps: float = 1e-5
    norm_offset: bool = False  # Gemma RMSNorm: scale by (1 + w)
    tie_embeddings: bool = True
    embedding_padding_idx: int | None = None  # this token's input row gets no gradient from the lookup (Hymba: 0)
    scale_embeddings: bool = False  # multiply embeddings by sqrt(d_model) rounded to bf16 (RecurrentGemma)
    logit_softcap: float | None = None  # cap * tanh(logits / cap) (RecurrentGemma: 30)
    # Attention.
    n_heads: int = 4
    n_kv_heads: int = 4
    head_dim: int | None = None  # query/key head dim; default d_model // n_heads
    rope_theta: float = 10000.0
    rotary_fraction: float = 1.0  # share of each head's channels that RoPE rotates; 0 = no RoPE (Jamba)
    sliding_window: int | None = None  # window of the sliding-window layers (all attention layers for llama3)
    window_convention: str = "keys"  # "keys": a query sees W keys incl. itself; "distance": q - k <= W (W + 1 keys)
    attention_bias: bool = False  # bias on the q/k/v projections
    attention_out_bias: bool = False  # bias on the output projection (Griffin)
    share_kv: bool = True  # Hymba: adjacent sliding-window layers share keys and values
    # MLP.
    d_ff: int = 256
    mlp_activation: str = "silu"  # "silu" (SwiGLU) or "gelu_tanh" (GeGLU)
    mlp_bias: bool = False
    # Mamba-1 and Mamba-2.
    ssm_expand: int = 2
    d_state: int = 16
    d_conv: int = 4
    dt_rank: int | None = None  # Mamba-1; default ceil(d_model / 16)
    ssm_inner_norms: bool = False  # RMSNorm on dt, B and C inside Mamba-1 (Jamba, Hymba)
    mamba2_head_dim: int = 64
    mamba2_n_groups: int = 1
    chunk_size: int = 256
    # RG-LRU.
    lru_width: int | None = None  # default d_model
    conv_cuts_documents: bool = True  # the conv's taps stop at a document start (DeepMind; transformers: False)
    # RecurrentGemma's block_types: the pattern Griffin repeats over its layers, "recurrent" or "attention".
    # A string is read as comma-separated names (the command line: --block_types=recurrent,attention).
    block_types: tuple[str, ...] | str = ("recurrent", "recurrent", "attention")
    # Jamba's pattern, as transformers' JambaConfig names it: attention where i % attn_layer_period ==
    # attn_layer_offset, an MoE where i % expert_layer_period == expert_layer_offset (Jamba §2: 1 in 8, 1 in 2).
    attn_layer_period: int = 8
    attn_layer_offset: int = 4
    expert_layer_period: int = 2
    expert_layer_offset: int = 1
    # Gated DeltaNet: query/key heads, value heads (a multiple of them; each query/key head serves
    # consecutive value heads, as GQA's key/value heads serve query heads), their head dims.
    gdn_n_heads: int = 4
    gdn_n_value_heads: int | None = None  # default gdn_n_heads
    gdn_head_dim: int = 16
    gdn_value_head_dim: int | None = None  # default gdn_head_dim
    # Qwen3-Next: every full_attention_interval-th layer is gated attention, the others Gated DeltaNet.
    full_attention_interval: int = 4
    # Mixture of experts.
    n_experts: int = 0
    experts_per_token: int = 2
    router_aux_loss_coef: float = 0.001
    normalize_expert_weights: bool = False  # the k routing weights rescaled to sum to 1 (Qwen3-Next; Jamba: no)
    shared_expert_d_ff: int = 0  # > 0: a shared expert of this width, gated by σ(w·x), beside the routed ones
    # Meta tokens and the Hymba fusion.
    n_meta_tokens: int = 0
    fusion_beta_init: float = 1.0  # initial β1, β2 of Hymba's fusion norms (the released checkpoints' code: 1)

    def __post_init__(self):
        if isinstance(self.block_types, str):  # the command line's comma-separated form
            self.block_types = self.block_types.split(",")
        self.block_types = tuple(name.strip() for name in self.block_types)  # or a list, from a saved config.json
        self.validate()

    # Derived sizes.
    @property
    def qk_head_dim(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def d_inner(self) -> int:
        return self.ssm_expand * self.d_model

    @property
    def mamba_dt_rank(self) -> int:
        return self.dt_rank or math.ceil(self.d_model / 16)

    @property
    def mamba2_n_heads(self) -> int:
        return self.d_inner // self.mamba2_head_dim

    @property
    def rglru_width(self) -> int:
        return self.lru_width or self.d_model

    @property
    def gdn_value_heads(self) -> int:
        return self.gdn_n_value_heads or self.gdn_n_heads

    @property
    def gdn_v_head_dim(self) -> int:
        return self.gdn_value_head_dim or self.gdn_head_dim

    def max_distance(self, window: int | None) -> int | None:
        """Largest q - k that a query of a layer with this sliding window sees (meta tokens aside); None for
        global attention. "keys": W keys, the query's own included; "distance": q - k <= W."""
        if window is None:
            return None
        return window - 1 if self.window_convention == "keys" else window

    @property
    def max_attention_distance(self) -> int | None:
        """max_distance of the sliding-window layers."""
        return self.max_distance(self.sliding_window)

    def kv_cache_distance(self, producer: int) -> int | None:
        """The largest q - k that the KV cache of layer `producer` must keep: what the widest of it and its
        KV consumers sees (None, every key, if one of them is global). In Hymba's groups all share one
        window; a sliding-window producer read by a global consumer must keep every key."""
        readers = [spec for i, spec in enumerate(self.layers) if producer in (i, spec.kv_producer)]
        distances = [self.max_distance(spec.sliding_window) for spec in readers]
        return None if None in distances else max(distances)

    @property
    def layers(self) -> tuple[LayerSpec, ...]:
        return layer_pattern(self)

    def validate(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"invalid {self.arch} config: {message}")

        need(self.arch in ARCHITECTURES, f"unknown architecture; choose one of {', '.join(ARCHITECTURES)}")
        need(self.n_layers >= 1 and self.d_model >= 1 and self.vocab_size >= 1, "sizes must be positive")
        need(self.window_convention in ("keys", "distance"), 'window_convention must be "keys" or "distance"')
        need(self.mlp_activation in ("silu", "gelu_tanh"), 'mlp_activation must be "silu" or "gelu_tanh"')
        if self.arch == "griffin":
            need(len(self.block_types) >= 1 and set(self.block_types) <= {"recurrent", "attention"},
                 f'block_types={",".join(self.block_types)}: name one or more blocks, each "recurrent" or "attention"')
        if self.arch == "jamba":
            for kind in ("attn", "expert"):
                period, offset = getattr(self, f"{kind}_layer_period"), getattr(self, f"{kind}_layer_offset")
                need(0 <= offset < period, f"{kind}_layer_offset={offset} must be at least 0 and below "
                     f"{kind}_layer_period={period} (the layers where i % period == offset)")
        if self.arch == "qwen3-next":
            need(self.full_attention_interval >= 1,
                 f"full_attention_interval={self.full_attention_interval}: must be at least 1 (attention every n-th)")
        specs = self.layers
        mixers = {spec.mixer for spec in specs}
        for i, spec in enumerate(specs):
            producer = spec.kv_producer
            need(producer is None or (spec.mixer in ("attention", "hymba") and 0 <= producer < i
                                      and specs[producer].mixer == spec.mixer and specs[producer].kv_producer is None),
                 f"layer {i} reads keys and values from layer {producer}, which must be an earlier {spec.mixer} "
                 "layer with its own keys and values")
        if mixers & {"attention", "gated_attention", "hymba"}:
            need(self.d_model % self.n_heads == 0 or self.head_dim is not None,
                 f"n_heads={self.n_heads} must divide d_model={self.d_model} (or set head_dim)")
            need(self.n_heads % self.n_kv_heads == 0, f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}")
            rotary = self.rotary_fraction * self.qk_head_dim
            need(rotary == int(rotary) and int(rotary) % 2 == 0,
                 f"rotary_fraction={self.rotary_fraction} of head dim {self.qk_head_dim} must be an even number of channels")
        if self.arch in WINDOWED:
            need(self.sliding_window is not None and self.sliding_window >= 1, f"{self.arch} needs sliding_window >= 1")
        if "hymba" in mixers:
            need(self.d_inner % self.n_heads == 0, f"n_heads={self.n_heads} must divide d_inner={self.d_inner} (value heads)")
            need(self.head_dim is None, "hymba derives head_dim = d_model / n_heads")
        if "mamba2" in mixers:
            need(self.d_inner % self.mamba2_head_dim == 0,
                 f"mamba2_head_dim={self.mamba2_head_dim} must divide d_inner={self.d_inner}")
            need(self.mamba2_n_heads % self.mamba2_n_groups == 0,
                 f"mamba2_n_groups={self.mamba2_n_groups} must divide the {self.mamba2_n_heads} Mamba-2 heads")
            need(self.chunk_size >= 1, "chunk_size must be >= 1")
        if "gated_deltanet" in mixers:
            sizes = dict(gdn_n_heads=self.gdn_n_heads, gdn_n_value_heads=self.gdn_value_heads,
                         gdn_head_dim=self.gdn_head_dim, gdn_value_head_dim=self.gdn_v_head_dim)
            need(min(sizes.values()) >= 1,
                 ", ".join(f"{name}={value}" for name, value in sizes.items()) + ": each must be >= 1")
            need(self.gdn_value_heads % self.gdn_n_heads == 0,
                 f"gdn_n_heads={self.gdn_n_heads} must divide gdn_n_value_heads={self.gdn_value_heads}")
            need(self.chunk_size >= 1, "chunk_size must be >= 1")
        if "rglru" in mixers:
            need(self.rglru_width % self.n_heads == 0, f"n_heads={self.n_heads} must divide lru_width={self.rglru_width}")
        need(self.shared_expert_d_ff >= 0, f"shared_expert_d_ff={self.shared_expert_d_ff}: must be >= 0 (0: no shared expert)")
        if any(spec.ffn == "moe" for spec in specs):
            need(1 <= self.experts_per_token <= self.n_experts,
                 f"experts_per_token={self.experts_per_token} must be between 1 and n_experts={self.n_experts}")
        need(self.n_meta_tokens >= 0, "n_meta_tokens must be >= 0")
        need(self.embedding_padding_idx is None or 0 <= self.embedding_padding_idx < self.vocab_size,
             f"embedding_padding_idx={self.embedding_padding_idx} must be a token id below vocab_size={self.vocab_size}, "
             "or None")


def _hymba_layers(config: ModelConfig) -> list[LayerSpec]:
    """Global attention in the first, middle and last layers; the sliding-window layers between them
    are grouped in pairs (a triple leads an odd run) and share the first layer's keys and values.
    32 layers give globals 0, 15, 31 and groups [1,2] ... [13,14], [16,17,18], [19,20] ... [29,30]: the
    released Hymba-1.5B's global_attn_idx and kv_reuse_group (Hymba §2.2; docs/conventions.md, "Hymba
    layout").
    """
    n = config.n_layers
    global_layers = sorted({0, (n - 1) // 2, n - 1})
    specs = [LayerSpec("hymba", "mlp", None if i in global_layers else config.sliding_window) for i in range(n)]
    if not config.share_kv:
        return specs
    edges = [-1, *global_layers, n]
    for start, stop in zip(edges[:-1], edges[1:]):
        run = list(range(start + 1, stop))
        lead = 3 if len(run) % 2 else 2  # an odd run starts with a triple
        groups = [run[:lead]] + [run[i : i + 2] for i in range(lead, len(run), 2)]
        for group in groups:
            for consumer in group[1:]:
                specs[consumer] = replace(specs[consumer], kv_producer=group[0])
    return specs


def layer_pattern(config: ModelConfig) -> tuple[LayerSpec, ...]:
    window, n = config.sliding_window, config.n_layers
    if config.arch == "hymba":
        return tuple(_hymba_layers(config))
    patterns = {
        "llama3": lambda i: LayerSpec("attention", "mlp", window),
        "mamba": lambda i: LayerSpec("mamba", "none"),
        "mamba2": lambda i: LayerSpec("mamba2", "none"),
        "mamba2-ffn": lambda i: LayerSpec("mamba2", "mlp"),
        "samba": lambda i: LayerSpec("mamba", "mlp") if i % 2 == 0 else LayerSpec("attention", "mlp", window),
        "griffin": lambda i: (LayerSpec("attention", "mlp", window) if config.block_types[i % len(config.block_types)]
                              == "attention" else LayerSpec("rglru", "mlp")),
        "hawk": lambda i: LayerSpec("rglru", "mlp"),
        "jamba": lambda i: LayerSpec("attention" if i % config.attn_layer_period == config.attn_layer_offset else "mamba",
                                     "moe" if i % config.expert_layer_period == config.expert_layer_offset else "mlp"),
        "gated-deltanet": lambda i: LayerSpec("gated_deltanet", "mlp"),
        "qwen3-next": lambda i: LayerSpec("gated_attention" if (i + 1) % config.full_attention_interval == 0
                                          else "gated_deltanet", "moe"),
    }
    return tuple(patterns[config.arch](i) for i in range(n))
