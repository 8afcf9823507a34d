"""S3Gen on its own: speech tokens -> 24 kHz waveform, loaded without T3 or vLLM.

`ChatterboxTTS` holds one of these for its S3Gen work and delegates to it; the server's S3Gen worker process
(`server/s3gen_process.py`) builds one from a `VocoderSpec` (the checkpoint directory, device and `S3GenOptions`)
without loading T3, vLLM or the text tokenizers. This module therefore imports neither `tts` nor the engines.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.weak import WeakTensorKeyDictionary

from .checkpoint.config import ModelConfig, load_model_config
from .checkpoint.hub import resolve_model
from .checkpoint.layout import CheckpointLayout
from .conditioning import S3GEN_SAMPLE_RATE, Conditionals
from .engine.base import speech_tokens_for_s3gen
from .families import ModelFamily
from .models.s3gen import S3Gen, load_s3gen
from .models.s3gen.flow import FlowRow, FlowVoice

if TYPE_CHECKING:
    from .process_setup import ProcessSettings

log = logging.getLogger(__name__)

SAMPLE_RATE = S3GEN_SAMPLE_RATE
# S3 speech tokens run at 25 Hz: each token is 960 samples of 24 kHz audio.
SAMPLES_PER_TOKEN = SAMPLE_RATE // 25
# Turbo/Nano: the reference appends three silence tokens to T3's output before S3Gen (`S3GEN_SIL`).
S3GEN_SILENCE_TOKEN = 4299


@dataclass(frozen=True)
class VocodeJob:
    """One piece for `Vocoder.vocode_batch`: its speech tokens, voice, seed and optional flow noise."""

    tokens: list[int]
    conds: Conditionals
    seed: int | None = None
    noise: torch.Tensor | None = None


@dataclass(frozen=True)
class S3GenOptions:
    """Where and how S3Gen runs beside T3: the speech tokenizer's device when not the model's (the low preset puts
    it on the CPU), the flow estimator's compute dtype on GPUs (`flow_compute_dtype`) and whether its blocks (and
    HiFT's elementwise regions) go through torch.compile (GPUs with CUDA graphs only). These defaults are the
    reference's float32, eager; the server's settings default to float16 and compiled blocks (`Settings.s3gen_dtype`,
    `s3gen_compile`)."""

    tokenizer_device: str | None = None
    flow_dtype: str = "float32"
    compile_flow: bool = False
    # `warm_up_s3gen` captures graphs for pieces up to this many speech tokens (None: up to what it is asked).
    warm_up_tokens: int | None = None


@dataclass(frozen=True)
class VocoderSpec:
    """Everything another process needs to load the same S3Gen: plain, picklable values only. `graphs`: whether
    S3Gen replays CUDA graphs (not with the engine eager, the low preset); `process`: the process-wide settings
    (TF32, compile caches) the loading process was configured with, for the other one to apply where it starts
    (`process_setup.configure_process`; None: none were)."""

    directory: str
    device: str
    options: S3GenOptions = field(default_factory=S3GenOptions)
    graphs: bool = True
    process: ProcessSettings | None = None


def flow_compute_dtype(name: str, device: torch.device, *, low_memory: bool = False) -> torch.dtype | None:
    """The flow estimator's autocast dtype for a `s3gen_dtype` setting; None for float32 throughout. Only GPUs
    compute in half precision (on CPUs it is slower). "auto" takes float16 where tensor cores run it (compute
    capability 7.0+; older GPUs run float16 far slower than float32), except with `low_memory` (the low preset):
    autocast holds a float16 copy of the estimator's weights while it runs, which took the low preset's peak from
    3.85 to 4.10 GiB on an H100."""
    if device.type != "cuda" or name == "float32":
        return None
    if name == "auto":
        tensor_cores = torch.cuda.get_device_capability(device) >= (7, 0)
        return torch.float16 if tensor_cores and not low_memory else None
    return getattr(torch, name)


def load_s3gen_for(
    directory: Path, layout: CheckpointLayout, config: ModelConfig, device: torch.device, options: S3GenOptions,
    *, graphs: bool, analysis: bool = True,
) -> S3Gen:  # fmt: skip
    """A checkpoint's S3Gen on `device`, set up as `options` say: tokenizer placement, flow dtype, CUDA graphs
    (`graphs` and a GPU) and compiled flow blocks and HiFT regions (only beside graphs); HiFT's weight norm folded
    (inference only). Without `analysis` the speech tokenizer and speaker encoder (voice-clip analysis only,
    0.46 GiB) are dropped before anything reaches the device."""
    s3gen = load_s3gen(directory / layout.s3gen, config.s3gen, fold_weight_norm=True)  # inference only
    if not analysis:
        s3gen.tokenizer = None
        s3gen.speaker_encoder = None
    s3gen = s3gen.to(device).eval()
    if analysis and options.tokenizer_device is not None:
        s3gen.tokenizer.to(options.tokenizer_device)
    # S3Gen's ODE loop is launch-bound: replay it as CUDA graphs (see cfm_graphs), unless the engine was told to
    # run eagerly (the low-VRAM preset: graphs for every length bucket hold ~0.6 GiB).
    graphs = graphs and device.type == "cuda"
    s3gen.flow.decoder.compute_dtype = flow_compute_dtype(options.flow_dtype, device, low_memory=not graphs)
    if graphs:
        s3gen.flow.decoder.enable_cuda_graphs(config.s3gen.flow.n_timesteps)
        if options.compile_flow:
            # Only beside graphs: warm_up's first capture then compiles at start-up, not a request; HiFT's regions
            # too (warm_up runs it).
            s3gen.flow.decoder.compile_blocks()
            s3gen.mel2wav.compile_blocks()
    return s3gen


class Vocoder:
    """A loaded S3Gen that vocodes pieces (alone or as padded batches) and keeps each voice's flow conditioning."""

    sample_rate = SAMPLE_RATE

    def __init__(
        self, s3gen: S3Gen, *, device: torch.device, family: ModelFamily, warm_up_tokens: int | None = None,
        default_conds: Conditionals | None = None,
    ) -> None:  # fmt: skip
        """`family`: what differs by model (silence tokens decoded after T3's, how much of the waveform is kept).
        `default_conds`: the checkpoint's built-in voice, if any (warm-ups use it)."""
        self.s3gen = s3gen
        self.device = torch.device(device)
        self.family = family
        self.warm_up_tokens = warm_up_tokens  # see S3GenOptions.warm_up_tokens
        self.default_conds = default_conds
        # Seconds warm_up spent compiling and capturing (`s3gen_compile`, `s3gen_graphs`).
        self.startup_phases: dict[str, float] = {}
        # Each voice's flow conditioning (`FlowVoice`), made on its first piece; keyed by its x-vector tensor, so it
        # goes when the voice's conditionals do.
        self._flow_voices: WeakTensorKeyDictionary = WeakTensorKeyDictionary()

    @classmethod
    def load(cls, spec: VocoderSpec) -> Vocoder:
        """S3Gen's vocoding parts (and the built-in voice's conditionals) of `spec`'s checkpoint directory, nothing
        else: no T3, no voice encoder, no speech tokenizer. It changes no process-wide state: a process that loads
        only this applies `spec.process` first (`configure_process`)."""
        device = torch.device(spec.device)
        directory, layout = resolve_model(spec.directory)
        config = load_model_config(directory, layout)
        started = time.perf_counter()
        # vocoding only: voice clips are analysed where the voice encoder is (the server process)
        s3gen = load_s3gen_for(directory, layout, config, device, spec.options, graphs=spec.graphs, analysis=False)
        conds_path = directory / layout.conds
        conds = Conditionals.load(conds_path).to(device) if conds_path.is_file() else None
        vocoder = cls(s3gen, device=device, family=layout.family, warm_up_tokens=spec.options.warm_up_tokens,
                      default_conds=conds)  # fmt: skip
        vocoder.startup_phases["load_s3gen"] = time.perf_counter() - started
        return vocoder

    # ------------------------------------------------------------------------------------------ set-up
    def warm_up(self, max_new_tokens: int, max_prompt_tokens: int = 250) -> int:
        """Capture S3Gen's CUDA graphs for the lengths a request reaches (prompt + speech tokens, 2 frames each) so
        that no common request pays a capture; a no-op without them (CPU). Returns the number captured.

        With `warm_up_tokens` set (the server's CHATTERBOX_S3GEN_WARM_UP_TOKENS) only pieces up to that many
        speech tokens are covered now: each graph costs start-up time, and a longer, rarer piece runs eagerly (or
        on a larger graph) the first time while its shape is captured in the background (`cfm_graphs`). The first
        capture compiles the flow blocks (when compiled), then HiFT's compiled regions are compiled on a few short
        mels: those seconds are recorded as `s3gen_compile` in `startup_phases`, the others' as `s3gen_graphs`."""
        decoder = self.s3gen.flow.decoder
        if decoder.graphs is None:
            return 0
        tokens = max_new_tokens if self.warm_up_tokens is None else min(max_new_tokens, self.warm_up_tokens)
        frames = 2 * (max_prompt_tokens + tokens)
        started = time.perf_counter()
        with torch.inference_mode():
            try:  # with compiled blocks the first capture's warm-up run compiles them (outside the graph)
                first = decoder.graphs.capture_up_to(1, device=self.device)  # the shortest bucket only
                self._warm_up_hift()
                compiled = time.perf_counter()
                rest = decoder.graphs.capture_up_to(frames, device=self.device)
            except Exception as exc:  # Inductor's errors have no common base; any failure here means no kernels
                if not (decoder.compiled or self.s3gen.mel2wav.compiled):
                    raise
                log.warning("S3Gen's compiled blocks failed to build (%s: %s); running them eagerly",
                            type(exc).__name__, exc)  # fmt: skip
                decoder.uncompile_blocks()  # with fresh graphs
                self.s3gen.mel2wav.uncompile_blocks()
                first = decoder.graphs.capture_up_to(1, device=self.device)
                compiled = time.perf_counter()
                rest = decoder.graphs.capture_up_to(frames, device=self.device)
        self.startup_phases["s3gen_compile"] = compiled - started
        self.startup_phases["s3gen_graphs"] = time.perf_counter() - compiled
        log.debug("S3Gen: first graph (with compiling) %.1f s, %d more graphs up to %d frames %.1f s",
                  compiled - started, rest, frames, time.perf_counter() - compiled)  # fmt: skip
        return first + rest

    def _warm_up_hift(self) -> None:
        """Compile HiFT's regions now (when compiled), not on the first request: see `warm_up_compiled`."""
        hift = self.s3gen.mel2wav
        if hift.compiled:
            started = time.perf_counter()
            calls = hift.warm_up_compiled()
            log.debug("S3Gen: HiFT's compiled regions built in %.1f s (%d calls)", time.perf_counter() - started, calls)

    def set_max_rows(self, rows: int) -> None:
        """Let S3Gen's CUDA graphs serve batches of up to `rows` pieces (the server's S3Gen batch size); larger
        batches than the graphs allow run eagerly. A no-op without graphs (CPU, the low preset)."""
        graphs = self.s3gen.flow.decoder.graphs
        if graphs is not None:
            graphs.max_rows = max(graphs.max_rows, rows)

    # `S3GenWorker` calls the model it serves by ChatterboxTTS's names; a Vocoder answers to them too.
    set_s3gen_max_rows = set_max_rows
    warm_up_s3gen = warm_up

    # ------------------------------------------------------------------------------------------ pieces
    @property
    def s3gen_tail_tokens(self) -> int:
        """Tokens S3Gen decodes after T3's (the family's `tail_tokens`: Turbo's and Nano's appended silence)."""
        return self.family.tail_tokens

    def s3gen_tokens(self, speech_tokens: list[int]) -> list[int]:
        """What S3Gen decodes for these T3 tokens: the real S3 tokens, and for Turbo/Nano three silence tokens
        after them (as the reference appends; a prefix decoded early gets them too, where they are held back)."""
        valid = speech_tokens_for_s3gen(speech_tokens)
        return valid + [S3GEN_SILENCE_TOKEN] * self.s3gen_tail_tokens if valid else valid

    def kept_samples(self, tokens: int, wav_samples: int) -> int:
        """How much of a piece's waveform is kept. Llama T3 models: all but the last token's audio, as upstream
        cuts it after 0.1.7 (the token before the stop token decodes to ~40 ms of noise); Turbo/Nano: all of it
        (their reference keeps the appended silence)."""
        if self.family.keeps_last_token_audio:
            return wav_samples
        return min(wav_samples, max(1, tokens - 1) * SAMPLES_PER_TOKEN)

    def vocode(
        self,
        speech_tokens: list[int],
        conds: Conditionals,
        *,
        seed: int | None = None,
        noise: torch.Tensor | None = None,
    ) -> np.ndarray:
        """S3Gen: speech tokens -> 24 kHz waveform.

        Tokens >= 6561 (T3's start/stop and unused ids) are dropped for both variants; 0.1.7's multilingual path
        passed them on and crashed in S3Gen's embedding. The last token's audio is cut, as upstream now does
        after 0.1.7 for the multilingual model: the token emitted right before the stop token decodes to ~40 ms of
        noise. We do it for English too, for the same reason.
        `noise` (`[1, 80, prompt frames + 2 x tokens]`) fixes the flow's initial noise (incremental vocoding).
        """
        real = len(speech_tokens_for_s3gen(speech_tokens))
        valid = self.s3gen_tokens(speech_tokens)
        if not valid:
            return np.zeros(0, dtype=np.float32)
        generator = self._generator(seed)
        token_tensor = torch.tensor(valid, dtype=torch.long, device=self.device).unsqueeze(0)
        wav = self.s3gen.inference(token_tensor, conds.gen, generator=generator, noise=noise)
        wav = wav.squeeze(0).float().cpu().numpy()
        return np.ascontiguousarray(wav[: self.kept_samples(real, len(wav))], dtype=np.float32)

    def _generator(self, seed: int | None) -> torch.Generator | None:
        """The piece's own random generator: from its seed, or on a GPU from a fresh random seed.

        Never torch's default CUDA generator on a GPU: while S3Gen's capturer thread captures a CUDA graph (in the
        background, beside requests: `cfm_graphs.CaptureQueue`), the capture holds the default generator, and a draw
        from it on the worker's thread fails ("Offset increment outside graph capture encountered unexpectedly":
        seen on an H200 2026-12-03, an unseeded paragraph during the after-ready captures). On a CPU (no graphs)
        an unseeded piece draws from torch's default generator, as the reference does."""
        if seed is None and self.device.type != "cuda":
            return None
        return torch.Generator(device=self.device).manual_seed(secrets.randbits(63) if seed is None else seed)

    @torch.inference_mode()
    def vocode_batch(self, jobs: list[VocodeJob]) -> list[np.ndarray]:
        """`vocode` of several pieces (any voices, any lengths) with the flow run as one padded batch.

        Each result is what `vocode` gives the job alone, up to float rounding: the flow masks the padding (see
        `CausalMaskedDiffWithXvec.inference_rows`), HiFT masks it too (`HiFTGenerator.inference_rows`), and each
        job's noise and HiFT draws come from its own seed in `vocode`'s order.
        """
        if len(jobs) == 1:
            job = jobs[0]
            return [self.vocode(job.tokens, job.conds, seed=job.seed, noise=job.noise)]
        out: list[np.ndarray | None] = [None] * len(jobs)
        rows, generators, kept, index = [], [], [], []
        for i, job in enumerate(jobs):
            real = len(speech_tokens_for_s3gen(job.tokens))
            valid = self.s3gen_tokens(job.tokens)
            if not valid:
                out[i] = np.zeros(0, dtype=np.float32)
                continue
            generator = self._generator(job.seed)
            voice = self.flow_voice(job.conds)
            frames = 2 * (voice.prompt_tokens.numel() + len(valid))  # the flow's frames: 2 per token, prompt included
            noise = job.noise
            if noise is None:  # drawn as the flow draws it alone: [1, 80, frames] from the job's generator
                noise = self.s3gen.flow.draw_noise(
                    frames, len(valid), generator, dtype=self.s3gen.dtype,
                    device=generator.device if generator is not None else self.device,
                )  # fmt: skip
            embedding = job.conds.gen["embedding"]
            if embedding is None:
                raise ValueError("a voice's conditionals lack the speaker embedding S3Gen needs")
            rows.append(
                FlowRow(
                    torch.tensor(valid, dtype=torch.long),
                    voice.prompt_tokens,
                    voice.prompt_cond.T,
                    embedding,
                    noise,
                    voice=voice,
                )
            )
            generators.append(generator)
            kept.append(real)
            index.append(i)
        if rows:
            mels = self.s3gen.flow.inference_rows(rows)
            wavs = self.s3gen.mel2wav.inference_rows([mel.to(self.s3gen.dtype) for mel in mels], generators)
            for i, wav, keep in zip(index, wavs, kept, strict=True):
                wav = self.s3gen.apply_trim_fade(wav).float().cpu().numpy()
                out[i] = np.ascontiguousarray(wav[: self.kept_samples(keep, len(wav))], dtype=np.float32)
        return [wav if wav is not None else np.zeros(0, dtype=np.float32) for wav in out]

    def flow_voice(self, conds: Conditionals) -> FlowVoice:
        """The flow's conditioning of this voice (prompt tokens, prompt mel, speaker projection), made once per voice
        and kept while its conditionals live."""
        key = conds.gen["embedding"]
        voice = self._flow_voices.get(key) if torch.is_tensor(key) else None
        if voice is None:
            ref = self.s3gen._ref_inputs(conds.gen)
            voice = self.s3gen.flow.voice(ref["prompt_token"], ref["prompt_feat"], ref["embedding"])
            if torch.is_tensor(key):
                self._flow_voices[key] = voice
        return voice
