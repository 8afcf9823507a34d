"""Server and engine settings, from CHATTERBOX_* environment variables (or a .env file).

Names follow what people already use with Chatterbox servers (CHATTERBOX_MODEL, CHATTERBOX_MAX_BATCH_SIZE,
CHATTERBOX_MAX_MODEL_LEN, CHATTERBOX_HOST, CHATTERBOX_PORT). A VRAM preset (low | medium | high) fills in the
engine limits; any limit set explicitly wins over its preset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PresetName = Literal["low", "medium", "high"]
DType = Literal["auto", "float32", "bfloat16", "float16"]


@dataclass(frozen=True)
class EngineLimits:
    """What bounds T3's GPU memory in vLLM: weights + KV cache for max_batch_size requests of max_model_len."""

    gpu_memory_gib: float
    max_batch_size: int
    max_model_len: int
    enforce_eager: bool
    dtype: str


# T3 in bfloat16 is ~1.1 GB; a token of KV cache costs 30 layers x 2 x 32 heads (both CFG branches) x 64 x 2 bytes
# = 240 KiB, so a 1536-token request holds ~0.36 GiB. S3Gen, the voice encoder and CUDA's own context need
# another 2-3 GB outside this budget, which is what the card sizes below leave room for.
PRESETS: dict[str, EngineLimits] = {
    "low": EngineLimits(gpu_memory_gib=3.0, max_batch_size=4, max_model_len=1536, enforce_eager=True, dtype="bfloat16"),
    "medium": EngineLimits(
        gpu_memory_gib=5.0, max_batch_size=12, max_model_len=2048, enforce_eager=False, dtype="bfloat16"
    ),
    "high": EngineLimits(
        gpu_memory_gib=10.0, max_batch_size=32, max_model_len=3072, enforce_eager=False, dtype="bfloat16"
    ),
}
PRESET_CARDS = {"low": "8 GB", "medium": "12 GB", "high": "24 GB"}

# The conditioning prefix (34) + a text of a few hundred tokens + T3's 1000 default speech tokens need this much.
MIN_MODEL_LEN = 256


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHATTERBOX_", env_file=".env", extra="ignore")

    model: str = Field("english", description="english | multilingual | a checkpoint directory")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit) of the model")
    device: str = Field("auto", description="auto (cuda if available) | cuda | cuda:N | cpu")
    engine: Literal["auto", "vllm", "torch"] = Field("auto", description="T3 backend")
    preset: PresetName = Field("medium", description="VRAM preset: low (8 GB cards), medium (12 GB), high (24 GB)")

    gpu_memory_gib: float | None = Field(None, gt=0, description="GPU memory for vLLM's T3 (weights + KV), GiB")
    max_batch_size: int | None = Field(None, ge=1, description="requests decoded together (vLLM max_num_seqs)")
    max_model_len: int | None = Field(None, ge=MIN_MODEL_LEN, description="prompt + speech tokens per request")
    enforce_eager: bool | None = Field(None, description="true: no CUDA graphs (less memory, slower)")
    dtype: DType | None = Field(None, description="T3 weights/activations in vLLM")

    host: str = Field("0.0.0.0", description="address the server listens on")
    port: int = Field(4123, ge=1, le=65535, description="port the server listens on")

    def limits(self) -> EngineLimits:
        """The preset's limits with every explicitly set value in its place."""
        preset = PRESETS[self.preset]
        return EngineLimits(
            gpu_memory_gib=self.gpu_memory_gib if self.gpu_memory_gib is not None else preset.gpu_memory_gib,
            max_batch_size=self.max_batch_size if self.max_batch_size is not None else preset.max_batch_size,
            max_model_len=self.max_model_len if self.max_model_len is not None else preset.max_model_len,
            enforce_eager=self.enforce_eager if self.enforce_eager is not None else preset.enforce_eager,
            dtype=self.dtype if self.dtype is not None else preset.dtype,
        )


def gpu_memory_utilization(budget_gib: float, total_bytes: int) -> float:
    """An absolute budget as vLLM's fraction of the device's memory (rounded down, so never above the budget)."""
    total_gib = total_bytes / 2**30
    fraction = math.floor(budget_gib / total_gib * 10_000) / 10_000
    if fraction > 0.98:
        raise ValueError(
            f"GPU memory budget {budget_gib:g} GiB does not fit this device ({total_gib:.1f} GiB); "
            "lower CHATTERBOX_GPU_MEMORY_GIB or pick a smaller preset"
        )
    if fraction < 0.01:
        raise ValueError(f"GPU memory budget {budget_gib:g} GiB is too small a share of {total_gib:.1f} GiB")
    return fraction
