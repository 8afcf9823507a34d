"""The API's typed bodies: the speech request (OpenAI's `/v1/audio/speech` contract plus Chatterbox's own controls)
and every JSON answer (model list and cards, voices, languages, health, the speech SSE events, errors).

Field names and values are what clients read (OpenAI's where OpenAI has them); change none of them. Routes return
these models, so the OpenAPI schema documents every answer. This module holds shapes only, no behaviour.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# OpenAI's TTS model names (Open WebUI and SDK examples send these): the server's default model speaks for them.
OPENAI_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str


class ErrorResponse(BaseModel):
    """OpenAI's error shape, which every failure answers with."""

    error: ErrorDetail


class VoiceRef(BaseModel):
    """OpenAI's newer voice form: {"id": "..."}."""

    id: str = Field(min_length=1)


class SpeechOptions(BaseModel):
    """What a speech request and a long-form job share: the model, the voice and every control of the speech."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    voice: str | VoiceRef
    speed: float = Field(1.0, ge=0.25, le=4.0, description="tempo of the audio; pitch is kept")
    instructions: str | None = Field(None, description="accepted for compatibility; Chatterbox ignores it")

    # Chatterbox's controls (not in OpenAI's API). Unset sampling controls take the served model's defaults:
    # cfg_weight 0.5, temperature 0.8, top_p 1, min_p 0.05, repetition_penalty 1.2 (English, multilingual);
    # temperature 0.8, top_k 1000, top_p 0.95, repetition_penalty 1.2 and no CFG or min_p (Turbo, Nano).
    language_id: str | None = None
    exaggeration: float = Field(0.5, ge=0.0, le=2.0, description="English/multilingual only; Turbo ignores it")
    cfg_weight: float | None = Field(None, ge=0.0, le=3.0, description="English/multilingual only")
    temperature: float | None = Field(None, ge=0.0, le=5.0, description="0 decodes greedily")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0, le=100_000, description="Turbo/Nano only; 0 = off")
    min_p: float | None = Field(None, ge=0.0, le=1.0, description="English/multilingual only")
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)

    @property
    def voice_id(self) -> str:
        return self.voice.id if isinstance(self.voice, VoiceRef) else self.voice


class SpeechRequest(SpeechOptions):
    input: str = Field(min_length=1, description="text to speak (its length limit is a server setting)")
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    stream_format: Literal["audio", "sse"] = "audio"
    stream_segments: bool = Field(
        False, description="with stream_format sse: a speech.audio.segment event after each spoken piece (its text, "
        "start and end in seconds of the audio); off by default, so OpenAI's clients see only OpenAI's events",
    )  # fmt: skip


# ---------------------------------------------------------------------------------------- long-form jobs
JobFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm", "m4b"]
JobStatus = Literal["queued", "running", "completed", "failed", "cancelled"]


class JobRequest(SpeechOptions):
    """POST /v1/audio/speech/jobs as JSON (or these fields as a multipart form beside a `file`)."""

    input: str = Field(min_length=1, description="text to speak (up to CHATTERBOX_JOB_MAX_INPUT_CHARS characters)")
    response_format: JobFormat = "mp3"
    title: str | None = Field(None, max_length=1000, description="the audio's title (and its file name)")
    input_format: Literal["text", "markdown"] = Field("text", description="markdown: headings # to ### become chapters")


class JobChapter(BaseModel):
    title: str
    start_piece: int


class Job(BaseModel):
    id: str
    object: Literal["speech.job"] = "speech.job"
    created_at: int
    finished_at: int | None
    status: JobStatus
    model: str
    voice: str
    response_format: str
    title: str | None
    characters: int
    pieces_done: int
    pieces_total: int
    audio_seconds: float
    eta_seconds: float | None
    chapters: list[JobChapter]
    error: ErrorDetail | None


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Job]


class JobDeleted(BaseModel):
    id: str
    object: Literal["speech.job.deleted"] = "speech.job.deleted"
    deleted: Literal[True] = True


class JobPiece(BaseModel):
    """A finished piece on the job's timeline (seconds from the start of the audio)."""

    index: int
    start: float
    end: float
    text: str
    chapter: int | None


class JobSnapshotEvent(BaseModel):
    type: Literal["job.snapshot"] = "job.snapshot"
    job: Job


class JobPieceEvent(BaseModel):
    type: Literal["job.piece"] = "job.piece"
    job: Job
    piece: JobPiece


class JobEndEvent(BaseModel):
    type: Literal["job.completed", "job.failed", "job.cancelled"]
    job: Job


# ------------------------------------------------------------------------------------------------- models
class ModelCard(BaseModel):
    """One name a speech request may use (OpenAI's model object)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "chatterbox-vllm"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class AudioModel(BaseModel):
    id: str
    name: str


class AudioModelList(BaseModel):
    """/v1/audio/models: the form some TTS clients (Open WebUI) read."""

    models: list[AudioModel]


# ------------------------------------------------------------------------------------------------- voices
class VoiceEntry(BaseModel):
    id: str
    name: str
    kind: Literal["builtin", "openai", "language", "custom"]


class VoiceList(BaseModel):
    voices: list[VoiceEntry]


class VoiceCreated(BaseModel):
    id: str
    name: str


class VoiceDeleted(BaseModel):
    id: str
    deleted: Literal[True] = True


class Language(BaseModel):
    code: str
    name: str


class LanguageList(BaseModel):
    languages: list[Language]
    max_input_chars: int


# ------------------------------------------------------------------------------------------------- health
# /health leaves out what does not apply (a field absent, never null): the route answers with exclude_unset, so a
# field is in the JSON exactly when it was given.
class S3GenWorkerHealth(BaseModel):
    """One S3Gen worker process: its device, pid, whether alive, how often restarted, pieces it has not answered."""

    device: str
    pid: int | None
    alive: bool
    restarts: int
    outstanding: int


class S3GenHealth(BaseModel):
    """S3Gen's worker processes (CHATTERBOX_S3GEN_LAYOUT=process, CHATTERBOX_S3GEN_DEVICES): whether all are alive,
    their restarts together, and each worker; with one worker its pid too."""

    layout: Literal["process"]
    pid: int | None = None  # one worker only
    alive: bool
    restarts: int
    workers: list[S3GenWorkerHealth] | None = None
    error: str | None = None  # why a worker stopped for good


class ModelHealth(BaseModel):
    """One model in /health: its name for requests, what loaded it, and how it is."""

    id: str | None  # null for a name that is no model
    model: str
    variant: str | None
    display_name: str | None = None  # the family's name for people (the web page's model list)
    status: Literal["loading", "ready", "error"]
    stage: str | None = None  # while it loads
    engine: str | None = None
    random_weights: bool | None = None  # a random-tiny checkpoint: the audio is noise
    t3_gpu_memory_gib: float | None = None  # T3's share when a VRAM plan split the GPU
    ready_after_s: float | None = None
    startup_phases_s: dict[str, float] | None = None
    s3gen: S3GenHealth | None = None  # S3Gen in worker processes only
    error: str | None = None


class VramHealth(BaseModel):
    used_gib: float
    total_gib: float


class Health(BaseModel):
    """/health: the top level describes the default model (as with one model); `models` has every model."""

    status: Literal["ok", "loading", "error"]
    model: str
    variant: str | None = None
    engine: str | None = None
    device: str | None = None
    speech_requests_in_progress: int | None = None
    vram: VramHealth | None = None  # on a GPU
    models: list[ModelHealth]
    loading: str | None = None  # the model loading now and its stage
    error: str | None = None


# ------------------------------------------------------------------------------------------ speech events
class Usage(BaseModel):
    input_tokens: int
    output_tokens: int
    total_tokens: int


class SpeechAudioDelta(BaseModel):
    type: Literal["speech.audio.delta"] = "speech.audio.delta"
    audio: str  # base64 of the encoded audio


class SpeechAudioSegment(BaseModel):
    """Where one spoken piece lies in the streamed audio (`stream_segments`): sent after the piece's last audio
    delta. Times are seconds of the output (after `speed`), from the samples actually made, so they add up exactly."""

    type: Literal["speech.audio.segment"] = "speech.audio.segment"
    index: int
    start: float
    end: float
    text: str


class SpeechAudioDone(BaseModel):
    type: Literal["speech.audio.done"] = "speech.audio.done"
    usage: Usage


class StreamError(BaseModel):
    """A failure after a speech SSE stream started: reported in-band, with the error in OpenAI's shape."""

    type: Literal["error"] = "error"
    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` entry for a route's error statuses."""
    return {status: {"model": ErrorResponse} for status in statuses}
