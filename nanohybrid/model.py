"""The language model: embedding -> (meta tokens) -> blocks by layer pattern -> norm -> LM head.

Every block is pre-norm (x += mixer(norm(x)); x += ffn(norm(x))), whatever its mixer, so one Block
class assembles every architecture from config.layers.

Shape glossary
  b batch   l tokens in this call   M meta tokens (prepended only when the stream starts)   d d_model   V vocab
"""

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import Attention, GatedAttention
from .cache import ForwardContext, InferenceCache
from .config import LayerSpec, ModelConfig
from .gated_deltanet import GatedDeltaNet
from .hybrid_head import HybridHead
from .layers import GatedMLP, RMSNorm
from .mamba import Mamba, Mamba2
from .meta_tokens import MetaTokens
from .moe import MixtureOfExperts, load_balancing_loss
from .rglru import RecurrentBlock

MIXERS = {
    "attention": lambda config, spec, i: Attention(config, spec, i),
    "hymba": lambda config, spec, i: HybridHead(config, spec, i),
    "mamba": lambda config, spec, i: Mamba(config, i),
    "mamba2": lambda config, spec, i: Mamba2(config, i),
    "rglru": lambda config, spec, i: RecurrentBlock(config, i),
    "gated_attention": lambda config, spec, i: GatedAttention(config, spec, i),
    "gated_deltanet": lambda config, spec, i: GatedDeltaNet(config, i),
}
# Projections that write into the residual stream: initialised with std / sqrt(2 · n_layers) (GPT-2).
RESIDUAL_OUTPUTS = ("out_proj.weight", "o_proj.weight", "down_proj.weight", "linear_out.weight", "ffn.down_proj")


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (b, l, V), real tokens only
    loss: torch.Tensor | None = None  # cross-entropy + router_aux_loss_coef · aux_loss, when targets are given
    aux_loss: torch.Tensor | None = None  # MoE load-balancing loss, pooled over all MoE layers
    router_logits: list = field(default_factory=list)  # one (b·l, n_experts) tensor per MoE layer


class Block(nn.Module):
    def __init__(self, config: ModelConfig, spec: LayerSpec, layer_idx: int):
        super().__init__()
        self.mixer_norm = RMSNorm(config.d_model, config.norm_eps, config.norm_offset)
        self.mixer = MIXERS[spec.mixer](config, spec, layer_idx)
        self.ffn_kind = spec.ffn
        if spec.ffn != "none":
            self.ffn_norm = RMSNorm(config.d_model, config.norm_eps, config.norm_offset)
        if spec.ffn == "mlp":
            self.ffn = GatedMLP(config.d_model, config.d_ff, config.mlp_activation, config.mlp_bias)
        elif spec.ffn == "moe":
            self.ffn = MixtureOfExperts(config)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:  # (b, l, d) -> (b, l, d)
        x = x + self.mixer(self.mixer_norm(x), ctx)
        if self.ffn_kind == "mlp":
            x = x + self.ffn(self.ffn_norm(x))
        elif self.ffn_kind == "moe":
            y, router_logits = self.ffn(self.ffn_norm(x))
            ctx.router_logits.append(router_logits)
            x = x + y
        return x


class LanguageModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        # padding_idx: that row's lookup passes no gradient (the released Hymba); init_weights still draws it.
        self.embedding = nn.Embedding(config.vocab_size, config.d_model, padding_idx=config.embedding_padding_idx)
        self.meta_tokens = MetaTokens(config.n_meta_tokens, config.d_model) if config.n_meta_tokens else None
        self.blocks = nn.ModuleList(Block(config, spec, i) for i, spec in enumerate(config.layers))
        self.final_norm = RMSNorm(config.d_model, config.norm_eps, config.norm_offset)
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.d_model, config.vocab_size, bias=False)
        # sqrt(d) rounded to bf16, as RecurrentGemma multiplies its embeddings ("to match training").
        self.embedding_scale = torch.tensor(config.d_model**0.5, dtype=torch.bfloat16, device="cpu").item() if config.scale_embeddings else None
        self._meta_prefix = None  # (weights fingerprint, InferenceCache): see meta_prefix()
        self.init_weights()

    def init_weights(self) -> None:
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        for module in self.modules():  # mixers with their own init (Δ, A, Λ, experts)
            if module is not self and hasattr(module, "init_weights"):
                module.init_weights()
        for name, parameter in self.named_parameters():
            if name.endswith(RESIDUAL_OUTPUTS):
                nn.init.normal_(parameter, std=std / math.sqrt(2 * self.config.n_layers))

    def num_parameters(self, active: bool = False) -> int:
        """Parameters, tied embeddings counted once. active=True counts only the k routed experts per MoE layer."""
        total = sum(p.numel() for p in self.parameters())
        if active:
            for module in self.modules():
                if isinstance(module, MixtureOfExperts):
                    experts = module.gate_proj.shape[0]
                    expert_params = sum(p.numel() for p in (module.gate_proj, module.up_proj, module.down_proj))
                    total -= expert_params * (experts - module.k) // experts
        return total

    def forward(self, tokens, targets=None, positions=None, cache: InferenceCache | None = None) -> ModelOutput:
        """tokens (b, l); targets (b, l) next tokens, -100 to ignore; positions (b, l) RoPE positions of the
        real tokens (0 marks a document start; default: their place in the stream); cache: an InferenceCache
        to continue, or a fresh one, which starts from the precomputed meta-token prefix."""
        config, n_meta = self.config, self.config.n_meta_tokens
        if cache is not None and cache.length is None:
            self._start(cache, tokens.shape[0])
        prepend = n_meta > 0 and cache is None  # a full forward pass runs the meta tokens itself
        x = self.embedding(tokens)
        if self.embedding_scale is not None:
            x = x * self.embedding_scale
        if positions is not None and n_meta:  # the caller counts real tokens: shift them past the meta tokens
            positions = positions + n_meta
        if prepend:
            x = self.meta_tokens.prepend(x)
            if positions is not None:
                positions = torch.cat([torch.arange(n_meta, device=x.device).expand(x.shape[0], -1), positions], dim=1)
        x, ctx = self.run_blocks(x, positions, cache)
        x = self.final_norm(x)
        if prepend:
            x = self.meta_tokens.strip(x)
        logits = F.linear(x, self.embedding.weight) if self.lm_head is None else self.lm_head(x)
        if config.logit_softcap is not None:
            logits = config.logit_softcap * torch.tanh(logits / config.logit_softcap)
        output = ModelOutput(logits=logits, router_logits=ctx.router_logits)
        if ctx.router_logits:
            output.aux_loss = load_balancing_loss(ctx.router_logits, config.experts_per_token)
        if targets is not None:
            output.loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
            if output.aux_loss is not None:
                output.loss = output.loss + config.router_aux_loss_coef * output.aux_loss
        return output

    def run_blocks(self, x: torch.Tensor, positions: torch.Tensor | None, cache: InferenceCache | None):
        """x (b, l, d) embedded tokens, meta tokens included -> (b, l, d) after every block, and the context."""
        batch, length, _ = x.shape
        start = torch.zeros(batch, dtype=torch.long, device=x.device) if cache is None else cache.length
        index = start[:, None] + torch.arange(length, device=x.device)  # (b, l) stream indices
        real_tokens = int(index[:, -1].max()) + 1 - self.config.n_meta_tokens
        if real_tokens > self.config.max_seq_len:
            raise ValueError(
                f"sequence of {real_tokens} tokens exceeds max_seq_len={self.config.max_seq_len} of this "
                f"{self.config.arch} model; shorten the input or raise max_seq_len"
            )
        if positions is None:
            positions = index
        previous_document = 0 if cache is None else cache.document[:, None]
        document = previous_document + torch.cumsum(positions == 0, dim=1)  # a new document at every position 0
        ctx = ForwardContext(positions, index, document, self.config.n_meta_tokens, cache)
        for block in self.blocks:
            x = block(x, ctx)
        if cache is not None:
            cache.length, cache.document = index[:, -1] + 1, document[:, -1]
        return x, ctx

    def _start(self, cache: InferenceCache, batch: int) -> None:
        """Begin a fresh cache: from the meta-token prefix if the model has meta tokens, else empty."""
        if self.meta_tokens is None:
            cache.length = cache.document = torch.zeros(batch, dtype=torch.long, device=self.embedding.weight.device)
            return
        prefix = self.meta_prefix().repeat(batch)
        cache.states, cache.length, cache.document = prefix.states, prefix.length, prefix.document

    @torch.no_grad()
    def meta_prefix(self) -> InferenceCache:
        """The meta tokens' keys, values, conv and SSM states, for one row: Hymba's "learned cache
        initialisation". Computed once and reused for every prompt; recomputed only after a weight changes
        (an in-place update bumps a parameter's version counter; loading new weights moves or bumps them)."""
        fingerprint = tuple((p.data_ptr(), p._version) for p in self.parameters())
        if self._meta_prefix is None or self._meta_prefix[0] != fingerprint:
            cache = InferenceCache()
            cache.length = cache.document = torch.zeros(1, dtype=torch.long, device=self.embedding.weight.device)
            self.run_blocks(self.meta_tokens.embeddings[None], None, cache)
            self._meta_prefix = (fingerprint, cache)
        return self._meta_prefix[1]
