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

from vllm.config import VllmConfig
from vllm.model_executor.layers.attention import Attention

from ...models.t3.config import T3Config
from ...models.t3.llama import RMSNorm, llama3_inv_freq

ARCHITECTURE = "ChatterboxT3ForVLLM"


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


class CFGAttention(nn.Module):
    """Llama attention over a [tokens, 2, hidden] stream: 2 x heads in one vLLM attention layer (one KV cache)."""

    def __init__(self, config: T3Config, vllm_config: VllmConfig, prefix: str) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)
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
        q = self.q_proj(x).view(n, 2 * self.num_heads, self.head_dim)
        k = self.k_proj(x).view(n, 2 * self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(n, -1)
        cos, sin = cos[:, None, :], sin[:, None, :]
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        out = self.attn(q.reshape(n, -1), k.reshape(n, -1), v)
        return self.o_proj(out.view(n, 2, self.num_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, config: T3Config) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


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


class ChatterboxT3ForVLLM(nn.Module):
    """T3 decoding in vLLM. Parameter names follow the T3 weight file minus its `tfmr.` prefix."""

    # The M-RoPE interface (`SupportsMRoPE`) is how this model shifts its positions; see the module docstring.
    supports_mrope: ClassVar[Literal[True]] = True

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
        self.speech_emb = nn.Embedding(config.speech_tokens_dict_size, config.hidden_size)
        self.speech_pos_emb = nn.Embedding(config.speech_pos_emb_size, config.hidden_size)
        self.speech_head = nn.Linear(config.hidden_size, config.speech_tokens_dict_size, bias=False)
        self.rotary = ShiftedRotaryTable(config, self.first_generated_position + config.speech_pos_emb_size)

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
        """A sampled speech token, fed to both CFG branches (its position embedding is added in `forward`)."""
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
            inputs_embeds = self.embed_input_ids(input_ids)
        positions = positions[0] if positions.dim() == 2 else positions  # M-RoPE rows are identical
        n = positions.shape[0]
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

    def compute_logits(self, hidden_states: torch.Tensor, *_: Any) -> torch.Tensor:
        """[tokens, 2 * speech vocab]: conditional logits, then unconditional (mixed by `CFGLogitsProcessor`)."""
        n = hidden_states.shape[0]
        logits = self.speech_head(hidden_states.view(n, 2, self.config.hidden_size))
        return logits.view(n, 2 * self.config.speech_tokens_dict_size)

    # ------------------------------------------------------------------------------------------ weights
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Take this model's tensors from a T3 file; the conditioning and text tensors stay with the torch side.

        Every parameter must be found with its exact shape: a missing or mis-shaped tensor is an error naming it.
        """
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for file_name, tensor in weights:
            name = file_name.removeprefix("tfmr.")
            if name == "speech_pos_emb.emb.weight":
                name = "speech_pos_emb.weight"
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
        missing = sorted(set(params) - loaded)
        if missing:
            raise ValueError(f"T3 weights lack {len(missing)} tensors the vLLM model needs, e.g. {missing[:3]}")
        return loaded
