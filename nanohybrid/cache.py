"""Inference state for every mixer, and the context that one forward call passes to every layer.

A sequence can be processed in one call or continued across calls (chunked prefill, then one token
at a time). What a layer must remember between calls:

  attention (global)       every key and value so far                         KVCache
  attention (sliding)      the meta-token prefix plus the keys still inside the window
  attention (KV consumer)  nothing: it reads its producer's keys and values
  Mamba-1 / Mamba-2        the last K-1 conv inputs and the SSM state          RecurrentState
  RG-LRU                   the last K-1 conv inputs and the hidden state       RecurrentState

Shape glossary
  b batch   l tokens in this call   h_kv key/value heads   hd head dim   c conv channels   K conv width
"""

from dataclasses import dataclass, field
from typing import NamedTuple

import torch


class RecurrentState(NamedTuple):
    """conv: (b, c, K-1) last conv inputs; ssm: (b, ...) the recurrent state, fp32."""

    conv: torch.Tensor
    ssm: torch.Tensor


@dataclass
class KVCache:
    """Keys and values of one attention producer, with the stream index and document id of every entry.

    k (b, h_kv, n, hd_k), v (b, h_kv, n, hd_v), index and document (b, n). After each call the entries
    that no later query can see (outside the window and not a meta token) are dropped.
    """

    k: torch.Tensor
    v: torch.Tensor
    index: torch.Tensor
    document: torch.Tensor

    def extend(self, k, v, index, document, max_distance: int | None, n_meta: int):
        """Append this call's entries. Returns all entries this call's queries may need (old and new)."""
        self.k = torch.cat([self.k, k], dim=2)
        self.v = torch.cat([self.v, v], dim=2)
        self.index = torch.cat([self.index, index], dim=1)
        self.document = torch.cat([self.document, document], dim=1)
        everything = self.k, self.v, self.index, self.document
        if max_distance is not None:
            next_query = index[0, -1] + 1
            keep = (self.index[0] < n_meta) | (self.index[0] >= next_query - max_distance)
            self.k, self.v = self.k[:, :, keep], self.v[:, :, keep]
            self.index, self.document = self.index[:, keep], self.document[:, keep]
        return everything


@dataclass
class InferenceCache:
    """The state of every layer, keyed by (layer index, kind) with kind "kv" or "ssm" (a Hymba layer has both).

    KV consumers have no entry. `length` counts the tokens already processed, meta tokens included:
    it is the stream index of the next token.
    """

    states: dict = field(default_factory=dict)
    length: int = 0
    document: torch.Tensor | None = None  # (b,) document id of the last token processed


@dataclass
class ForwardContext:
    """What every layer needs to know about the current call.

    positions (b, l): RoPE positions of this call's tokens; 0 marks a document start (RG-LRU reset).
    index (b, l): stream index of this call's tokens (meta tokens come first), used by attention masks.
    document (b, l): which document each token belongs to (a count of the document starts so far):
        attention never crosses a document boundary, as in transformers and DeepMind's RecurrentGemma.
    shared_kv: keys and values each attention producer exposes to its KV-sharing consumers in this call.
    router_logits: what each mixture-of-experts layer's router said in this call, for the aux loss.
    """

    positions: torch.Tensor
    index: torch.Tensor
    document: torch.Tensor
    n_meta: int
    cache: InferenceCache | None = None
    shared_kv: dict = field(default_factory=dict)
    router_logits: list = field(default_factory=list)

    def state(self, key: tuple[int, str]):
        return None if self.cache is None else self.cache.states.get(key)

    def save(self, key: tuple[int, str], state) -> None:
        if self.cache is not None:
            self.cache.states[key] = state
