"""Token-to-mel flow of S3Gen (CosyVoice 2's `CausalMaskedDiffWithXvec`, inference path only).

The reference prompt's tokens are prepended to the tokens to speak; the Conformer encoder maps the whole sequence
to mel-rate features `mu`; conditional flow matching then generates a mel for all frames, with the reference
prompt's own mel given as `cond` on the first frames, and the prompt part is cut off. The speaker x-vector enters
the decoder as `spks` (unit-normalised, then an affine map to 80 dims).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import overload

import torch
import torch.nn.functional as F
from torch import nn

from .cfm_graphs import pad_frames
from .config import FlowConfig
from .encoder import UpsampleConformerEncoder, non_pad_mask
from .flow_matching import ConditionalCFM, draw_initial_noise


@dataclass
class FlowInputs:
    """What the flow-matching decoder is given (and the encoder output it came from)."""

    encoder_out: torch.Tensor  # [B, 2T, D] after the encoder's final LayerNorm
    mu: torch.Tensor  # [B, 80, 2T]
    mask: torch.Tensor  # [B, 1, 2T] float
    spks: torch.Tensor  # [B, 80]
    cond: torch.Tensor  # [B, 80, 2T]: prompt mel on the first `prompt_frames` frames, zeros after
    prompt_frames: int


@overload
def _with_batch(x: torch.Tensor, batch: int, ndim: int) -> torch.Tensor: ...


@overload
def _with_batch(x: None, batch: int, ndim: int) -> None: ...


def _with_batch(x: torch.Tensor | None, batch: int, ndim: int) -> torch.Tensor | None:
    """Add leading dims up to `ndim` and repeat a batch of one to `batch` (the reference's batching rule)."""
    if x is None:
        return None
    while x.dim() < ndim:
        x = x.unsqueeze(0)
    if batch > 1 and x.size(0) == 1:
        x = x.repeat(batch, *([1] * (ndim - 1)))
    return x


@dataclass(frozen=True)
class FlowVoice:
    """What the flow needs of a voice alone, made once per voice (`CausalMaskedDiffWithXvec.voice`) instead of once
    per piece: the prompt's tokens on the host (a batch's tokens go to the GPU in one copy), its mel as the
    decoder's `cond` `[80, Fp]` and the speaker projection `spks` `[80]` of the normalised x-vector."""

    prompt_tokens: torch.Tensor  # [Tp], long, CPU
    prompt_cond: torch.Tensor  # [80, Fp], the model's device and dtype
    spks: torch.Tensor  # [80], the model's device and dtype


@dataclass
class FlowRow:
    """One request in a batch of different voices and lengths: its tokens `[T]`, its reference prompt (tokens
    `[Tp]`, mel `[Fp, 80]`, x-vector `[192]`) and its initial noise `[80, 2 Tp + 2T]` (`draw_noise` draws it as
    `inference` would for the request alone). `voice`: that prompt's `FlowVoice` if the caller keeps one (else it
    is made from the prompt for this batch)."""

    tokens: torch.Tensor
    prompt_token: torch.Tensor
    prompt_feat: torch.Tensor
    embedding: torch.Tensor
    noise: torch.Tensor
    voice: FlowVoice | None = None


class CausalMaskedDiffWithXvec(nn.Module):
    def __init__(self, config: FlowConfig = FlowConfig(), meanflow: bool = False):
        super().__init__()
        self.config = config
        self.meanflow = meanflow  # the mean-flow decoder of Turbo / Nano (`S3GenConfig.meanflow`)
        self.input_embedding = nn.Embedding(config.vocab_size, config.encoder.input_size)
        self.spk_embed_affine_layer = nn.Linear(config.spk_embed_dim, config.mel_bins)
        self.encoder = UpsampleConformerEncoder(config.encoder)
        self.encoder_proj = nn.Linear(config.encoder.output_size, config.mel_bins)
        self.decoder = ConditionalCFM(config.decoder, meanflow=meanflow)

    def draw_noise(
        self,
        frames: int,
        tokens: int,
        generator: torch.Generator | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """The initial noise `[1, 80, frames]` that `inference` draws for one request of `tokens` tokens to speak
        (`frames`: prompt and generated), in the reference's order; lets a batch give each row its own.

        dtype defaults to the weights'; device to the generator's (else the weights').
        """
        weight = self.spk_embed_affine_layer.weight
        if device is None:
            device = generator.device if generator is not None else weight.device
        return draw_initial_noise(
            (1, self.config.mel_bins, frames), meanflow=self.meanflow,
            generated_frames=self.config.token_mel_ratio * tokens, generator=generator,
            dtype=dtype or weight.dtype, device=device,
        )  # fmt: skip

    def prepare(
        self,
        token: torch.Tensor,
        token_len: torch.Tensor,
        prompt_token: torch.Tensor,
        prompt_token_len: torch.Tensor,
        prompt_feat: torch.Tensor,
        embedding: torch.Tensor,
    ) -> FlowInputs:
        """Encoder pass and decoder conditioning for tokens `[B, T]` after a reference prompt."""
        batch = token.size(0)
        dtype = self.spk_embed_affine_layer.weight.dtype
        embedding = F.normalize(torch.atleast_2d(embedding).to(dtype), dim=1)
        spks = _with_batch(self.spk_embed_affine_layer(embedding), batch, 2)
        prompt_token = _with_batch(prompt_token, batch, 2)
        prompt_token_len = _with_batch(prompt_token_len, batch, 1)
        prompt_feat = _with_batch(prompt_feat.to(dtype), batch, 3)

        # The reference hands lengths around as floats after casting its ref dict; they are counts either way.
        tokens = torch.cat([prompt_token.long(), token.long()], dim=1)
        lengths = prompt_token_len.long() + token_len.long()
        if bool((tokens >= self.config.vocab_size).any()) or bool((tokens < 0).any()):
            raise ValueError(f"speech tokens must lie in [0, {self.config.vocab_size}), got max {int(tokens.max())}")
        mask = non_pad_mask(lengths, tokens.size(1)).unsqueeze(-1).to(dtype)
        x = self.input_embedding(tokens) * mask

        h, h_mask = self.encoder(x, lengths)
        prompt_frames = prompt_feat.size(1)
        h_lengths = h_mask.sum(dim=-1).squeeze(-1)
        mu = self.encoder_proj(h)

        cond = torch.zeros(batch, h.size(1), self.config.mel_bins, device=h.device, dtype=mu.dtype)
        cond[:, :prompt_frames] = prompt_feat
        return FlowInputs(
            encoder_out=h,
            mu=mu.transpose(1, 2).contiguous(),
            mask=non_pad_mask(h_lengths, h.size(1)).unsqueeze(1).to(mu.dtype),
            spks=spks,
            cond=cond.transpose(1, 2),
            prompt_frames=prompt_frames,
        )

    @torch.inference_mode()
    def inference(
        self,
        token: torch.Tensor,
        token_len: torch.Tensor,
        prompt_token: torch.Tensor,
        prompt_token_len: torch.Tensor,
        prompt_feat: torch.Tensor,
        prompt_feat_len: torch.Tensor | None,
        embedding: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        n_timesteps: int | None = None,
    ) -> torch.Tensor:
        """Mel `[B, 80, 2T]` of tokens `[B, T]` (the prompt's frames removed).

        `noise` (`[B, 80, prompt_frames + 2T]`) replaces the decoder's initial Gaussian draw; otherwise it is drawn
        from `generator` (the global RNG when None), in the reference's order (see `draw_initial_noise`: mean flow
        draws the 2T generated frames first). `prompt_feat_len` is accepted for the reference's ref-dict layout and
        unused, as in the reference.
        """
        del prompt_feat_len
        inputs = self.prepare(token, token_len, prompt_token, prompt_token_len, prompt_feat, embedding)
        mel = self.decoder(
            inputs.mu,
            inputs.mask,
            inputs.spks,
            inputs.cond,
            n_timesteps=n_timesteps or self.config.n_timesteps,
            noise=noise,
            generator=generator,
            generated_frames=self.config.token_mel_ratio * token.size(1),
        )
        return mel[:, :, inputs.prompt_frames :]

    @torch.inference_mode()
    def voice(self, prompt_token: torch.Tensor, prompt_feat: torch.Tensor, embedding: torch.Tensor) -> FlowVoice:
        """The `FlowVoice` of a reference prompt (tokens `[Tp]`, mel `[Fp, 80]`, x-vector `[192]`; any leading
        dims of one)."""
        device = self.input_embedding.weight.device
        dtype = self.spk_embed_affine_layer.weight.dtype
        embedding = F.normalize(embedding.reshape(1, -1).to(device, dtype), dim=1)
        return FlowVoice(
            prompt_tokens=prompt_token.reshape(-1).long().cpu(),
            prompt_cond=prompt_feat.reshape(-1, self.config.mel_bins).to(device, dtype).transpose(0, 1).contiguous(),
            spks=self.spk_embed_affine_layer(embedding)[0],
        )

    @torch.inference_mode()
    def inference_rows(self, rows: list[FlowRow], n_timesteps: int | None = None) -> list[torch.Tensor]:
        """Mels `[80, 2T]` of several requests in one padded batch; each equals what `inference` gives the row alone.

        Each row is its prompt's tokens followed by its own, right-padded; the encoder and the estimator mask
        the padding (attention keys, convolutions), so rows do not see each other or the padding. The batch is
        assembled with few copies: its tokens on the host then to the device at once, voices' work from their
        `FlowVoice`s.
        """
        device = self.input_embedding.weight.device
        dtype = self.spk_embed_affine_layer.weight.dtype
        voices = [r.voice or self.voice(r.prompt_token, r.prompt_feat, r.embedding) for r in rows]
        token_rows = [
            torch.cat([v.prompt_tokens, r.tokens.reshape(-1).long().cpu()]) for v, r in zip(voices, rows, strict=True)
        ]
        host_tokens = torch.nn.utils.rnn.pad_sequence(token_rows, batch_first=True)
        if bool((host_tokens >= self.config.vocab_size).any()) or bool((host_tokens < 0).any()):
            raise ValueError(f"speech tokens must lie in [0, {self.config.vocab_size})")
        tokens = host_tokens.to(device, non_blocking=True)
        lengths = torch.tensor([t.numel() for t in token_rows]).to(device, non_blocking=True)
        width = tokens.size(1)
        mask = non_pad_mask(lengths, width).unsqueeze(-1).to(dtype)
        h, h_mask = self.encoder(self.input_embedding(tokens) * mask, lengths)
        mu = self.encoder_proj(h).transpose(1, 2).contiguous()  # [B, 80, F]
        frames = h.size(1)
        h_lengths = [self.config.encoder.upsample_stride * t.numel() for t in token_rows]  # frames per row

        spks = torch.stack([v.spks for v in voices]).to(mu.dtype)
        cond = pad_frames(torch.nn.utils.rnn.pad_sequence([v.prompt_cond.T for v in voices], batch_first=True)
                          .transpose(1, 2), frames).to(mu.dtype)  # fmt: skip
        noise = torch.nn.utils.rnn.pad_sequence(
            [r.noise.reshape(self.config.mel_bins, -1)[:, :frames].T.to(device, mu.dtype) for r in rows],
            batch_first=True,
        )  # fmt: skip
        noise = pad_frames(noise.transpose(1, 2), frames)
        prompt_frames = [v.prompt_cond.size(-1) for v in voices]
        mel = self.decoder(
            mu,
            h_mask.to(mu.dtype),
            spks,
            cond,
            n_timesteps=n_timesteps or self.config.n_timesteps,
            noise=noise,
        )
        return [mel[i, :, prompt_frames[i] : h_lengths[i]] for i in range(len(rows))]
