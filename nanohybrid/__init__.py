"""nanohybrid: readable, tested reference implementations of hybrid attention / state-space language models."""

import torch

# SSM and RG-LRU states decay geometrically, and a decayed state is full of subnormal floats (below
# 1e-38 in fp32), on which CPUs compute up to 100 times slower. Flushing them to zero changes nothing
# that matters and keeps the scans fast (a tiny Hymba's training step: 40 s -> 0.7 s).
torch.set_flush_denormal(True)

from .config import ARCHITECTURES, PRESETS, LayerSpec, ModelConfig, get_config
from .model import LanguageModel, ModelOutput

__all__ = ["ARCHITECTURES", "PRESETS", "LayerSpec", "ModelConfig", "get_config", "LanguageModel", "ModelOutput"]
