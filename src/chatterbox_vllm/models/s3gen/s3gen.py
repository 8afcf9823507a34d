"""S3Gen: S3 speech tokens + a reference voice -> 24 kHz waveform (chatterbox 0.1.7 `S3Token2Wav`).

The reference clip is turned into a "ref dict" once (`embed_ref`): its 24 kHz mel (the decoder's prompt), its S3
tokens (prepended to the tokens to speak) and a CAMPPlus x-vector. `inference` then runs the flow (tokens ->
mel) and the HiFT vocoder (mel -> waveform) and fades the waveform in.

Randomness: one generator (or the global RNG) is used first for the flow decoder's initial noise, then by HiFT
for its source draws, in the reference's order; so `torch.Generator().manual_seed(s)` here reproduces the
reference's `torch.manual_seed(s); s3gen.inference(...)`. The mean-flow S3Gen (Turbo, Nano; `config.meanflow`)
draws its flow noise in two parts (`flow_matching.draw_initial_noise`), still from that one generator and first.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...audio.mel import librosa_mel_filters, s3gen_mel_spectrogram
from ...audio.resample import resample_sinc_hann
from ...checkpoint.weights import load_strict, read_state_dict
from ..s3tokenizer import S3_SAMPLE_RATE, S3TokenizerV2
from .campplus import CAMPPlus
from .config import S3GenConfig
from .flow import CausalMaskedDiffWithXvec
from .hift import HiFTGenerator, SourceDraws

logger = logging.getLogger(__name__)

# The published s3gen.safetensors lacks the tokenizer's Hann window; the reference loads that file with
# strict=False and keeps the value the module was built with, which we do too.
ABSENT_FROM_SAFETENSORS = ("tokenizer.window",)


def trim_fade_window(n_trim: int, *, device: torch.device | None = None) -> torch.Tensor:
    """`n_trim` zeros, then a raised-cosine fade-in over `n_trim` samples."""
    fade = torch.zeros(2 * n_trim, device=device)
    fade[n_trim:] = (torch.cos(torch.linspace(math.pi, 0, n_trim, device=device)) + 1) / 2
    return fade


class S3Gen(nn.Module):
    """State dict: `tokenizer.*`, `speaker_encoder.*`, `flow.*`, `mel2wav.*` (the published file's names).

    `trim_fade` is a non-persistent buffer, as in the reference (no file holds it).
    """

    def __init__(self, config: S3GenConfig = S3GenConfig()):
        super().__init__()
        self.config = config
        self.tokenizer = S3TokenizerV2(config.tokenizer)
        self.speaker_encoder = CAMPPlus(config.speaker_encoder)
        self.flow = CausalMaskedDiffWithXvec(config.flow, meanflow=config.meanflow)
        self.mel2wav = HiFTGenerator(config.hift)
        self.register_buffer("trim_fade", trim_fade_window(config.trim_fade_samples), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.flow.encoder_proj.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.flow.encoder_proj.weight.dtype

    def reset_non_persistent_buffers(self) -> None:
        """Recompute every buffer that is not learned (after `to_empty`): the tokenizer's mel filters and window
        (the .safetensors file lacks the window), `trim_fade`, and those of submodules that define this method."""
        device = self.device
        tok = self.tokenizer
        filters = librosa_mel_filters(S3_SAMPLE_RATE, self.config.tokenizer.n_fft, self.config.tokenizer.n_mels)
        tok._mel_filters = torch.tensor(np.array(filters), dtype=torch.float32, device=device)
        tok.window = torch.hann_window(self.config.tokenizer.n_fft, device=device)
        self.trim_fade = trim_fade_window(self.config.trim_fade_samples, device=device)
        for module in self.modules():
            reset = getattr(module, "reset_non_persistent_buffers", None)
            if module is not self and callable(reset):
                reset()

    # ------------------------------------------------------------------------------------------- reference
    @torch.inference_mode()
    def embed_ref(self, ref_wav: torch.Tensor | np.ndarray, ref_sr: int) -> dict[str, torch.Tensor | None]:
        """The ref dict of a reference clip `[N]` or `[1, N]` at `ref_sr` (the caller keeps it to 10 s).

        prompt_feat: 24 kHz log-mel `[1, F, 80]`; prompt_token `[1, T]` and prompt_token_len `[1]`: S3 tokens of
        the clip resampled to 16 kHz with torchaudio's windowed-sinc algorithm (as the reference; not soxr);
        embedding: CAMPPlus x-vector `[1, 192]` of that same 16 kHz signal. Tokens are cut so that F >= 2T.
        """
        wav = torch.as_tensor(ref_wav).to(device=self.device, dtype=torch.float32)
        if wav.dim() == 1:
            wav = wav.unsqueeze(0)
        if wav.size(1) > 10 * ref_sr:
            logger.warning("S3Gen reference clip is longer than 10 s")

        sr = self.config.sample_rate
        wav_24k = wav if ref_sr == sr else resample_sinc_hann(wav, ref_sr, sr)
        prompt_feat = s3gen_mel_spectrogram(wav_24k.to(self.dtype)).transpose(1, 2).to(self.dtype)

        wav_16k = wav if ref_sr == S3_SAMPLE_RATE else resample_sinc_hann(wav, ref_sr, S3_SAMPLE_RATE)
        embedding = self.speaker_encoder.inference(wav_16k.to(self.dtype))
        tokens, token_lens = self.tokenizer.forward(list(wav_16k.float()))  # on the tokenizer's device (maybe CPU)
        tokens, token_lens = tokens.to(self.device), token_lens.to(self.device)

        # The mel has 2 frames per token, up to rounding at the clip's end; keep the tokens no longer than that.
        if prompt_feat.size(1) != 2 * tokens.size(1):
            logger.debug("reference mel frames (%d) != 2 x tokens (%d)", prompt_feat.size(1), tokens.size(1))
            tokens = tokens[:, : prompt_feat.size(1) // 2]
            token_lens = token_lens.clone()
            token_lens[0] = tokens.size(1)
        return {
            "prompt_token": tokens,
            "prompt_token_len": token_lens,
            "prompt_feat": prompt_feat,
            "prompt_feat_len": None,
            "embedding": embedding,
        }

    def _ref_inputs(self, ref_dict: Mapping[str, Any]) -> dict[str, Any]:
        """A cast copy of the ref dict (numpy arrays accepted); the caller's dict and tensors stay untouched.

        The reference casts every entry to the model dtype in place (prompt tokens become float); we keep tokens
        integral, which gives the same results.
        """
        out: dict[str, Any] = {}
        for key in ("prompt_token", "prompt_token_len", "prompt_feat", "prompt_feat_len", "embedding"):
            value = ref_dict.get(key)
            if isinstance(value, np.ndarray):
                value = torch.from_numpy(value)
            if torch.is_tensor(value):
                integral = key in ("prompt_token", "prompt_token_len", "prompt_feat_len")
                value = value.to(device=self.device, dtype=torch.long if integral else self.dtype)
            out[key] = value
        return out

    # ------------------------------------------------------------------------------------------- synthesis
    @torch.inference_mode()
    def flow_inference(
        self,
        speech_tokens: torch.Tensor,
        ref_dict: Mapping[str, Any],
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        n_timesteps: int | None = None,
    ) -> torch.Tensor:
        """Mel `[B, 80, 2T]` of speech tokens `[B, T]` (or `[T]`), all in [0, 6561)."""
        speech_tokens = torch.atleast_2d(torch.as_tensor(speech_tokens)).to(self.device)
        token_len = torch.tensor([speech_tokens.size(-1)] * speech_tokens.size(0), device=self.device)
        return self.flow.inference(
            speech_tokens,
            token_len,
            noise=noise,
            generator=generator,
            n_timesteps=n_timesteps,
            **self._ref_inputs(ref_dict),
        )

    @torch.inference_mode()
    def hift_inference(
        self, mel: torch.Tensor, generator: torch.Generator | None = None, draws: SourceDraws | None = None
    ) -> torch.Tensor:
        """Waveform `[B, 480 F]` of a mel `[B, 80, F]` (before the fade-in); `draws` replaces HiFT's random draws."""
        wav, _ = self.mel2wav.inference(mel.to(self.dtype), generator=generator, draws=draws)
        return wav

    def apply_trim_fade(self, wav: torch.Tensor) -> torch.Tensor:
        """Silence the first 20 ms and fade in over the next 20 ms (spill-over from the reference clip).

        Returns a new tensor (the reference multiplies in place).
        """
        wav = wav.clone()
        n = min(wav.size(-1), self.trim_fade.numel())
        # The reference fails on outputs shorter than the fade (under 2 mel frames); we fade what there is.
        wav[..., :n] *= self.trim_fade[:n].to(wav.dtype)
        return wav

    def samples_per_token(self) -> int:
        """Output samples per speech token: 2 mel frames of 480 samples = 960 (40 ms at 24 kHz)."""
        return self.config.flow.token_mel_ratio * self.config.hift.samples_per_frame

    @torch.inference_mode()
    def inference(
        self,
        speech_tokens: torch.Tensor,
        ref_dict: Mapping[str, Any],
        generator: torch.Generator | None = None,
        n_timesteps: int | None = None,
        *,
        drop_last_token_audio: bool = False,
        noise: torch.Tensor | None = None,
        source_draws: SourceDraws | None = None,
    ) -> torch.Tensor:
        """24 kHz waveform `[B, N]` of speech tokens `[B, T]` (N = 960 per token), faded in.

        drop_last_token_audio: cut the audio of the last token, N = 960 * max(1, T - 1). chatterbox 0.1.7 keeps it
        (False, the default, gives the 0.1.7 output). Upstream (resemble-ai/chatterbox 3f35dfc, after 0.1.7) cuts it
        in `ChatterboxMultilingualTTS.generate`, after `s3gen.inference` and before the watermark, because the token
        T3 emits right before its stop token is produced with degraded attention and decodes to ~40 ms of noise.
        The cut is applied after the fade-in and does not change the samples that are kept.

        noise `[B, 80, prompt frames + 2T]` / source_draws: inject the flow's initial noise / HiFT's draws instead
        of drawing them (tests, reproducible runs); otherwise all come from `generator` (the global RNG if None)
        in the reference's order, so `Generator().manual_seed(s)` reproduces `torch.manual_seed(s)` + reference.
        """
        mel = self.flow_inference(speech_tokens, ref_dict, noise=noise, generator=generator, n_timesteps=n_timesteps)
        wav = self.apply_trim_fade(self.hift_inference(mel, generator=generator, draws=source_draws))
        if drop_last_token_audio:
            n_tokens = mel.size(-1) // self.config.flow.token_mel_ratio
            wav = wav[..., : max(1, n_tokens - 1) * self.samples_per_token()]
        return wav


def build_s3gen(config: S3GenConfig = S3GenConfig(), device: torch.device | str = "cpu") -> S3Gen:
    """An S3Gen with uninitialised weights (no random init of 265M parameters) and computed fixed buffers."""
    with torch.device("meta"):
        model = S3Gen(config)
    model.to_empty(device=device)
    model.reset_non_persistent_buffers()
    return model


def load_s3gen(path: str | Path, config: S3GenConfig = S3GenConfig(), *, fold_weight_norm: bool = False) -> S3Gen:
    """Read `s3gen.safetensors` or `s3gen.pt` into a new S3Gen (CPU, eval mode).

    Every tensor must be present and fit, except that a `.safetensors` file may lack `tokenizer.window` (the
    published one does; the reference loads it with strict=False and keeps the Hann window it built).
    `fold_weight_norm` (the server's loader, `load_s3gen_for`): HiFT's weight-normed weights are then computed once,
    here (`HiFTGenerator.fold_weight_norm`; the same values, not recomputed per call), so its `state_dict()` no
    longer has the published names.
    """
    path = Path(path)
    state = read_state_dict(path)
    model = build_s3gen(config)
    absent = ABSENT_FROM_SAFETENSORS if path.suffix == ".safetensors" else ()
    load_strict(model, state, str(path), may_be_absent=absent)
    if fold_weight_norm:
        model.mel2wav.fold_weight_norm()
    return model.eval()
