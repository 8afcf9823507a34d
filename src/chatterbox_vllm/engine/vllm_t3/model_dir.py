"""The directory vLLM loads T3 from: a `config.json` describing the model (the doubled CFG stream for Llama T3,
GPT-2 as it is for Turbo and Nano), and the T3 weights.

vLLM reads every `*.safetensors` in a model directory, and a Chatterbox checkpoint keeps the voice encoder and
S3Gen beside T3, so the T3 file is linked into a directory of its own under the cache. Nothing is copied.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from ...compile_cache import cache_root
from ...models.t3.config import T3Config
from .plugin import BACKBONE_ARCHITECTURES

WEIGHTS_NAME = "model.safetensors"


def vllm_hf_config(config: T3Config) -> dict:
    """What vLLM's bookkeeping reads (sizes of the doubled stream) plus T3's own config for the model class.

    `mrope_section` only switches on vLLM's M-RoPE position path; the model applies its own (llama3) RoPE. GPT-2 T3
    has one stream (no CFG) and GPT-2's own config, read by vLLM's GPT-2 blocks.
    """
    if config.backbone == "gpt2":
        return {
            **config.hf_gpt2_config(),
            "architectures": [BACKBONE_ARCHITECTURES[config.backbone]],
            "vocab_size": config.speech_tokens_dict_size,  # what compute_logits returns
            # GPT-2's own 50256 lies outside the speech vocabulary (requests stop on stop_token_ids anyway)
            "bos_token_id": config.start_speech_token,
            "eos_token_id": config.stop_speech_token,
            "torch_dtype": "float32",
            "chatterbox_t3": dataclasses.asdict(config),
        }
    return {
        "architectures": [BACKBONE_ARCHITECTURES[config.backbone]],
        "model_type": "llama",
        "hidden_size": 2 * config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": 2 * config.num_attention_heads,
        "num_key_value_heads": 2 * config.num_key_value_heads,
        "head_dim": config.head_dim,
        "vocab_size": 2 * config.speech_tokens_dict_size,
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": config.rope_theta,
            "mrope_section": [config.head_dim // 2],
        },
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "chatterbox_t3": dataclasses.asdict(config),
    }


def prepare_model_dir(t3_weights: Path, config: T3Config, cache_dir: Path | None = None) -> Path:
    """Create (once) and return the vLLM model directory for these T3 weights and config, under `cache_dir`
    (the server's cache directory; None: the settings', `compile_cache.cache_root`)."""
    t3_weights = Path(t3_weights).resolve()
    if t3_weights.suffix != ".safetensors":
        raise ValueError(f"vLLM loads T3 from a .safetensors file, got {t3_weights.name}")
    hf_config = vllm_hf_config(config)
    stat = t3_weights.stat()
    key = hashlib.sha256(
        json.dumps([str(t3_weights), stat.st_size, stat.st_mtime_ns, hf_config], sort_keys=True).encode()
    ).hexdigest()[:16]
    directory = cache_root(cache_dir) / "vllm-t3" / key
    directory.mkdir(parents=True, exist_ok=True)
    link = directory / WEIGHTS_NAME
    if not link.is_symlink() or Path(os.readlink(link)) != t3_weights:
        tmp = directory / f".{WEIGHTS_NAME}.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(t3_weights)
        tmp.replace(link)
    config_path = directory / "config.json"
    text = json.dumps(hf_config, indent=2, sort_keys=True)
    if not config_path.exists() or config_path.read_text() != text:
        tmp = directory / f".config.json.{os.getpid()}"
        tmp.write_text(text)
        tmp.replace(config_path)
    return directory
