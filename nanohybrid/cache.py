"""Inference state for every mixer, and the context that one forward call passes to every layer.

A stream can be processed in one call or continued across calls (chunked prefill, then one token at
a time). What each layer keeps between calls:

  attention, global          every key and value so far (grows by one slot per token)     KVCache
  attention, sliding window  the meta-token prefix plus a ring buffer of `window` slots    KVCache
  attention, KV consumer     nothing: it reads its producer's keys and values, so a producer keeps what
                             its widest consumer sees (every key, if one of them is global)
  Mamba-1 / Mamba-2          the last K-1 conv inputs and the SSM state                    RecurrentState
  RG-LRU                     the last K-1 conv inputs and the hidden state                 RecurrentState

A KVCache slot holds one token's key and value, with its stream index and document id. Token i goes
to slot i (global), or to slot i for meta tokens and M + (i - M) mod window for the others (ring):
the token it overwrites is exactly the one that has just left every later query's window. Slots
that were never written carry the index EMPTY, later than any query, so no mask lets them through.
Rows of a batch may be at different lengths (prompts of different lengths): slots are per row.

Shape glossary
  b batch   l tokens in this call   n slots   h_kv key/value heads   hd head dim
  c conv channels   K conv width   M meta tokens
"""

from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch

EMPTY = torch.iinfo(torch.int64).max  # the stream index of a slot never written: after every query


class RecurrentState(NamedTuple):
    """conv: (b, c, K-1) last conv inputs; ssm: (b, ...) the recurrent state, fp32."""

    conv: torch.Tensor
    ssm: torch.Tensor


@dataclass
class KVCache:
    """k (b, h_kv, n, hd_k), v (b, h_kv, n, hd_v), index and document (b, n) of one attention producer."""

    k: torch.Tensor
    v: torch.Tensor
    index: torch.Tensor
    document: torch.Tensor
    n_meta: int
    window: int | None  # ring slots for the real tokens: the largest q - k a query may see; None = global

    @classmethod
    def empty(cls, k: torch.Tensor, v: torch.Tensor, n_meta: int, window: int | None) -> "KVCache":
        """No slots yet, shaped like this call's keys k (b, h_kv, l, hd_k) and values v."""
        index = torch.full((k.shape[0], 0), EMPTY, dtype=torch.long, device=k.device)
        return cls(k[:, :, :0], v[:, :, :0], index, index.clone(), n_meta, window)

    def slots(self, index: torch.Tensor) -> torch.Tensor:
        if self.window is None:
            return index
        return torch.where(index < self.n_meta, index, self.n_meta + (index - self.n_meta) % self.window)

    def extend(self, k, v, index, document):
        """Returns what this call's queries may attend to (the stored slots, then this call's tokens),
        and stores this call's tokens. k, v (b, h_kv, l, hd); index, document (b, l)."""
        visible = (torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2),
                   torch.cat([self.index, index], dim=1), torch.cat([self.document, document], dim=1))
        store = torch.ones(index.shape[1], dtype=torch.bool, device=index.device)
        if self.window is not None:  # meta tokens, and the last `window` others: all a later query can see
            store = (index[0] < self.n_meta) | (torch.arange(index.shape[1], device=index.device) >= index.shape[1] - self.window)
        k, v, index, document = k[:, :, store], v[:, :, store], index[:, store], document[:, store]
        slots = self.slots(index)  # (b, l_stored), distinct within each row
        self._grow(int(slots.max()) + 1 if slots.numel() else 0)
        self.k.scatter_(2, slots[:, None, :, None].expand_as(k), k)
        self.v.scatter_(2, slots[:, None, :, None].expand_as(v), v)
        self.index.scatter_(1, slots, index)
        self.document.scatter_(1, slots, document)
        return visible

    def _grow(self, n: int) -> None:
        extra = n - self.index.shape[1]
        if extra <= 0:
            return
        def pad(t, value, dim):
            shape = list(t.shape)
            shape[dim] = extra
            return torch.cat([t, t.new_full(shape, value)], dim=dim)
        self.k, self.v = pad(self.k, 0, 2), pad(self.v, 0, 2)
        self.index, self.document = pad(self.index, EMPTY, 1), pad(self.document, -1, 1)

    def padded(self, n: int) -> "KVCache":
        """A copy with n slots (unused ones EMPTY), for stacking rows of different lengths."""
        copy = replace(self, k=self.k.clone(), v=self.v.clone(), index=self.index.clone(), document=self.document.clone())
        copy._grow(n)
        return copy


def _batch_map(state, function):
    """Apply `function` to every per-row tensor of a layer state."""
    if isinstance(state, KVCache):
        return replace(state, k=function(state.k), v=function(state.v),
                       index=function(state.index), document=function(state.document))
    return RecurrentState(function(state.conv), function(state.ssm))


@dataclass
class InferenceCache:
    """The state of every layer, keyed by (layer index, kind) with kind "kv" or "ssm" (a Hymba layer has both).

    KV consumers have no entry. `length` (b,) counts the tokens each row has processed, meta tokens
    included: the stream index of its next token. `document` (b,) is the document of its last token.
    """

    states: dict = field(default_factory=dict)
    length: torch.Tensor | None = None
    document: torch.Tensor | None = None

    def repeat(self, batch: int) -> "InferenceCache":
        """A copy with every row of this batch-1 cache repeated `batch` times (the meta-token prefix)."""
        return InferenceCache(
            {key: _batch_map(state, lambda t: t.repeat(batch, *[1] * (t.dim() - 1))) for key, state in self.states.items()},
            self.length.repeat(batch), self.document.repeat(batch),
        )

    @classmethod
    def stack(cls, caches: list["InferenceCache"]) -> "InferenceCache":
        """One cache whose rows are the given caches' rows, which may be at different lengths."""
        states = {}
        for key, first in caches[0].states.items():
            rows = [cache.states[key] for cache in caches]
            if isinstance(first, KVCache):
                n = max(row.index.shape[1] for row in rows)
                rows = [row.padded(n) for row in rows]
                states[key] = replace(first, **{name: torch.cat([getattr(row, name) for row in rows])
                                                for name in ("k", "v", "index", "document")})
            else:
                states[key] = RecurrentState(*(torch.cat(parts) for parts in zip(*rows)))
        return cls(states, torch.cat([c.length for c in caches]), torch.cat([c.document for c in caches]))

    def nbytes(self) -> dict[tuple[int, str], int]:
        """Bytes held, by (layer, kind): kv-global, kv-window (keys and values), kv-index (their
        stream indices and document ids), conv and ssm."""
        sizes = {}
        for (layer, _), state in self.states.items():
            if isinstance(state, KVCache):
                sizes[(layer, "kv-global" if state.window is None else "kv-window")] = state.k.nbytes + state.v.nbytes
                sizes[(layer, "kv-index")] = state.index.nbytes + state.document.nbytes
            else:
                sizes[(layer, "conv")] = state.conv.nbytes
                sizes[(layer, "ssm")] = state.ssm.nbytes
        return sizes


@dataclass
class ForwardContext:
    """What every layer needs to know about the current call.

    positions (b, l): RoPE positions of this call's tokens; 0 marks a document start (RG-LRU reset).
    index (b, l): stream index of this call's tokens (meta tokens come first), used by attention masks.
    document (b, l): which document each token belongs to (a count of the document starts so far):
        attention never crosses a document boundary, as in transformers and DeepMind's RecurrentGemma.
    shared_kv: keys and values each attention producer exposes to its KV-sharing consumers in this call.
    router_logits: what each mixture-of-experts layer's router said in this call, for the aux loss.
    rotary: RoPE's cos and sin at this call's positions, per (rotary_dim, theta) (see rotary_angles).
    """

    positions: torch.Tensor
    index: torch.Tensor
    document: torch.Tensor
    n_meta: int
    cache: InferenceCache | None = None
    shared_kv: dict = field(default_factory=dict)
    router_logits: list = field(default_factory=list)
    rotary: dict = field(default_factory=dict)

    def rotary_angles(self, rope) -> tuple[torch.Tensor, torch.Tensor]:
        """rope.angles(positions), computed by the first layer that asks and shared by every later one with
        the same frequencies (transformers too computes them once per forward pass)."""
        key = (rope.rotary_dim, rope.theta)
        if key not in self.rotary:
            self.rotary[key] = rope.angles(self.positions)
        return self.rotary[key]

    def state(self, key: tuple[int, str]):
        return None if self.cache is None else self.cache.states.get(key)

    def save(self, key: tuple[int, str], state) -> None:
        if self.cache is not None:
            self.cache.states[key] = state
