"""Voice conditioning: what T3 and S3Gen need to speak in a given voice.

A voice is either the checkpoint's built-in `conds.pt` or a reference clip. Turning a clip into conditionals
runs three networks (voice encoder, S3 tokenizer, CAMPPlus) and costs far more than the lookup, and servers see
the same clips again and again, so results are cached by the clip's content hash; a server also keeps them on disk
beside its voice clips (`conditioning_store.py`), so a restart does not analyse its voices again.
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import soundfile
import torch

from .audio.io import AudioTooLongError, load_audio
from .audio.resample import resample_soxr_hq
from .checkpoint.weights import CheckpointError
from .models.t3 import T3Cond

if TYPE_CHECKING:
    from .conditioning_store import ConditioningStore

S3GEN_SAMPLE_RATE = 24_000
S3_SAMPLE_RATE = 16_000
# The reference keeps the first 10 s of the clip for S3Gen and, for T3's speech prompt, as many seconds as the prompt
# holds tokens at 25 Hz (6 s for 150 tokens; Turbo and Nano: 15 s for 375).
S3GEN_REF_SECONDS = 10
SPEECH_TOKENS_PER_SECOND = 25
MIN_REFERENCE_SECONDS = 0.5
# The whole clip feeds the speaker embedding; past this a file is refused rather than decoded into memory.
MAX_REFERENCE_SECONDS = 600
WARM_UP_SECONDS = 6.0  # the warm-up clip: longer than any model's shortest accepted clip

log = logging.getLogger(__name__)


# Where a voice's conditionals came from: this process's cache, the voices directory's store, or a fresh analysis.
ConditioningSource = Literal["memory", "stored", "computed"]


class VoiceCloneError(ValueError):
    """A reference clip cannot serve as a voice (too short, silent)."""


@dataclass
class Conditionals:
    """T3's conditioning (speaker, speech prompt, exaggeration) and S3Gen's reference (prompt tokens/mel, x-vector)."""

    t3: T3Cond
    gen: dict[str, torch.Tensor | None]

    @classmethod
    def load(cls, path: str | Path) -> Conditionals:
        """Read a `conds.pt` as the reference writes it: {'t3': T3Cond fields, 'gen': S3Gen ref dict}."""
        path = Path(path)
        try:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
            t3 = T3Cond(
                speaker_emb=raw["t3"]["speaker_emb"],
                cond_prompt_speech_tokens=raw["t3"]["cond_prompt_speech_tokens"],
                emotion_adv=raw["t3"]["emotion_adv"],
            )
            gen = dict(raw["gen"])
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"{path}: not a Chatterbox conditionals file ({type(exc).__name__}: {exc})") from exc
        except Exception as exc:  # torch.load raises a zoo of types for damaged files
            raise CheckpointError(f"{path}: cannot read conditionals ({type(exc).__name__}: {exc})") from exc
        return cls(t3=t3, gen=gen)

    def save(self, path: str | Path) -> None:
        t3 = {
            "speaker_emb": self.t3.speaker_emb,
            "clap_emb": None,
            "cond_prompt_speech_tokens": self.t3.cond_prompt_speech_tokens,
            "cond_prompt_speech_emb": None,
            "emotion_adv": self.t3.emotion_adv,
        }
        torch.save({"t3": t3, "gen": self.gen}, str(path))

    def to(self, device: torch.device | str) -> Conditionals:
        gen = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.gen.items()}
        return Conditionals(t3=self.t3.to(device), gen=gen)

    def with_exaggeration(self, exaggeration: float) -> Conditionals:
        """The same voice with another emotion intensity (a new object: cached voices stay untouched)."""
        current = self.t3.emotion_adv
        if current is not None and float(current.reshape(-1)[0]) == float(exaggeration):
            return self
        device = self.t3.speaker_emb.device
        emotion = torch.full((1, 1, 1), float(exaggeration), dtype=torch.float32, device=device)
        return Conditionals(t3=replace(self.t3, emotion_adv=emotion), gen=self.gen)


def normalize_loudness(wav: np.ndarray, sample_rate: int, target_lufs: float) -> np.ndarray:
    """`wav` scaled to `target_lufs` integrated loudness (ITU-R BS.1770, pyloudnorm as the reference uses it);
    unchanged when the loudness is not measurable (too short or silent gating blocks)."""
    import pyloudnorm

    try:
        loudness = pyloudnorm.Meter(sample_rate).integrated_loudness(wav)
    except ValueError:  # shorter than one gating block
        return wav
    gain = 10.0 ** ((target_lufs - loudness) / 20.0)
    if not np.isfinite(gain) or gain <= 0:
        return wav
    return (wav * gain).astype(np.float32)


class VoiceConditioner:
    """Computes conditionals from reference clips, with an LRU cache keyed by the clip's bytes."""

    def __init__(
        self,
        voice_encoder,
        s3gen,
        *,
        prompt_tokens: int,
        device: torch.device,
        cache_size: int = 64,
        loudness_lufs: float | None = None,
        min_seconds: float = MIN_REFERENCE_SECONDS,
    ):
        """`loudness_lufs`: bring the clip to this integrated loudness first (Turbo's reference does, to -27 LUFS);
        `min_seconds`: the shortest clip accepted (Turbo's reference asserts more than 5 s)."""
        self.voice_encoder = voice_encoder
        self.s3gen = s3gen
        self.prompt_tokens = prompt_tokens
        self.loudness_lufs = loudness_lufs
        self.min_seconds = min_seconds
        self.device = device
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Conditionals] = OrderedDict()
        self._lock = threading.Lock()
        self._warm = False
        self.warm_up_seconds: float | None = None  # how long `warm_up` took (a start-up phase)

    def warm_up(self) -> None:
        """Analyse a synthetic clip once, so that what the analysis loads on first use (librosa's lazily imported
        modules, numba's compiled kernels: 4-12 s on a CPU) is loaded before the first real voice arrives."""
        if self._warm:
            return
        t = np.arange(int(WARM_UP_SECONDS * S3GEN_SAMPLE_RATE)) / S3GEN_SAMPLE_RATE
        buffer = io.BytesIO()
        soundfile.write(buffer, (0.3 * np.sin(2 * np.pi * 150 * t)).astype(np.float32), S3GEN_SAMPLE_RATE, format="WAV")
        start = time.perf_counter()
        try:
            self.compute(buffer.getvalue())
        except Exception as exc:  # the first real voice then pays the warm-up, as it would have
            self.warm_up_seconds = time.perf_counter() - start
            log.warning("warming up voice analysis failed: %s: %s", type(exc).__name__, exc)
            return
        self._warm = True
        self.warm_up_seconds = time.perf_counter() - start
        log.debug("voice analysis warmed up in %.1f s", self.warm_up_seconds)

    def from_audio(self, source: str | Path | bytes, exaggeration: float = 0.5) -> Conditionals:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        key = hashlib.sha256(data).hexdigest()
        cached = self._cached(key)
        if cached is None:
            cached = self.compute(data)
            self._remember(key, cached)
        return cached.with_exaggeration(exaggeration)

    def for_clip(
        self,
        clip: Path,
        store: ConditioningStore | None = None,
        *,
        persist: bool = False,
        compute: Callable[[bytes], Conditionals] | None = None,
    ) -> tuple[Conditionals, ConditioningSource]:
        """A voice clip's conditionals (exaggeration 0.5) and where they came from: this process's cache, else
        `store` (when it holds them for this model and this very clip), else a fresh analysis, which `store` then
        keeps. `persist`: make sure `store` holds them even when the cache had them (an upload: ready at once
        after a restart too). `compute`: runs the analysis (`self.compute` by default; the server hands it to the
        thread that runs S3Gen)."""
        data = clip.read_bytes()
        key = hashlib.sha256(data).hexdigest()
        cached = self._cached(key)
        if cached is not None:
            if persist and store is not None and store.load(clip.stem, key, self.device) is None:
                store.save(clip.stem, key, cached)
            return cached, "memory"
        if store is not None:
            stored = store.load(clip.stem, key, self.device)
            if stored is not None:
                self._remember(key, stored)
                return stored, "stored"
        conds = (compute or self.compute)(data)
        if store is not None:
            store.save(clip.stem, key, conds)
        self._remember(key, conds)
        return conds, "computed"

    def _cached(self, key: str) -> Conditionals | None:
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
            return cached

    def _remember(self, key: str, conds: Conditionals) -> None:
        with self._lock:
            self._cache[key] = conds
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    @torch.inference_mode()
    def compute(self, data: bytes) -> Conditionals:
        """Analyse a clip (any format `load_audio` reads), uncached: what every cached or stored copy holds."""
        try:
            wav_24k = load_audio(data, S3GEN_SAMPLE_RATE, max_seconds=MAX_REFERENCE_SECONDS)
        except AudioTooLongError as exc:
            raise VoiceCloneError(
                f"reference audio lasts longer than {MAX_REFERENCE_SECONDS} s; 5-10 s of clean speech works best"
            ) from exc
        if wav_24k.size < self.min_seconds * S3GEN_SAMPLE_RATE:
            raise VoiceCloneError(
                f"reference audio is {wav_24k.size / S3GEN_SAMPLE_RATE:.2f} s long; at least "
                f"{self.min_seconds} s is needed (5-10 s of clean speech works best)"
            )
        if not np.any(np.abs(wav_24k) > 1e-4):
            raise VoiceCloneError("reference audio is silent")
        if self.loudness_lufs is not None:
            wav_24k = normalize_loudness(wav_24k, S3GEN_SAMPLE_RATE, self.loudness_lufs)
        wav_16k = resample_soxr_hq(wav_24k, S3GEN_SAMPLE_RATE, S3_SAMPLE_RATE)

        ref_dict = self.s3gen.embed_ref(
            torch.from_numpy(wav_24k[: S3GEN_REF_SECONDS * S3GEN_SAMPLE_RATE]).to(self.device), S3GEN_SAMPLE_RATE
        )
        prompt_seconds = self.prompt_tokens / SPEECH_TOKENS_PER_SECOND
        prompt_clip = torch.from_numpy(wav_16k[: int(prompt_seconds * S3_SAMPLE_RATE)]).to(self.device)
        prompt_tokens, _ = self.s3gen.tokenizer.forward([prompt_clip], max_len=self.prompt_tokens)
        speaker = self.voice_encoder.embeds_from_wavs([wav_16k], sample_rate=S3_SAMPLE_RATE)
        speaker = torch.as_tensor(np.asarray(speaker)).mean(dim=0, keepdim=True).to(self.device)
        t3 = T3Cond(
            speaker_emb=speaker.float(),
            cond_prompt_speech_tokens=torch.atleast_2d(prompt_tokens).to(self.device),
            emotion_adv=torch.full((1, 1, 1), 0.5, device=self.device),
        )
        return Conditionals(t3=t3, gen=ref_dict)
