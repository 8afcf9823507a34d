"""ChatterboxTTS: text in, 24 kHz speech out, for the English, multilingual, Turbo and Nano Chatterbox models.

The pipeline is the reference's: normalise and tokenize text -> T3 speech tokens (conditioned on a voice) ->
S3Gen (flow matching to a mel, HiFT vocoder to a waveform). Where it differs from chatterbox-tts 0.1.7 it follows
fixes made upstream later, marked below. Turbo and Nano (`tts_turbo.py` in the reference) differ in every stage:
GPT-2 text tokens with paralinguistic tags, GPT-2 T3 without CFG, a mean-flow S3Gen, three silence tokens appended
to the speech, and voice clips brought to -27 LUFS before analysis.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .checkpoint.config import ModelConfig, load_model_config
from .checkpoint.hub import checkpoint_stage, download, resolve_model
from .checkpoint.layout import CONFIG_FILE, CheckpointLayout
from .checkpoint.weights import CheckpointError
from .compile_cache import use_cache_dir
from .conditioning import S3GEN_SAMPLE_RATE, Conditionals, VoiceConditioner
from .conditioning_store import model_fingerprint
from .engine.base import SamplingParams, T3Engine
from .engine.factory import build_t3_engine, resolve_engine_kind
from .engine.vllm_engine import VLLMOptions
from .families import ModelFamily
from .models.s3gen import S3Gen
from .models.s3gen.flow import FlowVoice
from .models.voice_encoder import VoiceEncoder, load_voice_encoder
from .settings import Settings
from .text.gpt2 import GPT2TextTokenizer
from .text.languages import validate_language
from .text.normalize import punc_norm, validate_text
from .text.paralinguistic import prepare_tags
from .text.tokenizers import EnglishTokenizer, MultilingualTokenizer, text_token_ids
from .vocoder import (  # noqa: F401 - VocodeJob, S3GenOptions, flow_compute_dtype and the constants: public here too
    S3GEN_SILENCE_TOKEN,
    SAMPLES_PER_TOKEN,
    S3GenOptions,
    VocodeJob,
    Vocoder,
    VocoderSpec,
    flow_compute_dtype,
    load_s3gen_for,
)

log = logging.getLogger(__name__)

SAMPLE_RATE = S3GEN_SAMPLE_RATE

# Told what a model load does now (for /health while the server starts): "loading S3Gen ...", ...
Progress = Callable[[str], None]


def _no_progress(stage: str) -> None:
    log.debug("loading: %s", stage)


class UnsupportedSettingError(ValueError):
    """A generation setting the loaded model does not have; `param` names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def settings_device(settings: Settings) -> torch.device:
    """The device CHATTERBOX_DEVICE names (auto: cuda when there is one)."""
    return default_device() if settings.device == "auto" else torch.device(settings.device)


def voice_analysis_fingerprint(directory: Path, layout: CheckpointLayout, config: ModelConfig) -> str:
    """What a voice clip's analysis depends on for this checkpoint: the voice encoder's and S3Gen's weights, the
    config beside random checkpoints, the speech prompt's length and (Turbo, Nano) the loudness target."""
    return model_fingerprint(
        directory,
        (layout.voice_encoder, layout.s3gen, CONFIG_FILE),
        {"variant": layout.variant, "prompt_tokens": config.t3.speech_cond_prompt_len,
         "loudness_lufs": layout.family.voice_loudness_lufs},
    )  # fmt: skip


class ChatterboxTTS:
    """A loaded Chatterbox model (English, multilingual, Turbo or Nano) ready to synthesize."""

    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        *,
        layout: CheckpointLayout,
        config: ModelConfig,
        engine: T3Engine,
        s3gen: S3Gen,
        voice_encoder: VoiceEncoder,
        tokenizer: EnglishTokenizer | MultilingualTokenizer | GPT2TextTokenizer,
        conds: Conditionals | None,
        device: torch.device,
        conditioning_fingerprint: str | None = None,
        vocoder_spec: VocoderSpec | None = None,
    ) -> None:
        """`conditioning_fingerprint`: what stored voice conditionals must have been made with to be used for this
        model (`voice_analysis_fingerprint`); None: none are used. `vocoder_spec`: how another process loads the same
        S3Gen (the server's process layout, CHATTERBOX_S3GEN_LAYOUT); None: it cannot."""
        self.layout = layout
        self.config = config
        self.engine = engine
        self.s3gen = s3gen
        self.voice_encoder = voice_encoder
        self.tokenizer = tokenizer
        self.default_conds = conds
        self.device = device
        self.conditioning_fingerprint = conditioning_fingerprint
        self.vocoder_spec = vocoder_spec
        # S3Gen's vocoding (and its per-voice flow conditioning cache): the methods below delegate to it.
        self.vocoder = Vocoder(s3gen, device=device, family=layout.family, default_conds=conds)
        # Seconds each start-up phase took, in order (loading, T3's engine, S3Gen's compile and graphs, ...): the
        # server shows them in /health and the log, benchmarks/startup.py records them.
        self.startup_phases: dict[str, float] = {}
        family = layout.family
        self.voices = VoiceConditioner(
            voice_encoder, s3gen, prompt_tokens=config.t3.speech_cond_prompt_len, device=device,
            loudness_lufs=family.voice_loudness_lufs, min_seconds=family.min_voice_seconds,
        )  # fmt: skip

    # ----------------------------------------------------------------------------------------------- loading
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
        return cls._load(directory, layout, device, engine, vllm_options)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        model: str | None = None,
        gpu_memory_gib: float | None = None,
        progress: Progress | None = None,
    ) -> ChatterboxTTS:
        """Load what the CHATTERBOX_* settings name: model, revision, device, engine and the VRAM limits.

        `model` loads another of the server's models with the same settings; `gpu_memory_gib` replaces T3's budget
        (the share a VRAM plan gave it when several models are loaded); `progress` hears each stage of the load."""
        # Before anything compiles or vLLM's engine process starts: both read the compile caches' variables.
        cache_dir = settings.resolved_cache_dir()
        use_cache_dir(cache_dir)
        if not settings.t3_flashinfer_sampler:  # read by vLLM's engine process; a value the user set wins
            os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
        device = settings_device(settings)
        limits = settings.limits()
        if gpu_memory_gib is not None:
            limits = dataclasses.replace(limits, gpu_memory_gib=gpu_memory_gib)
        options = VLLMOptions.from_limits(
            limits, device, explicit_dtype=settings.dtype is not None, compile=settings.t3_compile, cache_dir=cache_dir
        )
        if device.type == "cuda":
            # Process-wide, read when kernels are chosen: set before anything is loaded or captured. vLLM's T3 runs
            # in bfloat16 and is not affected.
            torch.backends.cuda.matmul.allow_tf32 = settings.tf32
            torch.backends.cudnn.allow_tf32 = settings.tf32
        s3gen_options = S3GenOptions(
            tokenizer_device=None if limits.s3_tokenizer_on_gpu else "cpu",
            flow_dtype=settings.s3gen_dtype,
            compile_flow=settings.s3gen_compile,
            warm_up_tokens=settings.s3gen_warm_up_tokens,
        )
        return cls.load(
            model or settings.model, device=device, revision=settings.revision, engine=settings.engine,
            vllm_options=options, s3gen_options=s3gen_options, progress=progress, server_cache_dir=cache_dir,
            dicta_model=settings.dicta_model or "",  # "": none, as the settings say
        )  # fmt: skip

    @classmethod
    def load(
        cls,
        model: str,
        *,
        device: str | torch.device | None = None,
        revision: str | None = None,
        engine: str = "auto",
        vllm_options: VLLMOptions | None = None,
        s3gen_options: S3GenOptions | None = None,
        progress: Progress | None = None,
        server_cache_dir: Path | None = None,
        dicta_model: str | None = None,
    ) -> ChatterboxTTS:
        """Load by setting value: `english` or `multilingual` (hub, cached) or a checkpoint directory.
        `server_cache_dir` and `dicta_model` are the settings' (CHATTERBOX_CACHE_DIR, CHATTERBOX_DICTA_MODEL); None:
        as the environment and .env name them (`Settings()`), for loads without settings; dicta_model "": none."""
        (progress or _no_progress)(checkpoint_stage(model))
        directory, layout = resolve_model(model, revision=revision, server_cache_dir=server_cache_dir)
        return cls._load(directory, layout, device, engine, vllm_options, s3gen_options, progress, dicta_model)

    @classmethod
    def from_pretrained(
        cls,
        *,
        device: str | torch.device | None = None,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool | None = None,
        engine: str = "auto",
        vllm_options: VLLMOptions | None = None,
    ) -> ChatterboxTTS:
        """The English model from the Hugging Face hub (or its local cache)."""
        directory = download("english", revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
        directory, layout = resolve_model(str(directory))
        return cls._load(directory, layout, device, engine, vllm_options)

    @classmethod
    def from_pretrained_multilingual(
        cls,
        *,
        device: str | torch.device | None = None,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool | None = None,
        engine: str = "auto",
        vllm_options: VLLMOptions | None = None,
    ) -> ChatterboxTTS:
        """The 23-language model from the Hugging Face hub (or its local cache)."""
        directory = download("multilingual", revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
        directory, layout = resolve_model(str(directory))
        return cls._load(directory, layout, device, engine, vllm_options)

    @classmethod
    def _load(
        cls,
        directory: Path,
        layout: CheckpointLayout,
        device: str | torch.device | None,
        engine_kind: str = "auto",
        vllm_options: VLLMOptions | None = None,
        s3gen_options: S3GenOptions | None = None,
        progress: Progress | None = None,
        dicta_model: str | None = None,
    ) -> ChatterboxTTS:
        progress = progress or _no_progress
        device = torch.device(device) if device is not None else default_device()
        s3gen_options = s3gen_options or S3GenOptions()
        config = load_model_config(directory, layout)
        kind = resolve_engine_kind(engine_kind)  # a bad name fails before anything loads
        progress("loading S3Gen, the voice encoder and the text tokenizer")
        started = time.perf_counter()
        # S3Gen replays CUDA graphs unless the engine was told to run eagerly (the low-VRAM preset).
        graphs = not (vllm_options is not None and vllm_options.enforce_eager)
        s3gen = load_s3gen_for(directory, layout, config, device, s3gen_options, graphs=graphs)
        voice_encoder = load_voice_encoder(directory / layout.voice_encoder, config.voice_encoder).to(device).eval()
        # dicta_model None: a library load (the environment's settings name it)
        tokenizer = layout.family.load_text_front_end(directory, dicta_model)
        conds_path = directory / layout.conds
        conds = Conditionals.load(conds_path).to(device) if conds_path.is_file() else None
        loaded = time.perf_counter()
        progress("starting the T3 engine (vLLM)" if kind == "vllm" else "loading T3 (PyTorch)")
        engine = build_t3_engine(engine_kind, directory / layout.t3, config.t3, device, vllm_options=vllm_options)
        phases = {"load_s3gen_voice_encoder": loaded - started, "t3_engine": time.perf_counter() - loaded}
        log.info(
            "loaded %s Chatterbox from %s on %s (T3 engine: %s)",
            layout.variant,
            directory,
            device,
            type(engine).__name__,
        )
        tts = cls(
            layout=layout,
            config=config,
            engine=engine,
            s3gen=s3gen,
            voice_encoder=voice_encoder,
            tokenizer=tokenizer,
            conds=conds,
            device=device,
            conditioning_fingerprint=voice_analysis_fingerprint(directory, layout, config),
            vocoder_spec=VocoderSpec(
                str(directory), str(device), s3gen_options, graphs=graphs,
                tf32=torch.backends.cuda.matmul.allow_tf32 if device.type == "cuda" else None,
            ),
        )  # fmt: skip
        tts.s3gen_warm_up_tokens = s3gen_options.warm_up_tokens
        tts.startup_phases.update(phases)
        return tts

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
        self.engine.shutdown()

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

    def text_tokens(self, text: str, language_id: str | None = None) -> torch.Tensor:
        """T3's text input: Llama T3 [start] + tokens of the normalised text + [stop]; GPT-2 T3 (Turbo, Nano) the
        GPT-2 ids of the text normalised as its reference does. Paralinguistic tags ([laugh], [sigh], ...) pass
        through to Turbo and Nano; other models would read them aloud, so they are removed, with a warning."""
        validate_text(text)
        language = validate_language(language_id, multilingual=self.family.multilingual)
        text, removed = prepare_tags(text, self.variant)
        if removed:
            log.warning("the %s model has no paralinguistic tags: removed %s", self.variant, ", ".join(removed))
            if not text.strip():
                raise ValueError("the text holds nothing but paralinguistic tags, which this model does not speak")
        if isinstance(self.tokenizer, GPT2TextTokenizer):
            return torch.tensor(self.tokenizer.encode(punc_norm(text, turbo=True)), dtype=torch.long)
        normalised = punc_norm(text, multilingual=self.family.multilingual)
        if isinstance(self.tokenizer, MultilingualTokenizer):
            ids = self.tokenizer.encode(normalised, language)
        else:
            ids = self.tokenizer.encode(normalised)
        return torch.tensor(text_token_ids(ids), dtype=torch.long)

    def sampling_params(self, **settings: float | int | None) -> SamplingParams:
        """This model's sampling defaults with the given settings (None = the default) in their place. Turbo and
        Nano ignore `cfg_weight` and `min_p`, as their reference does (it warns and runs without them)."""
        given = {name: value for name, value in settings.items() if value is not None}
        ignored = sorted(name for name in self.family.ignored_settings if given.pop(name, 0))
        if ignored:
            log.debug("the %s model ignores %s", self.variant, ", ".join(ignored))
        for name, why in self.family.unsupported_settings.items():
            if given.get(name):
                raise UnsupportedSettingError(name, why)
        return self.family.sampling_defaults(**given)

    def piece_params(self, text_tokens: torch.Tensor, params: SamplingParams) -> SamplingParams:
        """`params` for one text piece. A random checkpoint's T3 never samples the stop token: its pieces stop at
        the speaking pace the checkpoint records (`ModelConfig.speech_tokens_per_text_token`), about as long as the
        text would take to say, rather than at max_new_tokens. Other checkpoints: `params` as they are."""
        pace = self.config.speech_tokens_per_text_token
        if pace is None:
            return params
        limit = max(1, math.ceil(pace * text_tokens.numel()))
        return dataclasses.replace(params, max_new_tokens=limit) if limit < params.max_new_tokens else params

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
        speech = self.engine.generate(tokens.to(self.device), conds.t3, self.piece_params(tokens, params))
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
