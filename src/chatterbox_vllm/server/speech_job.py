"""One speech request from its validated body to the last byte (`SpeechJob`).

The job resolves the model and the voice, takes one of the server's request places, has the model's synthesizer
prepare the input, and answers with the encoded audio as a stream (raw bytes or OpenAI's SSE events). It gives the
place back, closes the encoder and counts the request in the metrics when the stream ends: finished, failed, or
cancelled because the client went away (which aborts the T3 request with the task). Every failure up to the first
audio is an HTTP error in OpenAI's shape; a later one can only cut the stream (or, with SSE, end it with an error
event).

It does not synthesize (`synthesis.py`), encode (`audio.py`) or know models by name (`registry.py`); the route only
hands it the parsed body.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from typing import Literal

import numpy as np
from fastapi.responses import StreamingResponse

from ..text.languages import SUPPORTED_LANGUAGES
from ..tts import SAMPLE_RATE
from .audio import CONTENT_TYPES, AudioEncoder
from .errors import APIError, error_detail, log_failure
from .metrics import AUDIO_SECONDS, FIRST_AUDIO, FIRST_AUDIO_STAGE, IN_PROGRESS, REQUEST_SECONDS, REQUESTS
from .registry import LoadedModel, ModelRegistry
from .schemas import SpeechAudioDelta, SpeechAudioDone, SpeechAudioSegment, SpeechRequest, StreamError, Usage
from .synthesis import PAUSE_SAMPLES, PreparedSpeech
from .voices import UnknownVoiceError, Voice

Status = Literal["ok", "error", "cancelled"]  # how a started request ended, as the metrics count it


class SpeechJob:
    """A speech request in progress: it holds a request place from `start` until its stream ends."""

    def __init__(self, body: SpeechRequest, model: LoadedModel, prepared: PreparedSpeech, encoder: AudioEncoder,
                 started: float) -> None:  # fmt: skip
        self.body = body
        self.model = model
        self.prepared = prepared
        self.encoder = encoder
        self.started = started  # perf_counter at admission: the request's time and its time to first audio
        self.usage: dict[str, int] = {}  # token counts, filled in as the synthesizer goes
        self._samples = 0  # audio samples made so far (before `speed`): where each piece starts and ends
        self._piece_start = 0
        self._segments: list[SpeechAudioSegment] = []  # pieces ended since the last SSE event

    # ------------------------------------------------------------------------------------------------ start
    @classmethod
    async def start(cls, body: SpeechRequest, models: ModelRegistry) -> SpeechJob:
        """Resolve the model and voice, take a request place (429 when none is free) and prepare the input. Any
        failure is an HTTP error, and a place taken is given back."""
        if body.stream_segments and body.stream_format != "sse":
            raise APIError(400, "stream_segments needs stream_format 'sse' (segment events are SSE events)",
                           param="stream_segments", code="invalid_value")  # fmt: skip
        model = models.for_request(body.model).require_ready()
        voice = resolve_voice(body, model, models)
        admission = model.synthesizer.admission
        admission.acquire()
        started = time.perf_counter()
        try:
            prepared = await model.synthesizer.prepare(body, voice)
            FIRST_AUDIO_STAGE.labels(stage="prepare").observe(time.perf_counter() - started)
            encoder = AudioEncoder(body.response_format, SAMPLE_RATE, body.speed)
        except BaseException:
            admission.release()
            REQUESTS.labels(model=model.id, status="rejected").inc()
            raise
        IN_PROGRESS.inc()
        return cls(body, model, prepared, encoder, started)

    # --------------------------------------------------------------------------------------------- response
    async def response(self) -> StreamingResponse:
        """The answer: SSE events, or the audio with its first chunk already made (so a failure before any audio is
        a 500 in OpenAI's shape rather than a 200 whose body breaks off)."""
        headers = {"X-Chatterbox-Model": self.model.id, **self._notices()}  # which model spoke (aliases name none)
        if self.body.stream_format == "sse":
            return StreamingResponse(
                self._sse_events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", **headers}
            )
        content = await _started(self._encoded_chunks())
        return StreamingResponse(content, media_type=CONTENT_TYPES[self.body.response_format], headers=headers)

    def _notices(self) -> dict[str, str]:
        """What the client should know about how its input was read (a header: the audio itself is unaffected)."""
        if not self.prepared.removed_tags:
            return {}
        tags = " ".join(dict.fromkeys(self.prepared.removed_tags))
        return {"X-Chatterbox-Warning": f"removed paralinguistic tags the served model does not speak: {tags}"}

    async def _encoded_chunks(self) -> AsyncIterator[bytes]:
        """Encoded audio as it is made. Its end, however it comes, ends the job: the place is given back."""
        status: Status = "ok"
        first = True
        try:
            on_piece_end = self._piece_ended if self.body.stream_segments else None
            async for wav in self.model.synthesizer.stream(self.prepared, self.usage, on_piece_end):
                self._samples += len(wav)
                AUDIO_SECONDS.labels(model=self.model.id).inc(len(wav) / SAMPLE_RATE)
                data = await asyncio.to_thread(self.encoder.encode, np.asarray(wav, dtype=np.float32))
                if data:
                    if first:
                        FIRST_AUDIO.observe(time.perf_counter() - self.started)
                        first = False
                    yield data
            tail = await asyncio.to_thread(self.encoder.finish)
            if tail:
                yield tail
        except asyncio.CancelledError:
            status = "cancelled"  # the client went away; the T3 request was aborted with this task
            raise
        except Exception as exc:
            status = "error"
            log_failure("speech synthesis failed", exc)
            raise
        finally:
            self._finish(status)

    def _piece_ended(self, index: int) -> None:
        """Piece `index` ends at the samples made so far; the next one starts after the pause that follows."""
        seconds = SAMPLE_RATE * self.body.speed  # output seconds: `speed` changes the tempo, not the pitch
        text = self.prepared.texts[index] if index < len(self.prepared.texts) else ""
        self._segments.append(SpeechAudioSegment(index=index, start=round(self._piece_start / seconds, 4),
                                                 end=round(self._samples / seconds, 4), text=text))  # fmt: skip
        self._piece_start = self._samples + PAUSE_SAMPLES

    def _segment_events(self) -> list[str]:
        events = [_event(segment) for segment in self._segments]
        self._segments.clear()
        return events

    def _finish(self, status: Status) -> None:
        self.encoder.close()
        self.model.synthesizer.admission.release()
        IN_PROGRESS.dec()
        REQUESTS.labels(model=self.model.id, status=status).inc()
        REQUEST_SECONDS.observe(time.perf_counter() - self.started)

    async def _sse_events(self) -> AsyncIterator[str]:
        """OpenAI's speech SSE: `speech.audio.delta` events with base64 audio, then `speech.audio.done` with usage."""
        try:
            async for data in self._encoded_chunks():
                for event in self._segment_events():  # a piece that ended before this audio (the pause after it)
                    yield event
                yield _event(SpeechAudioDelta(audio=base64.b64encode(data).decode()))
        except Exception:  # headers are sent: report in-band rather than cutting the stream silently
            yield _event(StreamError(error=error_detail(500, "speech synthesis failed", None, "synthesis_failed")))
            return
        for event in self._segment_events():
            yield event
        input_tokens, output_tokens = self.usage.get("input_tokens", 0), self.usage.get("output_tokens", 0)
        usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens, total_tokens=input_tokens + output_tokens)
        yield _event(SpeechAudioDone(usage=usage))


def resolve_voice(body: SpeechRequest, model: LoadedModel, models: ModelRegistry) -> Voice:
    """The voice the body names, or a 400 that says why none answers (a language no loaded model speaks, say)."""
    try:
        return model.voices.resolve(body.voice_id)
    except UnknownVoiceError as exc:
        if exc.language is not None and exc.language != "en":  # a language code: the multilingual model's alone
            raise APIError(
                400, f"voice {body.voice_id!r} is the built-in voice speaking {SUPPORTED_LANGUAGES[exc.language]}, "
                f"which no model loaded here speaks. {models.language_advice(exc.language)}",
                param="voice", code="unsupported_language",
            ) from exc  # fmt: skip
        raise APIError(400, str(exc), param="voice", code="voice_not_found") from exc


def _event(event: SpeechAudioDelta | SpeechAudioSegment | SpeechAudioDone | StreamError) -> str:
    return f"data: {event.model_dump_json()}\n\n"


async def _started(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The stream with its first chunk already made: a failure before any audio is then an error response
    (500, OpenAI's shape) rather than a 200 whose body breaks off. Later failures can only cut the stream."""
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        first = b""
    except Exception as exc:
        raise APIError(500, "speech synthesis failed; the server log says why", code="synthesis_failed") from exc

    async def resumed() -> AsyncIterator[bytes]:
        if first:
            yield first
        async for data in chunks:
            yield data

    return resumed()
