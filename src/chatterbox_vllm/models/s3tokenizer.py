"""S3 speech tokenizer v2 (CosyVoice 2's `speech_tokenizer_v2_25hz`): 16 kHz audio -> 25 Hz tokens in [0, 6561).

A Whisper-style encoder (two strided convolutions, then attention blocks with rotary position embedding whose
value path is augmented by an FSMN depthwise convolution) followed by finite scalar quantisation: a projection to
8 dimensions, each rounded to {-1, 0, 1}, read as an 8-digit base-3 number. Matches `s3tokenizer==0.3.0`
`S3TokenizerV2` as wrapped by chatterbox (log-mel computed with the module's own `_mel_filters`/`window` buffers).
Its weights are the `tokenizer.*` tensors of S3Gen's checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..audio.mel import librosa_mel_filters, s3_log_mel_spectrogram

S3_SAMPLE_RATE = 16_000
S3_HOP = 160  # 100 mel frames per second
S3_TOKEN_RATE = 25  # 4 mel frames per token
SPEECH_VOCAB_SIZE = 6561  # 3 ** 8


@dataclass(frozen=True)
class S3TokenizerConfig:
    n_mels: int = 128
    n_fft: int = 400
    n_state: int = 1280
    n_head: int = 20
    n_layer: int = 6
    fsmn_kernel_size: int = 31
    fsq_levels: int = 3
    fsq_dims: int = 8
    rope_theta: float = 10000.0
    # Inputs longer than this many mel frames (30 s) are tokenised in overlapping 30 s windows.
    max_frames: int = 3000
    window_overlap_s: int = 4

    @property
    def head_dim(self) -> int:
        return self.n_state // self.n_head

    @property
    def codebook_size(self) -> int:
        return self.fsq_levels**self.fsq_dims

    @classmethod
    def tiny(cls) -> S3TokenizerConfig:
        return cls(n_state=64, n_head=2, n_layer=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> S3TokenizerConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown S3TokenizerConfig fields: {sorted(unknown)}")
        return cls(**d)


def _non_pad_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    positions = torch.arange(max_len, dtype=torch.int64, device=lengths.device)
    return positions.unsqueeze(0) < lengths.unsqueeze(-1)


def _rotary(head_dim: int, length: int, theta: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin `[1, T, 1, head_dim]`; both halves of the head share the same frequencies (rotate-half layout).

    Computed on the CPU, as the reference does (it precomputes them at construction), then moved.
    """
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    angles = torch.outer(torch.arange(length), inv).float()
    rot = torch.view_as_real(torch.polar(torch.ones_like(angles), angles))
    cos = torch.cat((rot[..., 0], rot[..., 0]), dim=-1)[None, :, None, :]
    sin = torch.cat((rot[..., 1], rot[..., 1]), dim=-1)[None, :, None, :]
    return cos.to(device), sin.to(device)


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class FSMNAttention(nn.Module):
    """Multi-head self-attention plus an FSMN memory: a depthwise conv over the (masked) values, added to the output."""

    def __init__(self, n_state: int, n_head: int, kernel_size: int):
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)
        self.fsmn_block = nn.Conv1d(n_state, n_state, kernel_size, groups=n_state, bias=False)
        self.left_pad = (kernel_size - 1) // 2
        self.right_pad = kernel_size - 1 - self.left_pad

    def fsmn(self, v: torch.Tensor, mask_pad: torch.Tensor) -> torch.Tensor:
        x = v * mask_pad
        memory = self.fsmn_block(F.pad(x.transpose(1, 2), (self.left_pad, self.right_pad))).transpose(1, 2)
        return (memory + x) * mask_pad

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor, mask_pad: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        b, t, d = x.shape
        q = self.query(x).view(b, t, self.n_head, -1)
        k = self.key(x).view(b, t, self.n_head, -1)
        v = self.value(x)
        q, k = _apply_rotary(q, cos, sin), _apply_rotary(k, cos, sin)
        memory = self.fsmn(v, mask_pad)
        # Scale split between q and k (d_head^-1/4 each), as the reference does, for identical rounding.
        scale = (d // self.n_head) ** -0.25
        q = q.permute(0, 2, 1, 3) * scale
        k = k.permute(0, 2, 3, 1) * scale
        v = v.view(b, t, self.n_head, -1).permute(0, 2, 1, 3)
        weights = torch.softmax((q @ k + bias).float(), dim=-1).to(q.dtype)
        attended = (weights @ v).permute(0, 2, 1, 3).flatten(start_dim=2)
        return self.out(attended) + memory


class ResidualAttentionBlock(nn.Module):
    def __init__(self, n_state: int, n_head: int, kernel_size: int):
        super().__init__()
        self.attn = FSMNAttention(n_state, n_head, kernel_size)
        self.attn_ln = nn.LayerNorm(n_state, eps=1e-5)
        self.mlp = nn.Sequential(nn.Linear(n_state, 4 * n_state), nn.GELU(), nn.Linear(4 * n_state, n_state))
        self.mlp_ln = nn.LayerNorm(n_state, eps=1e-5)

    def forward(self, x, bias, mask_pad, cos, sin):
        x = x + self.attn(self.attn_ln(x), bias, mask_pad, cos, sin)
        return x + self.mlp(self.mlp_ln(x))


class AudioEncoderV2(nn.Module):
    """Mel `[B, n_mels, T]` -> hidden `[B, ceil(T/4), n_state]` (two stride-2 convolutions, then the blocks)."""

    def __init__(self, config: S3TokenizerConfig):
        super().__init__()
        self.config = config
        self.conv1 = nn.Conv1d(config.n_mels, config.n_state, kernel_size=3, stride=2, padding=1)
        self.conv2 = nn.Conv1d(config.n_state, config.n_state, kernel_size=3, stride=2, padding=1)
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(config.n_state, config.n_head, config.fsmn_kernel_size)
            for _ in range(config.n_layer)
        )

    def forward(self, mel: torch.Tensor, mel_len: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = mel.shape[-1]
        x = F.gelu(self.conv1(mel * _non_pad_mask(mel_len, t).unsqueeze(1)))
        lens = (mel_len - 1) // 2 + 1
        t = (t - 1) // 2 + 1
        x = F.gelu(self.conv2(x * _non_pad_mask(lens, t).unsqueeze(1)))
        lens = (lens - 1) // 2 + 1
        t = (t - 1) // 2 + 1
        mask = _non_pad_mask(lens, t).unsqueeze(1)  # [B, 1, T]
        x = x.permute(0, 2, 1)
        mask_pad = mask.transpose(1, 2)
        bias = ((1.0 - mask.to(x.dtype)) * -1.0e10).unsqueeze(1)  # [B, 1, 1, T]
        cos, sin = _rotary(self.config.head_dim, x.shape[1], self.config.rope_theta, x.device)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        for block in self.blocks:
            x = block(x, bias, mask_pad, cos, sin)
        return x, lens


class FSQCodebook(nn.Module):
    def __init__(self, dim: int, levels: int, n_dims: int):
        super().__init__()
        self.levels = levels
        self.project_down = nn.Linear(dim, n_dims)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Token ids `[B, T]` (int32) of hidden states `[B, T, dim]`."""
        b, t, _ = x.shape
        h = self.project_down(x.reshape(b * t, -1)).float().tanh()
        h = (h * 0.9990000128746033).round() + 1  # digits in {0, 1, 2}
        powers = torch.pow(self.levels, torch.arange(h.shape[-1], device=x.device, dtype=h.dtype))
        return torch.sum(h * powers.unsqueeze(0), dim=-1).reshape(b, t).int()


class FSQVectorQuantization(nn.Module):
    def __init__(self, dim: int, levels: int, n_dims: int):
        super().__init__()
        self._codebook = FSQCodebook(dim, levels, n_dims)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._codebook.encode(x)


class S3TokenizerV2(nn.Module):
    """State dict: `_mel_filters`, `window`, `encoder.*`, `quantizer._codebook.project_down.*`.

    `_mel_filters` (librosa mel, 128 x 201) and `window` (periodic Hann, 400) are persistent buffers computed here:
    the multilingual `s3gen.pt` holds both, the English `s3gen.safetensors` lacks `window` (load it with
    `may_be_absent=("tokenizer.window",)`; the computed value is the one the reference keeps).
    """

    _mel_filters: torch.Tensor
    window: torch.Tensor

    def __init__(self, config: S3TokenizerConfig = S3TokenizerConfig()):
        super().__init__()
        self.config = config
        filters = librosa_mel_filters(S3_SAMPLE_RATE, config.n_fft, config.n_mels)
        self.register_buffer("_mel_filters", torch.tensor(np.array(filters), dtype=torch.float32))
        self.register_buffer("window", torch.hann_window(config.n_fft))
        self.encoder = AudioEncoderV2(config)
        self.quantizer = FSQVectorQuantization(config.n_state, config.fsq_levels, config.fsq_dims)

    @property
    def device(self) -> torch.device:
        return self.quantizer._codebook.project_down.weight.device

    def log_mel_spectrogram(self, audio: torch.Tensor) -> torch.Tensor:
        """`[..., 128, frames]` with frames = N // 160 (the centred STFT's last frame is dropped)."""
        return s3_log_mel_spectrogram(audio, self._mel_filters, self.window, n_fft=self.config.n_fft, hop=S3_HOP)

    @torch.inference_mode()
    def forward(
        self, wavs: Sequence[torch.Tensor | np.ndarray], max_len: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens `[B, T]` (int64, zero-padded) and their counts `[B]` for 16 kHz waveforms (`[N]` or `[1, N]`).

        Each waveform gets its own log-mel (its own max-8 floor); `max_len` keeps at most that many tokens
        (4 * max_len mel frames).
        """
        mels = []
        for wav in wavs:
            wav = torch.as_tensor(wav).to(self.device)
            if wav.dim() == 1:
                wav = wav.unsqueeze(0)
            mel = self.log_mel_spectrogram(wav)
            if max_len is not None:
                mel = mel[..., : max_len * 4]
            mels.append(mel.squeeze(0))
        lens = torch.tensor([m.shape[1] for m in mels], dtype=torch.int32, device=self.device)
        batch = torch.zeros((len(mels), mels[0].shape[0], int(lens.max())), dtype=mels[0].dtype, device=self.device)
        for i, m in enumerate(mels):
            batch[i, :, : m.shape[1]] = m
        tokens, token_lens = self.quantize(batch, lens)
        return tokens.long(), token_lens.long()

    @torch.inference_mode()
    def quantize(self, mel: torch.Tensor, mel_len: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens `[B, T]` and counts `[B]` of padded log-mels `[B, n_mels, T_mel]` with lengths `[B]`."""
        if bool((mel_len > self.config.max_frames).any()):
            return self._quantize_windowed(mel, mel_len)
        hidden, lens = self.encoder(mel, mel_len)
        return self.quantizer.encode(hidden), lens

    def _quantize_windowed(self, mel: torch.Tensor, mel_len: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs over 30 s: every input is cut into 30 s windows every 26 s (short ones: one window), all run as
        one batch padded to 30 s; a long input's windows are joined keeping the middle of each 4 s overlap."""
        window = self.config.max_frames
        stride = window - self.config.window_overlap_s * S3_SAMPLE_RATE // S3_HOP
        segments, seg_lens, owners = [], [], []
        for b in range(mel.shape[0]):
            n = int(mel_len[b])
            starts = range(0, n, stride) if n > window else [0]
            for start in starts:
                seg = mel[b, :, start : min(start + window, n)]
                seg_lens.append(seg.shape[1])
                segments.append(F.pad(seg, (0, window - seg.shape[1])))
                owners.append(b)
        hidden, lens = self.encoder(torch.stack(segments), torch.tensor(seg_lens, device=mel.device))
        codes = self.quantizer.encode(hidden)
        per_input: list[list[list[int]]] = [[] for _ in range(mel.shape[0])]
        for i, b in enumerate(owners):
            per_input[b].append(codes[i, : int(lens[i])].tolist())
        half_overlap = (self.config.window_overlap_s // 2) * S3_TOKEN_RATE
        merged = []
        for b, parts in enumerate(per_input):
            if int(mel_len[b]) <= window:
                merged.append(parts[0])
                continue
            tokens: list[int] = []
            for i, part in enumerate(parts):
                left = 0 if i == 0 else half_overlap
                right = len(part) if i == len(parts) - 1 else -half_overlap
                tokens.extend(part[left:right])
            merged.append(tokens)
        out = torch.zeros((len(merged), max(len(m) for m in merged)), dtype=torch.long, device=mel.device)
        for b, m in enumerate(merged):
            out[b, : len(m)] = torch.tensor(m, dtype=torch.long)
        return out, torch.tensor([len(m) for m in merged], dtype=torch.long, device=mel.device)
