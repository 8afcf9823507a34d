"""Request bodies of the API: OpenAI's `/v1/audio/speech` contract plus Chatterbox's own controls."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# OpenAI's TTS model names (Open WebUI and SDK examples send these): the server's default model speaks for them.
OPENAI_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")


class VoiceRef(BaseModel):
    """OpenAI's newer voice form: {"id": "..."}."""

    id: str = Field(min_length=1)


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    input: str = Field(min_length=1, description="text to speak (its length limit is a server setting)")
    voice: str | VoiceRef
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0, description="tempo of the audio; pitch is kept")
    instructions: str | None = Field(None, description="accepted for compatibility; Chatterbox ignores it")
    stream_format: Literal["audio", "sse"] = "audio"

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
