"""nanohybrid: readable, tested reference implementations of hybrid attention / state-space language models."""

from .config import ARCHITECTURES, LayerSpec, ModelConfig
from .model import LanguageModel, ModelOutput
from .presets import PRESETS, get_config

__all__ = ["ARCHITECTURES", "PRESETS", "LayerSpec", "ModelConfig", "get_config", "LanguageModel", "ModelOutput"]
