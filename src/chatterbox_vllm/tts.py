"""ChatterboxTTS: text in, 24 kHz speech out, for the English, multilingual, Turbo and Nano Chatterbox models.

The pipeline is the reference's: normalise and tokenize text -> T3 speech tokens (conditioned on a voice) ->
S3Gen (flow matching to a mel, HiFT vocoder to a waveform). Where it differs from chatterbox-tts 0.1.7 it follows
fixes made upstream later, marked below. Turbo and Nano (`tts_turbo.py` in the reference) differ in every stage:
GPT-2 text tokens with paralinguistic tags, GPT-2 T3 without CFG, a mean-flow S3Gen, three silence tokens appended
to the speech, and voice clips brought to -27 LUFS before analysis.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .checkpoint.hub import checkpoint_stage, resolve_model
from .checkpoint.weights import CheckpointError
from .conditioning import S3GEN_SAMPLE_RATE, Conditionals, VoiceConditioner
from .engine.base import SamplingParams, T3Engine
from .engine.vllm_engine import VLLMOptions
from .families import ModelFamily
from .loading import (  # noqa: F401 - Progress and the device helpers: public here too
    BesideEngine,
    LoadOptions,
    ModelParts,
    Progress,
    default_device,
    load_parts,
    no_progress,
    settings_device,
    voice_analysis_fingerprint,
)
from .models.s3gen.flow import FlowVoice
from .settings import Settings
from .t3_stage import T3Stage, TextTokenizer, UnsupportedSettingError  # noqa: F401 - UnsupportedSettingError: public here too
from .vocoder import (  # noqa: F401 - VocodeJob, S3GenOptions, flow_compute_dtype and the constants: public here too
    S3GEN_SILENCE_TOKEN,
    SAMPLES_PER_TOKEN,
    S3GenOptions,
    VocodeJob,
    Vocoder,
    VocoderSpec,
    flow_compute_dtype,
)

log = logging.getLogger(__name__)

SAMPLE_RATE = S3GEN_SAMPLE_RATE


class ChatterboxTTS:
    """A loaded Chatterbox model (English, multilingual, Turbo or Nano) ready to synthesize: its three stages, each
    a module of its own, are `t3` (text -> speech tokens, `t3_stage.T3Stage`), `voices` (voice clip ->
    conditionals, `conditioning.VoiceConditioner`) and `vocoder` (speech tokens -> waveform, `vocoder.Vocoder`);
    the methods here delegate to them."""

    sample_rate = SAMPLE_RATE

    def __init__(self, parts: ModelParts) -> None:
        """From a loaded checkpoint (`loading.load_parts`); the constructors below find the checkpoint and load it."""
        self.layout = parts.layout
        self.config = parts.config
        self.s3gen = parts.s3gen
        self.voice_encoder = parts.voice_encoder
        self.default_conds = parts.conds
        self.device = parts.device
        # What stored voice conditionals must have been made with to be used here (None: none are used), and how
        # another process loads the same S3Gen (the server's process layout; None: it cannot).
        self.conditioning_fingerprint = parts.conditioning_fingerprint
        self.vocoder_spec = parts.vocoder_spec
        family = parts.layout.family
        self.t3 = T3Stage(engine=parts.engine, tokenizer=parts.tokenizer, family=family, config=parts.config,
                          device=parts.device)  # fmt: skip
        self.voices: VoiceConditioner = parts.voices
        self.vocoder = Vocoder(parts.s3gen, device=parts.device, family=family, default_conds=parts.conds,
                               warm_up_tokens=parts.warm_up_tokens)  # fmt: skip
        # Seconds each start-up phase took, in order (loading, T3's engine, S3Gen's compile and graphs, ...): the
        # server shows them in /health and the log, benchmarks/startup.py records them.
        self.startup_phases: dict[str, float] = dict(parts.startup_phases)

    # ----------------------------------------------------------------------------------------------- loading
    # Each finds a checkpoint directory and loads it through `loading.load_parts`. None changes process-wide state
    # (compile caches, TF32): `process_setup.configure_process(settings)` does, where a process starts.
    @classmethod
    def from_local(
        cls,
        directory: str | Path,
        *,
        device: str | torch.device | None = None,
        engine: str = "auto",
        vllm_options: VLLMOptions | None = None,
    ) -> ChatterboxTTS:
        """Load a checkpoint directory (published layout, or a random one from `make-checkpoint`)."""
        directory = Path(directory).expanduser()
        if not directory.is_dir():
            raise CheckpointError(f"{directory}: not a directory")
        directory, layout = resolve_model(str(directory))
        return cls(load_parts(directory, layout, LoadOptions(device, engine, vllm_options)))

    @classmethod
    def from_pretrained(
        cls,
        model: str = "english",
        *,
        device: str | torch.device | None = None,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool | None = None,
        engine: str = "auto",
        vllm_options: VLLMOptions | None = None,
        options: LoadOptions | None = None,
        server_cache_dir: Path | None = None,
        progress: Progress | None = None,
        beside_engine: BesideEngine | None = None,
    ) -> ChatterboxTTS:
        """Load a model by name, as CHATTERBOX_MODEL names one: english, multilingual, turbo, nano (from the Hugging
        Face hub, or its cache `cache_dir`; `local_files_only` None follows HF_HUB_OFFLINE), random-tiny (written to
        `server_cache_dir`, None: the settings') or a checkpoint directory. `options`, when given, replace `device`,
        `engine` and `vllm_options`; `progress` hears each stage of the load; `beside_engine` starts first and runs
        while T3's engine starts (`loading.BesideEngine`)."""
        (progress or no_progress)(checkpoint_stage(model))
        directory, layout = resolve_model(
            model, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
            server_cache_dir=server_cache_dir,
        )  # fmt: skip
        options = options or LoadOptions(device, engine, vllm_options)
        return cls(load_parts(directory, layout, options, progress, beside_engine))

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        model: str | None = None,
        gpu_memory_gib: float | None = None,
        progress: Progress | None = None,
        beside_engine: BesideEngine | None = None,
    ) -> ChatterboxTTS:
        """Load what the CHATTERBOX_* settings name: model, revision, device, engine and the VRAM limits.

        `model` loads another of the server's models with the same settings; `gpu_memory_gib` replaces T3's budget
        (the share a VRAM plan gave it when several models are loaded); `progress` hears each stage of the load;
        `beside_engine` starts first and runs while T3's engine starts (`loading.BesideEngine`). Call
        `process_setup.configure_process(settings)` first, once per process: this changes no process state."""
        return cls.from_pretrained(
            model or settings.model, revision=settings.revision, server_cache_dir=settings.resolved_cache_dir(),
            options=LoadOptions.from_settings(settings, gpu_memory_gib=gpu_memory_gib),
            progress=progress, beside_engine=beside_engine,
        )  # fmt: skip

    @property
    def s3gen_warm_up_tokens(self) -> int | None:
        """See S3GenOptions.warm_up_tokens (held by the vocoder)."""
        return self.vocoder.warm_up_tokens

    @s3gen_warm_up_tokens.setter
    def s3gen_warm_up_tokens(self, tokens: int | None) -> None:
        self.vocoder.warm_up_tokens = tokens

    def warm_up_s3gen(self, max_new_tokens: int, max_prompt_tokens: int = 250) -> int:
        """`Vocoder.warm_up`: S3Gen's CUDA graphs captured for the lengths a request reaches (a no-op on a CPU); its
        phases (`s3gen_compile`, `s3gen_graphs`) join `startup_phases`. Returns the number captured."""
        captured = self.vocoder.warm_up(max_new_tokens, max_prompt_tokens)
        self.startup_phases.update(
            {name: seconds for name, seconds in self.vocoder.startup_phases.items() if name.startswith("s3gen_")}
        )
        return captured

    def set_s3gen_max_rows(self, rows: int) -> None:
        """`Vocoder.set_max_rows`: S3Gen's CUDA graphs serve batches of up to `rows` pieces."""
        self.vocoder.set_max_rows(rows)

    def close(self) -> None:
        """Stop the T3 engine (vLLM runs its engine core in a process of its own)."""
        self.t3.close()

    # ------------------------------------------------------------------------------------------------- info
    @property
    def variant(self) -> str:
        return self.layout.variant

    @property
    def family(self) -> ModelFamily:
        """What this model's family declares: languages, tags, CFG, tail tokens, voice preprocessing, ..."""
        return self.layout.family

    @property
    def supported_languages(self) -> dict[str, str]:
        return self.family.languages

    # ------------------------------------------------------------------------------------------- synthesis
    def prepare_conditionals(self, audio: str | Path | bytes, exaggeration: float = 0.5) -> Conditionals:
        """Voice conditionals from a reference clip (wav/mp3/flac/ogg path or bytes); cached by content."""
        return self.voices.from_audio(audio, exaggeration)

    @property
    def engine(self) -> T3Engine:
        """T3's engine (`t3.engine`): the server decodes through its async surface."""
        return self.t3.engine

    @engine.setter
    def engine(self, engine: T3Engine) -> None:
        self.t3.engine = engine

    @property
    def tokenizer(self) -> TextTokenizer:
        """The text front end's tokenizer (`t3.tokenizer`)."""
        return self.t3.tokenizer

    def text_tokens(self, text: str, language_id: str | None = None) -> torch.Tensor:
        """`T3Stage.text_tokens`: T3's text input for `text` (validated, normalised, tags as the model has them)."""
        return self.t3.text_tokens(text, language_id)

    def sampling_params(self, **settings: float | int | None) -> SamplingParams:
        """`T3Stage.sampling_params`: this model's sampling defaults with the given settings in their place."""
        return self.t3.sampling_params(**settings)

    def piece_params(self, text_tokens: torch.Tensor, params: SamplingParams) -> SamplingParams:
        """`T3Stage.piece_params`: `params` for one text piece (a random checkpoint's pieces stop at its pace)."""
        return self.t3.piece_params(text_tokens, params)

    @torch.inference_mode()
    def generate(
        self,
        text: str,
        language_id: str | None = None,
        audio_prompt_path: str | Path | bytes | None = None,
        exaggeration: float = 0.5,
        cfg_weight: float | None = None,
        temperature: float | None = None,
        repetition_penalty: float | None = None,
        min_p: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        max_new_tokens: int = 1000,
        conditionals: Conditionals | None = None,
    ) -> np.ndarray:
        """Synthesize `text`; returns a float32 waveform at 24 kHz.

        The voice is `conditionals` if given, else the clip at `audio_prompt_path`, else the built-in voice. Unset
        sampling settings take the model's defaults (`sampling_params`).
        """
        tokens = self.text_tokens(text, language_id)
        conds = self._conditionals(conditionals, audio_prompt_path, exaggeration)
        params = self.sampling_params(
            temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p, repetition_penalty=repetition_penalty,
            cfg_weight=cfg_weight, max_new_tokens=max_new_tokens, seed=seed,
        )  # fmt: skip
        speech = self.t3.speech_tokens(tokens, conds.t3, params)
        return self.vocode(speech, conds, seed=seed)

    # S3Gen's part, delegated to `self.vocoder` (vocoder.py), which loads without T3 where only it is needed.
    @property
    def s3gen_tail_tokens(self) -> int:
        """Tokens S3Gen decodes after T3's: Turbo's/Nano's appended silence (3), none for the other models."""
        return self.vocoder.s3gen_tail_tokens

    def s3gen_tokens(self, speech_tokens: list[int]) -> list[int]:
        """`Vocoder.s3gen_tokens`: what S3Gen decodes for these T3 tokens."""
        return self.vocoder.s3gen_tokens(speech_tokens)

    def kept_samples(self, tokens: int, wav_samples: int) -> int:
        """`Vocoder.kept_samples`: how much of a piece's waveform is kept."""
        return self.vocoder.kept_samples(tokens, wav_samples)

    def vocode(
        self,
        speech_tokens: list[int],
        conds: Conditionals,
        *,
        seed: int | None = None,
        noise: torch.Tensor | None = None,
    ) -> np.ndarray:
        """`Vocoder.vocode`: S3Gen, speech tokens -> 24 kHz waveform (float32)."""
        return self.vocoder.vocode(speech_tokens, conds, seed=seed, noise=noise)

    def vocode_batch(self, jobs: list[VocodeJob]) -> list[np.ndarray]:
        """`Vocoder.vocode_batch`: several pieces with the flow run as one padded batch."""
        return self.vocoder.vocode_batch(jobs)

    def flow_voice(self, conds: Conditionals) -> FlowVoice:
        """`Vocoder.flow_voice`: the flow's conditioning of this voice, made once per voice."""
        return self.vocoder.flow_voice(conds)

    def _conditionals(
        self, conditionals: Conditionals | None, audio: str | Path | bytes | None, exaggeration: float
    ) -> Conditionals:
        if conditionals is not None:
            return conditionals.with_exaggeration(exaggeration)
        if audio is not None:
            return self.prepare_conditionals(audio, exaggeration)
        if self.default_conds is None:
            raise ValueError(f"this checkpoint has no built-in voice ({self.layout.conds}); pass a reference clip")
        return self.default_conds.with_exaggeration(exaggeration)
