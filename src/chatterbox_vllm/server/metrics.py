"""Prometheus metrics of the speech API (vLLM's own engine metrics share the default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("chatterbox_speech_requests_total", "Speech requests by model and outcome", ["model", "status"])
AUDIO_SECONDS = Counter("chatterbox_audio_seconds_total", "Seconds of audio produced, by model", ["model"])
FIRST_AUDIO = Histogram(
    "chatterbox_time_to_first_audio_seconds",
    "From request to the first audio bytes",
    buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32),
)
# Where a streamed request's time to first audio goes (H200, 2026-12-03: 16 concurrent streams all got their first
# byte together after 0.7-1.3 s, against 0.2 s alone): `prepare` admission to the prepared input (voice, prompt
# embeddings), `t3` from then to the first partial's tokens, `s3gen` that partial's wait and vocode.
FIRST_AUDIO_STAGE = Histogram(
    "chatterbox_first_audio_stage_seconds",
    "Time to first audio by stage: prepare (every request), t3 and s3gen (streams whose first audio is a partial)",
    ["stage"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8),
)
REQUEST_SECONDS = Histogram(
    "chatterbox_speech_request_seconds", "Whole speech request", buckets=(0.5, 1, 2, 4, 8, 16, 32, 64, 128)
)
IN_PROGRESS = Gauge("chatterbox_speech_requests_in_progress", "Speech requests being served")
VOICES = Gauge("chatterbox_custom_voices", "Uploaded voices")
VOICE_CONDITIONING = Counter(
    "chatterbox_voice_conditioning_total",
    "Cloned-voice conditionals looked up, by model and where they came from: memory (this process's cache), stored "
    "(the voices directory's .conditioning), computed (the clip analysed: at upload, or a clip dropped in by hand)",
    ["model", "source"],
)
S3GEN_BATCH = Histogram(
    "chatterbox_s3gen_batch_size", "Pieces vocoded together in one S3Gen batch", buckets=(1, 2, 4, 8, 16, 32, 64)
)
S3GEN_PARTIAL_BATCH = Histogram(
    "chatterbox_s3gen_partial_batch_size",
    "Partial vocodes (streamed first pieces' audio before their last token) run together in one S3Gen batch",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
STREAM_FIRST_AUDIO = Counter(
    "chatterbox_stream_first_audio_total",
    "Streamed requests' first audio by what made it: partial (a partial vocode of the first piece's tokens so far, "
    "before its last token) or piece (the whole first piece: partials off, or the piece too short for one)",
    ["model", "source"],
)
S3GEN_WORK = Histogram(
    "chatterbox_s3gen_work_seconds",
    "One piece of S3Gen thread work (a vocode batch, a partial vocode, a voice analysis); the sum against wall time "
    "says whether S3Gen bounds throughput",
    buckets=(0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4),
)
T3_IN_ENGINE = Gauge(
    "chatterbox_t3_requests_in_engine",
    "T3 requests the engine holds, queued or decoding (read when scraped); a request whose client hung up leaves",
)
S3GEN_PROCESS_RESTARTS = Counter(
    "chatterbox_s3gen_process_restarts_total",
    "Times the S3Gen worker process (CHATTERBOX_S3GEN_LAYOUT=process) died and was started again, by model; the "
    "pieces in flight in it were sent to the new one",
    ["model"],
)
# Per device (several S3Gen workers: CHATTERBOX_S3GEN_DEVICES): which GPUs are busy, and how full their batches are.
S3GEN_DEVICE_WORK = Histogram(
    "chatterbox_s3gen_device_work_seconds",
    "One piece of S3Gen work (as chatterbox_s3gen_work_seconds) by the device that ran it; the sum against wall time "
    "says how busy each GPU's S3Gen workers are",
    ["device"],
    buckets=(0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4),
)
S3GEN_DEVICE_BATCH = Histogram(
    "chatterbox_s3gen_device_batch_size",
    "Rows of one S3Gen batch by device and kind: vocode (whole pieces) or partial (streamed first pieces' partial "
    "vocodes)",
    ["device", "kind"],
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
S3GEN_WORKER_RESTARTS = Counter(
    "chatterbox_s3gen_worker_restarts_total",
    "Times an S3Gen worker process died and was started again, by model and device; the pieces in flight in it "
    "were sent to the new one",
    ["model", "device"],
)
