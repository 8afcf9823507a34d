"""T3, Chatterbox's text-to-speech-token model."""

from .cond_encoder import T3Cond, T3CondEnc
from .config import T3Config
from .llama import KVCache, LlamaBackbone
from .loader import build_t3, load_t3
from .perceiver import Perceiver
from .t3 import T3

__all__ = [
    "KVCache",
    "LlamaBackbone",
    "Perceiver",
    "T3",
    "T3Cond",
    "T3CondEnc",
    "T3Config",
    "build_t3",
    "load_t3",
]
