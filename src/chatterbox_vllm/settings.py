"""Server and engine settings, from CHATTERBOX_* environment variables (or a .env file in the working directory).

Names follow what people already use with Chatterbox servers (CHATTERBOX_MODEL, CHATTERBOX_MAX_BATCH_SIZE,
CHATTERBOX_MAX_MODEL_LEN, CHATTERBOX_HOST, CHATTERBOX_PORT). A VRAM preset (low | medium | high) fills in the
engine limits; any limit set explicitly (environment, .env or constructor) wins over its preset.

Precedence, highest first: constructor arguments (the CLI's flags), environment variables, the .env file, defaults.
An empty variable (``CHATTERBOX_GPU_MEMORY_GIB=``, as compose files write unset ones) counts as unset.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Literal

import platformdirs
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PresetName = Literal["low", "medium", "high"]
DType = Literal["auto", "float32", "bfloat16", "float16"]

# The conditioning prefix (34 tokens) + a text of a few hundred tokens + room for speech tokens need this much;
# below it T3 cannot finish even a short sentence.
MIN_MODEL_LEN = 256

# vLLM's gpu_memory_utilization is a share of the whole device: keep a sliver for CUDA's context and the rest
# of the pipeline, and refuse shares so small that vLLM could not hold T3's weights.
MAX_GPU_FRACTION = 0.98
MIN_GPU_FRACTION = 0.01

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
_S3GEN_DEVICE = re.compile(r"cpu|cuda(:\d+)?")
APP_NAME = "chatterbox-vllm"  # the user data directory's name (default voices directory)


@dataclass(frozen=True)
class EngineLimits:
    """The limits the engine runs with: a VRAM preset's values (`PRESETS`), or those with every explicitly set one
    in its place (`Settings.limits`).

    They bound T3's GPU memory in vLLM: weights + KV cache for max_batch_size requests of max_model_len tokens;
    `s3_tokenizer_on_gpu` decides where S3Gen's speech tokenizer (0.46 GiB, used only to analyse new voices) sits.
    """

    gpu_memory_gib: float
    max_batch_size: int
    max_model_len: int
    enforce_eager: bool
    dtype: str
    s3_tokenizer_on_gpu: bool = True


# T3 in bfloat16 is ~1.1 GB; a token of KV cache costs 30 layers x 2 x 32 heads (both CFG branches) x 64 x 2 bytes
# = 240 KiB, so a 1536-token request holds ~0.36 GiB. S3Gen, the voice encoder and CUDA's own context need
# another 2-3 GB outside this budget, which is what the card sizes below leave room for.
PRESETS: dict[str, EngineLimits] = {
    # 6-8 GB cards: two sequences, no CUDA graphs (T3's nor S3Gen's: their buffers cost memory such a card lacks),
    # and the speech tokenizer (124M parameters, needed only when a new voice is analysed) on the CPU.
    "low": EngineLimits(
        gpu_memory_gib=1.75,
        max_batch_size=2,
        max_model_len=1536,
        enforce_eager=True,
        dtype="bfloat16",
        s3_tokenizer_on_gpu=False,
    ),
    # 12 GB cards.
    "medium": EngineLimits(
        gpu_memory_gib=5.0, max_batch_size=12, max_model_len=2048, enforce_eager=False, dtype="bfloat16"
    ),
    # 24 GB cards.
    "high": EngineLimits(
        gpu_memory_gib=10.0, max_batch_size=64, max_model_len=3072, enforce_eager=False, dtype="bfloat16"
    ),
}

# S3Gen's most pieces per batch when CHATTERBOX_S3GEN_BATCH_SIZE is unset (the server takes at most T3's batch size
# of them). Only `high` goes to 64: S3Gen's graphs and activations for 64 rows need memory that the smaller
# presets' cards lack, so low and medium keep 16.
S3GEN_BATCH_SIZES: dict[str, int] = {"low": 16, "medium": 16, "high": 64}


class Settings(BaseSettings):
    """Everything the server and its engine are configured by; each field reads CHATTERBOX_<FIELD NAME>."""

    model_config = SettingsConfigDict(
        env_prefix="CHATTERBOX_",
        case_sensitive=False,
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="ignore",  # a shared .env may hold other programs' variables
    )

    # ------------------------------------------------------------------ what to load, and where
    model: str = Field(
        "english",
        description="english | multilingual | turbo | nano | a local checkpoint directory | random-tiny, "
        "random-tiny-multilingual, random-tiny-turbo, random-tiny-nano (random weights: noise, about as long as the "
        "text would take to say)",
    )
    extra_models: Annotated[list[str], NoDecode] = Field(
        [],
        description="more models to load beside CHATTERBOX_MODEL, comma-separated (e.g. turbo,multilingual); a "
        "request picks one by its `model` field (chatterbox-turbo, ...; OpenAI's names get CHATTERBOX_MODEL). "
        "On a GPU all of them share the VRAM budget: their T3 budgets shrink to fit, or start-up says what fits",
    )
    vram_budget_gib: float | None = Field(
        None,
        gt=0,
        description="GPU memory all loaded models may use together (T3 budgets, S3Gen, voice encoder, CUDA "
        "contexts), GiB; unset: the GPU's free memory at start-up. Checked when several models are loaded",
    )
    revision: str | None = Field(None, description="hub revision (branch, tag or commit) to pin the download to")
    device: str = Field("auto", description="auto (cuda if torch.cuda.is_available(), else cpu) | cuda | cuda:N | cpu")
    t3_device: str = Field(
        "auto",
        description="the device T3 (vLLM's engine, the prompt embeddings) and the server's own S3Gen (thread layout, "
        "voice analysis) run on: cuda:N | cuda | cpu; auto: CHATTERBOX_DEVICE's (auto: the first visible GPU, else "
        "the CPU). With CHATTERBOX_T3_DATA_PARALLEL_SIZE above 1, vLLM's engines take GPUs 0 to N-1 instead",
    )
    engine: Literal["auto", "vllm", "torch"] = Field(
        "auto", description="T3 backend: vllm (batched, fast), torch (pure PyTorch, no vLLM needed), auto picks"
    )
    preset: PresetName = Field(
        "medium", description="VRAM preset filling in the engine limits: low (8 GB cards), medium (12 GB), high (24 GB)"
    )

    # ------------------------------------------------------------------ engine limits; None = the preset's value
    gpu_memory_gib: float | None = Field(
        None, description="absolute GPU memory budget for vLLM's T3 (weights + KV cache), GiB; the same on any card"
    )
    max_batch_size: int | None = Field(
        None, description="requests decoded together (vLLM max_num_seqs); more = throughput, but more KV memory"
    )
    max_model_len: int | None = Field(
        None, description="conditioning prefix + text + speech tokens per request (bounds the longest piece)"
    )
    enforce_eager: bool | None = Field(None, description="true: no CUDA graphs (saves memory, decodes slower)")
    dtype: DType | None = Field(None, description="T3's weights/activations in vLLM (bfloat16 halves float32's memory)")
    s3_tokenizer_on_gpu: bool | None = Field(
        None,
        description="false: S3Gen's speech tokenizer runs on the CPU (0.46 GiB less GPU memory; analysing a new "
        "voice takes ~17 s instead of ~1 s, once per voice)",
    )

    # ------------------------------------------------------------------ the HTTP server
    host: str = Field("0.0.0.0", description="address the server listens on (0.0.0.0: every interface)")
    port: int = Field(8000, description="TCP port the server listens on, 1..65535")
    api_key: str | None = Field(None, repr=False, description="if set, requests need 'Authorization: Bearer <key>'")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info",
        description="server log level; tracebacks are logged at debug only (one line per error otherwise), and so are "
        "the notices other libraries print on every normal start (start_notices.py)",
    )
    drain_timeout_s: float = Field(
        30.0, ge=0, le=3600, description="on SIGTERM, how long requests in progress may take to finish"
    )
    voices_dir: str | None = Field(
        None,
        description="directory of cloned voices (one clip per voice, and what the models computed from it in "
        "`.conditioning/`), created at start; unset: `voices` in the user data directory (Linux: "
        "`~/.local/share/chatterbox-vllm/voices`); the Docker image sets `/voices`",
    )
    data_dir: str | None = Field(
        None,
        description="directory of long-form speech jobs: their SQLite database (`jobs.sqlite3`) and each job's "
        "finished pieces (`jobs/<id>/`), created at start; unset: the user data directory (Linux: "
        "`~/.local/share/chatterbox-vllm`, the parent of the default voices directory)",
    )
    cache_dir: str | None = Field(
        None,
        description="directory for what the server makes once and reuses: compile caches (vLLM's torch.compile, "
        "Inductor, Triton, FlashInfer and CUDA kernels, in `compile/`: a second start skips compiling), vLLM's T3 "
        "model directories and random-tiny checkpoints; unset: the user cache directory (Linux: "
        "`~/.cache/chatterbox-vllm`); the Docker image sets `/models/chatterbox`, in its model volume. A cache "
        "variable set on its own (VLLM_CACHE_ROOT, TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR, ...) wins",
    )

    dicta_model: str | None = Field(
        None,
        description="dicta-onnx's ONNX model file (a download of its own): with dicta-onnx installed, Hebrew text "
        "gets its diacritics (niqqud) before tokenizing; unset: Hebrew is used without them, as the reference does "
        "in practice (it calls dicta-onnx without a model, which fails)",
    )

    # ------------------------------------------------------------------ limits of the HTTP API
    max_input_chars: int = Field(4096, ge=1, le=100_000, description="longest `input` accepted (OpenAI: 4096)")
    max_queue: int = Field(64, ge=1, description="speech requests in progress or waiting; more get 429")
    max_upload_mib: float = Field(10.0, gt=0, le=200, description="largest voice upload")
    job_max_input_chars: int = Field(
        1_000_000, ge=1, le=10_000_000, description="longest input of a long-form speech job (characters)"
    )
    job_max_upload_bytes: int = Field(
        32 * 2**20, ge=1, le=2**30, description="largest file a long-form speech job accepts (.txt, .md, .epub), bytes"
    )
    job_max_jobs: int = Field(
        100, ge=1, le=100_000, description="long-form speech jobs kept at once (any state); more are refused (429)"
    )
    job_rows_beside_requests: int = Field(
        1, ge=1, le=64,
        description="while speech requests are in progress (or came within the last 2 s), long-form jobs' pieces "
        "join S3Gen's batches at most this many at a time: a running S3Gen batch cannot be interrupted, so a new "
        "request's first audio waits for at most this many job pieces (~0.07 s for one on an H200). Higher: jobs go "
        "faster beside requests, first audio slower",
    )  # fmt: skip
    job_t3_rows_beside_requests: int = Field(
        8, ge=1, le=256,
        description="while speech requests are in progress (or came within the last 2 s), long-form jobs decode at "
        "most this many pieces at once in T3 (idle, a whole batch): every row in T3's batch lengthens a request's "
        "decoding steps",
    )  # fmt: skip
    job_max_defer_s: float = Field(
        5.0, gt=0, le=3600,
        description="while speech requests are in progress, a long-form job's piece waits before S3Gen (where it "
        "would share the GPU with them) at most this long, then goes alone; a job batch already in S3Gen likewise "
        "pauses between its flow steps at most this long in all: a server under constant load still moves its jobs on",
    )  # fmt: skip
    job_disk_limit_gib: float = Field(
        20.0, gt=0, description="disk the jobs' audio pieces may use together, GiB (a new job's estimate included)"
    )
    max_new_tokens: int = Field(1000, ge=1, le=4096, description="speech tokens per text piece (25 = 1 s)")
    chunk_chars: int = Field(300, ge=20, le=2000, description="long input is synthesized in pieces of this size")
    parallel_pieces: int = Field(
        8, ge=1, le=64,
        description="pieces of one input T3 decodes at once (vLLM; at most the batch size): long input finishes sooner",
    )  # fmt: skip
    stream_first_audio_tokens: int = Field(
        10, ge=0, le=200, description="first audio leaves after this many speech tokens (0: after the first piece)"
    )
    stream_partials_max_active: int = Field(
        16, ge=0, le=4096,
        description="first audio before the first piece's last token (partial vocodes, batched across requests) while "
        "at most this many speech requests are in progress; beyond, it waits for the whole first piece, which spends "
        "less S3Gen time (0: never). On an H200 64 concurrent sentences ran at 94x real time with 16 against 41-57x "
        "with 64: each first partial puts the whole voice prompt through the flow again",
    )  # fmt: skip
    stream_later_partials_max_active: int = Field(
        4, ge=0, le=4096,
        description="after a stream's first audio, its later audio also comes from partial vocodes (smaller chunks "
        "sooner) only while at most this many speech requests are in progress; beyond, the rest of each piece leaves "
        "when the whole piece is vocoded (each partial redoes the voice prompt: S3Gen time under load)",
    )  # fmt: skip
    stream_partial_lead_s: float = Field(
        1.0, ge=0, le=3600,
        description="after a stream's first audio, a later partial vocode of its first piece runs only while the audio "
        "sent is less than this many seconds ahead of real-time playback: each partial costs S3Gen time that the "
        "whole piece's vocode then replaces, and a fast GPU has the whole piece ready long before a second of audio "
        "has played (0: no later partials)",
    )  # fmt: skip
    s3gen_batch_size: int | None = Field(
        None,
        ge=1,
        le=64,
        description="pieces of concurrent requests S3Gen vocodes in one batch (1: one at a time; at most the batch "
        "size)",
    )
    s3gen_layout: Literal["auto", "thread", "process"] = Field(
        "auto",
        description="where S3Gen runs: thread (a thread of the server process, beside the event loop) | process (a "
        "worker process of its own, started with spawn, off the server's GIL; restarted if it dies, with the pieces "
        "in flight sent again) | auto (process on a GPU with the high preset, where it measured 1.4x the thread's "
        "throughput at 64 concurrent on an H200, BENCHMARKS.md; thread on a CPU and with the low and medium presets, "
        "whose 8 and 12 GB cards are better off without the worker's own CUDA context and copy of S3Gen's weights, "
        "~1 GB, counted in the VRAM plan). Voice-clip analysis stays in the server process either way",
    )
    s3gen_start_beside_t3: bool = Field(
        True,
        description="start S3Gen's worker process (its load, compile, CUDA graphs and warm-up) and voice analysis's "
        "warm-up while T3's engine starts rather than after it, where that is safe: the process layout with one "
        "worker, vLLM's KV cache then fixed at the size the T3 budget holds (`kv_cache_memory_bytes`, so nothing "
        "allocated meanwhile changes it), and the T3 budget and the rest of the model fitting the GPU's free memory "
        "together. false: one after the other, as before",
    )
    s3gen_devices: str | None = Field(
        None,
        description="where S3Gen's workers run, comma-separated (cpu | cuda | cuda:N, e.g. cuda:0,cuda:1), or auto: "
        "every visible GPU (the CPU where there is none). More than one worker, or a worker on another device than "
        "T3's, runs each in a worker process of its own (the process layout, whatever CHATTERBOX_S3GEN_LAYOUT says); "
        "pieces go to the worker with the fewest outstanding. Unset: one worker beside T3, on its device "
        '(README.md, "Several GPUs in one host")',
    )
    s3gen_workers_per_device: int = Field(
        1, ge=1, le=16,
        description="S3Gen workers on each device of CHATTERBOX_S3GEN_DEVICES (each a process with its own copy of "
        "S3Gen, its CUDA context and graphs: counted in the VRAM plan of its GPU). Above 1, processes on one GPU "
        "time-slice it unless NVIDIA MPS runs",
    )  # fmt: skip
    s3gen_warm_up_tokens: int = Field(
        300, ge=0, le=4096,
        description="S3Gen's CUDA graphs captured at start-up cover pieces of up to this many speech tokens (25 = "
        "1 s; at most CHATTERBOX_MAX_NEW_TOKENS) after the longest voice prompt; a longer piece runs eagerly (or on "
        "a larger graph) while its shape is captured in the background (~1 s, once). Lower: a faster start; 0: only "
        "lengths up to the longest prompt's (250 tokens)",
    )  # fmt: skip
    s3gen_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="S3Gen flow estimator's compute dtype on GPUs (autocast; auto: float16 on GPUs with tensor cores, "
        "compute capability 7.0+, except the low preset, which keeps float32's smaller peak). float16 vocodes ~2x "
        "faster than TF32 with mels as close to float32 as TF32's; bfloat16 is as fast but ~8x further "
        "(BENCHMARKS.md). An overflow falls back to float32",
    )
    s3gen_compile: bool = Field(
        True,
        description="S3Gen flow estimator's blocks, and its HiFT vocoder's Snakes and masks, through torch.compile "
        "where CUDA graphs run (not the low preset): fused kernels (the flow ~1.3x faster in float16), compiled at "
        "start-up (the flow ~25 s; eager if Inductor fails)",
    )
    t3_compile: bool = Field(
        True,
        description="T3's layers through torch.compile in vLLM on GPUs (fused kernels and vLLM's piecewise CUDA "
        "graphs; compiled at start-up, kept in the cache directory). false: eager kernels with whole-model CUDA "
        "graphs only, nothing to compile. Never on CPU, where Inductor's C++ build would cost minutes at each start",
    )
    t3_data_parallel_size: int = Field(
        1,
        ge=1,
        le=16,
        description="T3 engines side by side, one per GPU (vLLM's data parallelism: GPUs 0 to N-1 of the visible "
        "ones, each with the preset's batch and memory budget; vLLM balances requests between them). For a host "
        "whose T3 is the bottleneck; S3Gen usually saturates first, and more S3Gen workers serve it better "
        "(BENCHMARKS.md, issue 23). 1: one engine",
    )
    t3_flashinfer_sampler: bool = Field(
        False,
        description="T3's top-k/top-p sampling through FlashInfer's kernels in vLLM (GPUs): they are compiled "
        "just-in-time on the first start (about 90 s on an H200; kept in the cache directory after). false: vLLM's "
        "own sampling kernels, nothing to compile (T3's vocabulary is 8,194 tokens: little for either). The same "
        "distribution either way; a seed draws different tokens on each",
    )
    cuda_mps: bool = Field(
        False,
        description="start a private NVIDIA MPS control daemon (pipes in the cache directory) before the server's "
        "first CUDA context, so vLLM's engine process and the S3Gen worker run their kernels side by side instead "
        "of time-slicing the GPU (an H200: 64 concurrent sentences 54.7x against 40.9x real time while first partials "
        "ran at that load; no gain seen since they stop above 16 requests); stopped with the "
        "server. A daemon already named by CUDA_MPS_PIPE_DIRECTORY is used instead. Where MPS cannot start, the "
        "server says why and runs without it. Opt-in: it changes how the GPU is shared (docs: README, MPS)",
    )
    gil_switch_interval_ms: float = Field(
        0.2,
        gt=0,
        le=100,
        description="how long a Python thread of the server may keep the GIL while another waits (Python: 5). S3Gen "
        "launches its kernels from a thread of its own, and beside a busy thread (the event loop under load) it "
        "waits up to this long for almost every launch: on an H100 its first partial vocode, 0.14 s alone, took "
        "2.8 s beside a busy thread at 1 ms and 0.77 s at 0.2 ms (BENCHMARKS.md)",
    )
    tf32: bool = Field(
        True,
        description="float32 matrix products of S3Gen and the voice encoder on TF32 tensor cores (GPUs from Ampere "
        "on): a ~1.4x faster flow; mels move by ~1e-3 on average (BENCHMARKS.md)",
    )

    # ------------------------------------------------------------------ validation (messages say why)
    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if not _DEVICE.fullmatch(value):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {value!r}")
        return value

    @field_validator("t3_device")
    @classmethod
    def _check_t3_device(cls, value: str) -> str:
        value = value.strip().lower()
        if not _DEVICE.fullmatch(value):
            raise ValueError(f"t3_device must be auto, cpu, cuda or cuda:N, not {value!r}")
        return "cuda:0" if value == "cuda" else value

    @field_validator("s3gen_devices")
    @classmethod
    def _check_s3gen_devices(cls, value: str | None) -> str | None:
        """`auto`, or a list of distinct devices (`cuda` is `cuda:0`), normalized to `cuda:0,cuda:1`."""
        if value is None:
            return None
        items = [item.strip().lower() for item in value.split(",")]
        if items == ["auto"]:
            return "auto"
        if "auto" in items:
            raise ValueError(f"s3gen_devices is auto alone or a list of devices, not {value!r}")
        if any(not item for item in items):
            raise ValueError(f"s3gen_devices has an empty entry: {value!r} (devices are separated by single commas)")
        bad = [item for item in items if not _S3GEN_DEVICE.fullmatch(item)]
        if bad:
            raise ValueError(f"s3gen_devices entries must be cpu, cuda or cuda:N (or the list just auto), not "
                             f"{', '.join(map(repr, bad))}")  # fmt: skip
        devices = ["cuda:0" if item == "cuda" else item for item in items]
        repeated = sorted({device for device in devices if devices.count(device) > 1})
        if repeated:
            raise ValueError(
                f"s3gen_devices names {', '.join(repeated)} more than once; list each device once and set "
                "CHATTERBOX_S3GEN_WORKERS_PER_DEVICE for more workers on each"
            )
        return ",".join(devices)

    @field_validator("extra_models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        """`turbo, multilingual` (the environment's form) as a list; blanks dropped."""
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, (list, tuple)):
            return [str(item).strip() for item in value if str(item).strip()]
        return value

    @field_validator("gpu_memory_gib")
    @classmethod
    def _check_gpu_memory(cls, value: float | None) -> float | None:
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"gpu_memory_gib must be a positive number of GiB, not {value}")
        return value

    @field_validator("max_batch_size")
    @classmethod
    def _check_batch(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"max_batch_size must be at least 1 (requests decoded together), not {value}")
        return value

    @field_validator("max_model_len")
    @classmethod
    def _check_model_len(cls, value: int | None) -> int | None:
        if value is not None and value < MIN_MODEL_LEN:
            raise ValueError(
                f"max_model_len must be at least {MIN_MODEL_LEN}, not {value}: T3's conditioning prefix, "
                "the text and the speech tokens all share it"
            )
        return value

    @model_validator(mode="after")
    def _s3gen_batch_from_preset(self) -> Settings:
        """An unset S3Gen batch takes the preset's, so readers always see a number."""
        if self.s3gen_batch_size is None:
            self.s3gen_batch_size = S3GEN_BATCH_SIZES[self.preset]
        return self

    @field_validator("port")
    @classmethod
    def _check_port(cls, value: int) -> int:
        if not 1 <= value <= 65535:
            raise ValueError(f"port must be in 1..65535, not {value}")
        return value

    # ------------------------------------------------------------------ the limits the engine gets
    @property
    def models(self) -> list[str]:
        """Every model to load, CHATTERBOX_MODEL (the default one) first."""
        return [self.model, *self.extra_models]

    def resolved_voices_dir(self) -> Path:
        """The voices directory the server uses: `voices_dir` when set, else `voices` in the platform's user data
        directory (`platformdirs`; Linux: $XDG_DATA_HOME/chatterbox-vllm/voices, ~/.local/share by default)."""
        if self.voices_dir:
            return Path(self.voices_dir).expanduser()
        return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)) / "voices"

    def resolved_data_dir(self) -> Path:
        """The jobs' directory: `data_dir` when set, else the platform's user data directory (the default voices
        directory's parent)."""
        if self.data_dir:
            return Path(self.data_dir).expanduser()
        return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))

    def resolved_cache_dir(self) -> Path:
        """The cache directory the server uses: `cache_dir` when set, else the platform's user cache directory
        (`compile_cache.default_cache_dir`)."""
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        from .compile_cache import default_cache_dir

        return default_cache_dir()

    @property
    def max_upload_bytes(self) -> int:
        """`max_upload_mib` in bytes: the one figure the body-size middleware, the upload route and the voice
        library all enforce (each layer on its own: a chunked body has no declared length)."""
        return int(self.max_upload_mib * 2**20)

    def s3gen_layout_on(self, device_type: str) -> Literal["thread", "process"]:
        """The S3Gen layout this server runs on a device of `device_type` ("cuda" or "cpu"): `auto` resolved."""
        if self.s3gen_layout != "auto":
            return self.s3gen_layout
        return "process" if device_type == "cuda" and self.preset == "high" else "thread"

    def s3gen_rows(self) -> int:
        """Pieces one S3Gen batch holds: the S3Gen batch size (the preset's where unset: a copy made without
        validation may not have it filled in) and at most T3's batch, which is all that can finish together."""
        return min(self.s3gen_batch_size or S3GEN_BATCH_SIZES[self.preset], self.limits().max_batch_size)

    def limits(self) -> EngineLimits:
        """The preset's limits with every explicitly set value in its place."""
        preset = PRESETS[self.preset]
        values = {}
        for f in fields(EngineLimits):
            explicit = getattr(self, f.name)
            values[f.name] = explicit if explicit is not None else getattr(preset, f.name)
        return EngineLimits(**values)


def gpu_memory_utilization(budget_gib: float, total_bytes: int) -> float:
    """An absolute budget as vLLM's gpu_memory_utilization: budget / device total, rounded down to 4 decimals
    (so vLLM never takes more than the budget). Raises ValueError when the budget does not fit the device (a share
    above 0.98 leaves nothing for CUDA's context and S3Gen) or is below 0.01 of it (too little to hold T3)."""
    if total_bytes <= 0:
        raise ValueError(f"device total memory must be positive, not {total_bytes} bytes")
    if not (math.isfinite(budget_gib) and budget_gib > 0):
        raise ValueError(f"GPU memory budget must be a positive number of GiB, not {budget_gib}")
    total_gib = total_bytes / 2**30
    # Exact arithmetic, so that e.g. 3 GiB of 80 GiB is 0.0375 and not 0.0374 through float error.
    ten_thousandths = math.floor(Fraction(budget_gib) * 2**30 * 10_000 / total_bytes)
    fraction = ten_thousandths / 10_000
    if fraction > MAX_GPU_FRACTION:
        raise ValueError(
            f"GPU memory budget {budget_gib:g} GiB does not fit this device's {total_gib:.2f} GiB "
            f"(at most {MAX_GPU_FRACTION:.0%} of it); lower CHATTERBOX_GPU_MEMORY_GIB or pick a smaller preset"
        )
    if fraction < MIN_GPU_FRACTION:
        raise ValueError(
            f"GPU memory budget {budget_gib:g} GiB is too small a share of this device's {total_gib:.2f} GiB "
            f"(under {MIN_GPU_FRACTION:.0%}); raise CHATTERBOX_GPU_MEMORY_GIB"
        )
    return fraction
