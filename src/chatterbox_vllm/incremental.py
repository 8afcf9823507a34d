"""Audio of a piece while T3 is still writing its tokens: S3Gen over a growing token prefix.

Time to first audio is otherwise T3's whole sentence plus S3Gen. Here S3Gen runs on the first few tokens, then on
longer prefixes (each about `GROWTH` times the last), and only audio that later tokens barely change leaves:
* the last `HOLDBACK_TOKENS` tokens of a prefix are held back: the flow encoder's lookahead convolution sees three
  tokens ahead, so their audio is still unsettled;
* every call uses the same initial flow noise (one draw for the longest prefix, sliced) and the same HiFT seed, so
  successive prefixes agree on the audio they share up to the encoder's attention over the new context;
* consecutive emissions overlap by `CROSSFADE_SAMPLES` and are crossfaded there, hiding what difference remains.
The last call, on every token, is the piece's ordinary S3Gen output from the previous emission on (with the last
token's audio cut as in `ChatterboxTTS.vocode`).
"""

from __future__ import annotations

import numpy as np
import torch

from .conditioning import Conditionals
from .engine.base import speech_tokens_for_s3gen
from .models.s3gen.config import MEL_BINS
from .tts import SAMPLES_PER_TOKEN, ChatterboxTTS, VocodeJob

HOLDBACK_TOKENS = 4  # 3 of lookahead + 1 of margin
CROSSFADE_SAMPLES = 480  # 20 ms at 24 kHz
MEL_FRAMES_PER_TOKEN = 2
# Each partial vocode redoes the voice prompt (~150 tokens) and the prefix, so few calls are cheaper; x4 still
# keeps audio ahead of playback while T3 runs faster than ~4x real time (it does while few requests run: the
# service uses this only then).
GROWTH = 4


class IncrementalVocoder:
    """Feed it the piece's tokens so far with `push`; it returns the audio that may leave now (float32, 24 kHz)."""

    def __init__(
        self,
        tts: ChatterboxTTS,
        conds: Conditionals,
        *,
        max_tokens: int,
        seed: int | None = None,
        first_tokens: int = 10,
    ) -> None:
        self.tts = tts
        self.conds = conds
        # One seed for every call (HiFT's draws) and one flow noise, sliced per prefix.
        self.seed = seed if seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        # The flow decodes the reference prompt's tokens and the piece's together: 2 mel frames per token of both.
        prompt_tokens = conds.gen.get("prompt_token")
        self.prompt_frames = MEL_FRAMES_PER_TOKEN * (int(prompt_tokens.shape[-1]) if prompt_tokens is not None else 0)
        generator = torch.Generator().manual_seed(self.seed)
        # S3Gen may decode a few tokens more than T3 wrote (Turbo's appended silence): room for those too.
        decoded = max_tokens + tts.s3gen_tail_tokens
        self.noise = torch.randn((1, MEL_BINS, self.prompt_frames + MEL_FRAMES_PER_TOKEN * decoded), generator=generator)
        self.next_at = max(first_tokens, HOLDBACK_TOKENS + 2)
        self.emitted = 0  # samples sent, not counting the held crossfade tail
        self.tail = np.zeros(0, dtype=np.float32)  # last samples of the previous emission, to crossfade into
        self.calls = 0

    def due(self, token_count: int) -> bool:
        """Whether a partial vocode is worth running at this many tokens (a geometric schedule, see GROWTH)."""
        return token_count >= self.next_at

    def push(self, tokens: list[int], *, final: bool) -> np.ndarray:
        if not final:
            self.next_at = max(self.next_at * GROWTH, len(tokens) + 1)
        job = self.job(tokens)
        if job is None:
            return self._flush() if final else np.zeros(0, dtype=np.float32)
        return self.take(job, self.tts.vocode(job.tokens, job.conds, seed=job.seed, noise=job.noise), final=final)

    def job(self, tokens: list[int]) -> VocodeJob | None:
        """The vocode of this prefix (None without speech tokens): run it anywhere (the server batches the last one
        with other pieces), then hand the waveform to `take`."""
        valid = speech_tokens_for_s3gen(tokens)
        if not valid:
            return None
        frames = self.prompt_frames + MEL_FRAMES_PER_TOKEN * (len(valid) + self.tts.s3gen_tail_tokens)
        noise = self.noise[:, :, :frames] if frames <= self.noise.size(-1) else None
        return VocodeJob(valid, self.conds, self.seed, noise)

    def take(self, job: VocodeJob, wav: np.ndarray, *, final: bool) -> np.ndarray:
        """The audio that may leave now, from `job`'s waveform (see the module docstring)."""
        self.calls += 1
        end = len(wav) if final else max(0, (len(job.tokens) - HOLDBACK_TOKENS) * SAMPLES_PER_TOKEN)
        start = self.emitted
        if end <= start + (0 if final else CROSSFADE_SAMPLES):
            return self._flush() if final else np.zeros(0, dtype=np.float32)
        segment = wav[start:end].astype(np.float32, copy=True)
        n = min(len(self.tail), len(segment))
        if n:
            ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
            segment[:n] = self.tail[:n] * (1.0 - ramp) + segment[:n] * ramp
        if final:
            self.emitted = start + len(segment)
            self.tail = np.zeros(0, dtype=np.float32)
            return segment
        keep = min(CROSSFADE_SAMPLES, len(segment))
        self.tail = segment[len(segment) - keep :].copy()
        out = segment[: len(segment) - keep]
        self.emitted = start + len(out)
        return out

    def flush(self) -> np.ndarray:
        """What is left when the piece ended without a vocode to make (its held crossfade tail)."""
        return self._flush()

    def _flush(self) -> np.ndarray:
        tail, self.tail = self.tail, np.zeros(0, dtype=np.float32)
        self.emitted += len(tail)
        return tail
