"""GPT-2 T3 (Turbo, Nano) as a vLLM model: vLLM's own GPT-2 blocks, fed T3's conditioning prefix.

How the reference's `T3.inference_turbo` maps onto vLLM:

* Prefix. `[speaker | 375 prompt speech tokens | text | start-of-speech]` embeddings are built outside vLLM (by
  `T3.prefill_embeds`) and arrive as the request's `prompt_embeds`.
* Positions. GPT-2 adds its absolute position table (`wpe`) to every input, counting from 0 over the whole
  sequence; vLLM's positions for a prompt of embeddings and for the tokens after it are exactly those.
* Tokens. A sampled speech token is embedded with T3's `speech_emb` (GPT-2's own `wte` is in the file but unused),
  and the speech head has a bias. No CFG: one row per request.
* Sampling. `TurboLogitsProcessor` (`logits.py`) applies the reference's chain; vLLM only draws from the result.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from vllm.compilation.decorators import support_torch_compile
from vllm.config import VllmConfig
from vllm.model_executor.models.gpt2 import GPT2Block

from .model import compile_enabled, t3_config_of

GPT2_ARCHITECTURE = "ChatterboxGPT2T3ForVLLM"
CONV1D_WEIGHTS = ("c_attn.weight", "c_proj.weight", "c_fc.weight")  # HF Conv1D: stored [in, out]


def gpt2_weight_name_of(file_name: str) -> str | None:
    """A T3 file tensor's name in this model, or None for tensors the vLLM side does not hold (conditioning, text,
    GPT-2's unused `wte`)."""
    if file_name == "tfmr.wte.weight":
        return None
    if file_name.startswith("tfmr."):
        return "transformer." + file_name.removeprefix("tfmr.")
    if file_name.startswith(("speech_emb.", "speech_head.")):
        return file_name
    return None


@support_torch_compile(
    dynamic_arg_dims={"positions": 0, "inputs_embeds": 0},
    enable_if=compile_enabled,
)
class T3GPT2Stack(nn.Module):
    """`wpe` + vLLM's `GPT2Block`s + the final LayerNorm over input embeddings: what vLLM compiles."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        hf_config: Any = vllm_config.model_config.hf_config  # GPT-2's config, as vLLM's GPT2Block reads it
        config = t3_config_of(vllm_config)
        self.wpe = nn.Embedding(config.n_positions, config.hidden_size)
        self.h = nn.ModuleList(
            GPT2Block(hf_config, vllm_config.cache_config, vllm_config.quant_config, prefix=f"{prefix}.h.{i}")
            for i in range(config.num_hidden_layers)
        )
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)

    def forward(self, positions: torch.Tensor, inputs_embeds: torch.Tensor) -> torch.Tensor:
        h = inputs_embeds + self.wpe(positions)
        for block in self.h:
            h = block(h)
        return self.ln_f(h)


class ChatterboxGPT2T3ForVLLM(nn.Module):
    """GPT-2 T3 decoding in vLLM. Parameter names follow the T3 file with `tfmr.` under `transformer.`."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = t3_config_of(vllm_config)
        if config.backbone != "gpt2":
            raise ValueError("ChatterboxGPT2T3ForVLLM serves GPT-2 T3 (Turbo, Nano) only")
        self.config = config
        self.transformer = T3GPT2Stack(
            vllm_config=vllm_config, prefix=f"{prefix}.transformer" if prefix else "transformer"
        )
        self.speech_emb = nn.Embedding(config.speech_tokens_dict_size, config.hidden_size)
        self.speech_head = nn.Linear(config.hidden_size, config.speech_tokens_dict_size, bias=True)

    # ------------------------------------------------------------------------------------- vLLM interface
    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.speech_emb(input_ids.clamp(0, self.config.speech_tokens_dict_size - 1))

    get_input_embeddings = embed_input_ids  # the name older vLLM releases call

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        **_: Any,
    ) -> torch.Tensor:
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("T3 needs input_ids or inputs_embeds")
            inputs_embeds = self.embed_input_ids(input_ids)
        return self.transformer(positions, inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor, *_: Any) -> torch.Tensor:
        return self.speech_head(hidden_states)

    # ------------------------------------------------------------------------------------------ weights
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Take this model's tensors from a T3 file; every parameter must be found with its exact shape. Conv1D
        weights are transposed to vLLM's [out, in]; fused projections load through their own `weight_loader`."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for file_name, tensor in weights:
            name = gpt2_weight_name_of(file_name)
            if name is None:
                continue
            if name.endswith(CONV1D_WEIGHTS):
                tensor = tensor.t()
            param = params.get(name)
            if param is None:
                raise ValueError(f"T3 tensor {file_name!r} has no place in the GPT-2 vLLM model ({name})")
            if tuple(param.shape) != tuple(tensor.shape):
                raise ValueError(
                    f"T3 tensor {file_name!r} has shape {tuple(tensor.shape)}; expected {tuple(param.shape)}"
                )
            loader = getattr(param, "weight_loader", None)
            with torch.no_grad():
                if loader is not None:
                    loader(param, tensor.to(dtype=param.dtype).contiguous())
                else:
                    param.copy_(tensor.to(dtype=param.dtype))
            loaded.add(name)
        missing = sorted(set(params) - loaded)
        if missing:
            raise ValueError(f"T3 weights lack {len(missing)} tensors the vLLM model needs, e.g. {missing[:3]}")
        return loaded
