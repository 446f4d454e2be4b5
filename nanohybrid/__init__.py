"""nanohybrid: readable, tested reference implementations of hybrid attention / state-space language models."""

from .config import ARCHITECTURES, PRESETS, LayerSpec, ModelConfig, get_config
from .model import LanguageModel, ModelOutput

__all__ = ["ARCHITECTURES", "PRESETS", "LayerSpec", "ModelConfig", "get_config", "LanguageModel", "ModelOutput"]
