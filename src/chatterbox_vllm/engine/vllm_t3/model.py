"""T3's backbone and speech head as a vLLM model, with classifier-free guidance inside one request.

How the reference's decode loop maps onto vLLM:

* Prefix. The conditioning, text and start-of-speech embeddings are built outside vLLM (by `T3.prefill_embeds`)
  and arrive as the request's `prompt_embeds`.
* CFG. Both branches of a request travel side by side in a doubled hidden state `[cond | uncond]`
  (2 x hidden, 2 x heads). Every layer applies the *same* T3 weights to each half, and the attention heads of the
  two halves never mix, so each half computes exactly what the reference's batch row computes. `compute_logits`
  returns `[cond logits | uncond logits]`; `CFGLogitsProcessor` mixes them and hides the second half from the
  sampler, so one token is sampled per step and fed back to both branches.
* Learned speech positions. The reference embeds generated token i at speech position i + 1. vLLM gives a model
  only token ids and positions, so the positions carry it: through the M-RoPE interface each request's prompt
  is placed at positions `[P - len(prompt), P)` with a fixed `P` (`first_generated_position`), and vLLM continues
  decode positions from `P`. RoPE depends only on position differences, so the shift changes nothing in
  attention, and every generated token finds its speech position as `position - P + 1`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn
from vllm.compilation.decorators import support_torch_compile
from vllm.config import VllmConfig
from vllm.model_executor.layers.attention import Attention

from ...models.t3.config import T3Config
from ...models.t3.llama import RMSNorm, llama3_inv_freq
from .plugin import T3_COMPILE

ARCHITECTURE = "ChatterboxT3ForVLLM"


# A file's separate projections -> (the fused module that holds them, which shard of its rows).
FUSED_SHARDS = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}


def weight_name_of(file_name: str) -> str:
    """A T3 file tensor's name in this model (names of tensors the model does not use pass through)."""
    if file_name.startswith("tfmr."):
        return "model." + file_name.removeprefix("tfmr.")
    if file_name == "speech_pos_emb.emb.weight":
        return "model.speech_pos_emb.weight"
    return file_name


def first_generated_position(config: T3Config) -> int:
    """`P`: one past the longest prompt T3 can take (conditioning + every text position + two start tokens)."""
    return config.cond_len + config.text_pos_emb_size + 2


def t3_config_of(vllm_config: VllmConfig) -> T3Config:
    hf_config = vllm_config.model_config.hf_config
    return T3Config.from_dict(dict(hf_config.chatterbox_t3))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class ShiftedRotaryTable(nn.Module):
    """cos/sin for every position a request can reach, computed once in float64.

    Shifted positions run up to ~6k; float32 angles there would carry ~1e-4 rad of rounding that the reference
    (positions from 0) does not have, so the angles are formed in float64 from HF's float32 inverse frequencies.
    """

    cos: torch.Tensor
    sin: torch.Tensor

    def __init__(self, config: T3Config, num_positions: int) -> None:
        super().__init__()
        # Built under vLLM's target-device context, so these land on the model's device.
        inv_freq = llama3_inv_freq(config).to(torch.float64)
        angles = torch.arange(num_positions, dtype=torch.float64)[:, None] * inv_freq[None, :]
        angles = torch.cat((angles, angles), dim=-1)
        dtype = torch.get_default_dtype()
        self.register_buffer("cos", angles.cos().to(dtype), persistent=False)
        self.register_buffer("sin", angles.sin().to(dtype), persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos[positions], self.sin[positions]


class FusedLinear(nn.Linear):
    """Several bias-free projections of one input as one GEMM (decode GEMMs have 2 rows a request, so they are
    latency-bound: fewer, larger ones are faster). The file keeps them apart; `load_shard` fills the rows."""

    def __init__(self, in_features: int, shards: tuple[int, ...]) -> None:
        super().__init__(in_features, sum(shards), bias=False)
        self.shards = shards

    def load_shard(self, index: int, tensor: torch.Tensor, file_name: str) -> None:
        rows = self.shards[index]
        if tuple(tensor.shape) != (rows, self.in_features):
            raise ValueError(
                f"T3 tensor {file_name!r} has shape {tuple(tensor.shape)}; expected {(rows, self.in_features)}"
            )
        start = sum(self.shards[:index])
        with torch.no_grad():
            self.weight[start : start + rows].copy_(tensor.to(dtype=self.weight.dtype))


class CFGAttention(nn.Module):
    """Llama attention over a [tokens, 2, hidden] stream: 2 x heads in one vLLM attention layer (one KV cache)."""

    def __init__(self, config: T3Config, vllm_config: VllmConfig, prefix: str) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        hidden = config.hidden_size
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = FusedLinear(hidden, (self.q_size, self.kv_size, self.kv_size))
        self.o_proj = nn.Linear(self.q_size, hidden, bias=False)
        self.attn = Attention(
            num_heads=2 * self.num_heads,
            head_size=self.head_dim,
            scale=self.head_dim**-0.5,
            num_kv_heads=2 * self.num_kv_heads,
            cache_config=vllm_config.cache_config,
            prefix=f"{prefix}.attn",
        )

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        q, k, v = self.qkv_proj(x).split((self.q_size, self.kv_size, self.kv_size), dim=-1)
        q = q.reshape(n, 2 * self.num_heads, self.head_dim)
        k = k.reshape(n, 2 * self.num_kv_heads, self.head_dim)
        v = v.reshape(n, -1)
        cos, sin = cos[:, None, :], sin[:, None, :]
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        out = self.attn(q.reshape(n, -1), k.reshape(n, -1), v)
        return self.o_proj(out.view(n, 2, self.q_size))


class MLP(nn.Module):
    def __init__(self, config: T3Config) -> None:
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.gate_up_proj = FusedLinear(config.hidden_size, (config.intermediate_size, config.intermediate_size))
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.intermediate_size, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, config: T3Config, vllm_config: VllmConfig, prefix: str) -> None:
        super().__init__()
        self.self_attn = CFGAttention(config, vllm_config, prefix=f"{prefix}.self_attn")
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = h + self.self_attn(self.input_layernorm(h), cos, sin)
        return h + self.mlp(self.post_attention_layernorm(h))


def compile_enabled(vllm_config: VllmConfig) -> bool:
    """torch.compile (and with it vLLM's piecewise CUDA graphs) on GPUs only: on CPU, inductor's C++ build costs
    minutes at every engine start for a model whose decode is not launch-bound there.
    The model config's `T3_COMPILE` entry (false from CHATTERBOX_T3_COMPILE=false, which reaches this process
    through the engine arguments) turns it off on a GPU too (eager kernels, full-model CUDA graphs only)."""
    if not getattr(vllm_config.model_config.hf_config, T3_COMPILE, True):
        return False
    return vllm_config.device_config.device_type == "cuda"


@support_torch_compile(
    dynamic_arg_dims={"input_ids": 0, "positions": -1, "intermediate_tensors": 0, "inputs_embeds": 0},
    enable_if=compile_enabled,
)
class T3Backbone(nn.Module):
    """The Llama layers over the doubled CFG stream, plus the learned speech positions: what vLLM compiles."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = t3_config_of(vllm_config)
        self.config = config
        self.first_generated_position = first_generated_position(config)
        self.layers = nn.ModuleList(
            DecoderLayer(config, vllm_config, prefix=f"{prefix}.layers.{i}" if prefix else f"layers.{i}")
            for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.speech_pos_emb = nn.Embedding(config.speech_pos_emb_size, config.hidden_size)
        self.rotary = ShiftedRotaryTable(config, self.first_generated_position + config.speech_pos_emb_size)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: Any = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        positions = positions[0] if positions.dim() == 2 else positions  # M-RoPE rows are identical
        n = positions.shape[0]
        assert inputs_embeds is not None  # the outer model embeds sampled tokens
        h = inputs_embeds.view(n, 2, self.config.hidden_size)

        # Generated tokens (positions >= P) get their learned speech position; prompt rows arrived complete.
        speech_pos = positions - (self.first_generated_position - 1)
        generated = (speech_pos > 0).unsqueeze(-1).to(h.dtype)
        speech_pos = speech_pos.clamp(0, self.config.speech_pos_emb_size - 1)
        h = h + (self.speech_pos_emb(speech_pos) * generated).unsqueeze(1)

        cos, sin = self.rotary(positions)
        for layer in self.layers:
            h = layer(h, cos, sin)
        return self.norm(h).view(n, 2 * self.config.hidden_size)


class ChatterboxT3ForVLLM(nn.Module):
    """T3 decoding in vLLM: the backbone plus the speech embedding and head. Parameter names follow the T3
    weight file with `tfmr.` (and the speech position table) under `model.`."""

    # The M-RoPE interface (`SupportsMRoPE`) is how this model shifts its positions; see the module docstring.
    supports_mrope: ClassVar[Literal[True]] = True

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = t3_config_of(vllm_config)
        self.config = config
        self.first_generated_position = first_generated_position(config)
        self.model = T3Backbone(vllm_config=vllm_config, prefix=f"{prefix}.model" if prefix else "model")
        self.speech_emb = nn.Embedding(config.speech_tokens_dict_size, config.hidden_size)
        self.speech_head = nn.Linear(config.hidden_size, config.speech_tokens_dict_size, bias=False)

    # ------------------------------------------------------------------------------------- vLLM interface
    def get_mrope_input_positions(self, input_tokens: list[int], mm_features: Any = None) -> tuple[torch.Tensor, int]:
        """Prompt positions `[P - L, P)` on every M-RoPE row; decode then continues at `P` (delta = P - L)."""
        length = len(input_tokens)
        start = self.first_generated_position - length
        if start < 0:
            raise ValueError(f"a T3 prompt holds at most {self.first_generated_position} embeddings, got {length}")
        positions = torch.arange(start, start + length, dtype=torch.int64)
        return positions.unsqueeze(0).expand(3, -1).clone(), start

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """A sampled speech token, fed to both CFG branches (its position embedding is added in the backbone)."""
        emb = self.speech_emb(input_ids.clamp(0, self.config.speech_tokens_dict_size - 1))
        return torch.cat((emb, emb), dim=-1)

    # Older vLLM releases call it by this name.
    get_input_embeddings = embed_input_ids

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
        return self.model(None, positions, intermediate_tensors, inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor, *_: Any) -> torch.Tensor:
        """[tokens, 2 * speech vocab]: conditional logits, then unconditional (mixed by `CFGLogitsProcessor`)."""
        n = hidden_states.shape[0]
        logits = self.speech_head(hidden_states.view(n, 2, self.config.hidden_size))
        return logits.view(n, 2 * self.config.speech_tokens_dict_size)

    # ------------------------------------------------------------------------------------------ weights
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Take this model's tensors from a T3 file; the conditioning and text tensors stay with the torch side.

        Every parameter must be found with its exact shape: a missing or mis-shaped tensor is an error naming it.
        q/k/v and gate/up land in their fused projections (`FusedLinear`).
        """
        params = dict(self.named_parameters())
        modules = dict(self.named_modules())
        needed = set(params)
        for name, module in modules.items():
            if isinstance(module, FusedLinear):
                needed.discard(f"{name}.weight")
                needed.update(f"{name}.weight#{i}" for i in range(len(module.shards)))
        loaded: set[str] = set()
        for file_name, tensor in weights:
            name = weight_name_of(file_name)
            owner, _, leaf = name.removesuffix(".weight").rpartition(".")
            if leaf in FUSED_SHARDS:
                fused_name, shard = FUSED_SHARDS[leaf]
                module = modules.get(f"{owner}.{fused_name}")
                if isinstance(module, FusedLinear):
                    module.load_shard(shard, tensor, file_name)
                    loaded.add(f"{owner}.{fused_name}.weight#{shard}")
                continue
            param = params.get(name)
            if param is None:
                continue  # cond_enc, text_emb, text_pos_emb, text_head, tfmr.embed_tokens: not used here
            if tuple(param.shape) != tuple(tensor.shape):
                raise ValueError(
                    f"T3 tensor {file_name!r} has shape {tuple(tensor.shape)}; expected {tuple(param.shape)}"
                )
            with torch.no_grad():
                param.copy_(tensor.to(dtype=param.dtype))
            loaded.add(name)
        missing = sorted(needed - loaded)
        if missing:
            raise ValueError(f"T3 weights lack {len(missing)} tensors the vLLM model needs, e.g. {missing[:3]}")
        return {name.split("#")[0] for name in loaded}
