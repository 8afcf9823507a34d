"""Audio of a piece while T3 is still writing its tokens: S3Gen over bounded windows of the token stream.

Time to first audio is otherwise T3's whole sentence plus S3Gen. Here S3Gen runs on the first few tokens (a small
first chunk), then on chunks that grow (`CHUNK_GROWTH`, up to `MAX_CHUNK_TOKENS`), and only audio that later tokens
barely change leaves:
* the last `HOLDBACK_TOKENS` tokens of a chunk are held back: the flow encoder's lookahead convolution sees three
  tokens ahead, so their audio is still unsettled; the next chunk starts at them;
* a partial's cost grows with its new tokens, not with the prefix: the flow sees the voice prompt, then at most
  `LEFT_CONTEXT_TOKENS` tokens already decoded, given as prompt with the mel decoded for them (so the new audio
  continues it), then the new tokens; HiFT sees that context's mel before the new mel. Every partial of a request
  has the same shape of work, so the server batches partials of different requests together
  (`S3GenWorker.partial`, `vocode_partials`);
* the voice prompt's tensors are its conditionals' own, kept per voice (on the device); a partial adds only its
  window's. The flow encoder's pass over the prompt itself is redone per partial: it attends over prompt and new
  tokens together, so reusing it would change the audio (a shorter prompt would too, so partials keep all of it);
* every call uses the request's one flow noise (drawn for the whole piece; each window takes the frames it covers)
  and the same HiFT seed;
* consecutive emissions overlap by `CROSSFADE_SAMPLES` and are crossfaded there, hiding what difference remains.
The last call, on every token, is the piece's ordinary S3Gen output (`VocodeJob`, batched with other pieces) from
the previous emission on (with the last token's audio cut as in `ChatterboxTTS.vocode`): a stream ends exactly as
the piece vocoded whole. `distance_to_whole` says how far the streamed audio lies from it before that.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch

from .conditioning import Conditionals
from .engine.base import speech_tokens_for_s3gen
from .models.s3gen import S3Gen
from .models.s3gen.cfm_graphs import batch_bucket
from .models.s3gen.config import MEL_BINS
from .models.s3gen.flow import FlowRow
from .vocoder import S3GEN_SILENCE_TOKEN, SAMPLES_PER_TOKEN, VocodeJob, Vocoder

if TYPE_CHECKING:
    from .tts import ChatterboxTTS

# What vocodes here: a whole model, or its S3Gen alone (the server's S3Gen process loads only that).
VocoderLike = Union["ChatterboxTTS", Vocoder]

HOLDBACK_TOKENS = 4  # 3 of lookahead + 1 of margin
CROSSFADE_SAMPLES = 480  # 20 ms at 24 kHz
MEL_FRAMES_PER_TOKEN = 2
# Decoded tokens before a partial's new ones that the flow (as prompt) and HiFT (as left mel) see: 0.48 s, more
# than HiFT's receptive field and the encoder's convolutions need for the crossfade's 20 ms to match.
LEFT_CONTEXT_TOKENS = 12
# Chunks after the first grow by this factor up to MAX_CHUNK_TOKENS: small chunks early keep the first seconds of
# playback fed, larger ones later spend less S3Gen time on per-call overhead (the voice prompt's flow pass).
CHUNK_GROWTH = 2
MAX_CHUNK_TOKENS = 64


@dataclass(frozen=True)
class PartialJob:
    """One windowed partial vocode: the voice, the decoded context's tokens and mel (`[80, F]`, HiFT's left context
    too), the new tokens, the flow noise of the voice prompt's and the window's frames, the request's HiFT seed.
    Host tensors only: the S3Gen thread moves them to the device (`flow_row`), not the event loop that makes them."""

    voice: Mapping[str, Any]  # the conditionals' S3Gen part (prompt tokens and mel, x-vector), kept per voice
    context: torch.Tensor
    new: torch.Tensor
    context_mel: torch.Tensor
    noise: torch.Tensor
    seed: int
    start: int  # the token the waveform starts at (the context's first)
    settled: int  # tokens before this one were decoded by an earlier partial (the new tokens start here)
    end: int  # tokens of the piece this partial saw (the last HOLDBACK_TOKENS of them are held back)
    voice_tokens: int

    @property
    def padded_tokens(self) -> int:
        """The tokens this partial puts through the flow (for the worker's batch bound)."""
        return self.voice_tokens + int(self.context.numel() + self.new.numel())

    def flow_row(self, s3gen: S3Gen) -> FlowRow:
        """The flow's row: the voice prompt then the context (tokens with their decoded mel) as its prompt, the new
        tokens to decode."""
        ref = s3gen._ref_inputs(self.voice)
        device = ref["prompt_token"].device
        feat = ref["prompt_feat"].reshape(-1, MEL_BINS)
        return FlowRow(
            self.new.to(device),
            torch.cat([ref["prompt_token"].reshape(-1), self.context.to(device)]),
            torch.cat([feat, self.context_mel.transpose(0, 1).to(device, feat.dtype)]),
            ref["embedding"],
            self.noise.to(device),
        )


@dataclass(frozen=True)
class PartialResult:
    mel: torch.Tensor  # the flow's mel of the new tokens `[80, 2 x new]` (float32, host)
    wav: np.ndarray  # HiFT's waveform of context and new mel (float32), from token `job.start`


@torch.inference_mode()
def vocode_partials(tts: VocoderLike, jobs: list[PartialJob]) -> list[PartialResult]:
    """Partial vocodes of any requests as one padded batch: the flow over every row, then HiFT over each row's
    context and new mel. A waveform that starts at the piece's start is faded in as `S3Gen.inference` does."""
    s3gen = tts.s3gen
    mels = s3gen.flow.inference_rows([job.flow_row(s3gen) for job in jobs])
    hift_mels = [
        torch.cat([job.context_mel.to(mel.device, mel.dtype), mel], dim=-1).to(s3gen.dtype)
        for job, mel in zip(jobs, mels, strict=True)
    ]
    generators = [torch.Generator(device=tts.device).manual_seed(job.seed) for job in jobs]
    wavs = s3gen.mel2wav.inference_rows(hift_mels, generators)
    out = []
    for job, mel, wav in zip(jobs, mels, wavs, strict=True):
        if job.start == 0:
            wav = s3gen.apply_trim_fade(wav)
        # both on the host: the event loop that takes them makes no device copies
        out.append(PartialResult(mel.float().cpu(), np.ascontiguousarray(wav.float().cpu().numpy(), dtype=np.float32)))
    return out


class IncrementalVocoder:
    """Feed it the piece's tokens so far with `push`; it returns the audio that may leave now (float32, 24 kHz).

    The server runs the same steps apart (`partial_job` / `take_partial`, and `job` / `take` for the whole piece)
    so that the vocodes run batched on its S3Gen thread."""

    def __init__(
        self,
        tts: VocoderLike,
        conds: Conditionals,
        *,
        max_tokens: int,
        seed: int | None = None,
        first_tokens: int = 10,
        left_context_tokens: int = LEFT_CONTEXT_TOKENS,
    ) -> None:
        self.tts = tts
        self.conds = conds
        # One seed for every call (HiFT's draws) and one flow noise, sliced per window.
        self.seed = seed if seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        self.left_context_tokens = max(1, left_context_tokens)  # one at least: the crossfade reaches back 20 ms
        # The flow decodes the reference prompt's tokens and the piece's together: 2 mel frames per token of both.
        prompt_token, prompt_feat = conds.gen.get("prompt_token"), conds.gen.get("prompt_feat")
        self.prompt_tokens = int(prompt_token.shape[-1]) if prompt_token is not None else 0
        self.prompt_frames = MEL_FRAMES_PER_TOKEN * self.prompt_tokens
        # The voice's prompt mel may hold a frame more than 2 per prompt token (the reference keeps a clip's odd
        # frame); the flow's output then starts that much later: the piece's mel frame j is the flow's frame
        # (prompt mel frames + j), so token k's frames are the piece's 2k - offset and 2k + 1 - offset.
        self.frame_offset = (int(prompt_feat.shape[-2]) if prompt_feat is not None else 0) - self.prompt_frames
        generator = torch.Generator().manual_seed(self.seed)
        # S3Gen may decode a few tokens more than T3 wrote (Turbo's appended silence): room for those too.
        decoded = max_tokens + tts.s3gen_tail_tokens
        shape = (1, MEL_BINS, self.prompt_frames + MEL_FRAMES_PER_TOKEN * decoded)
        self.noise = torch.randn(shape, generator=generator)
        self.first_tokens = max(first_tokens, HOLDBACK_TOKENS + 2)
        self.next_at = self.first_tokens
        self.chunk = self.first_tokens
        self.settled = 0  # tokens whose mel is final (decoded by a partial, not held back)
        self.mel = torch.zeros(MEL_BINS, 0)  # the piece's settled mel (its last frames, up to the left context)
        self.mel_end = 0  # the piece's mel frame where `mel` ends
        self.emitted = 0  # samples sent, not counting the held crossfade tail
        self.tail = np.zeros(0, dtype=np.float32)  # last samples of the previous emission, to crossfade into
        self.calls = 0

    def due(self, token_count: int) -> bool:
        """Whether a partial vocode is due at this many tokens (a small first chunk, then growing ones)."""
        return token_count >= self.next_at

    def push(self, tokens: list[int], *, final: bool) -> np.ndarray:
        """One step run here and now (tests, benchmarks): a partial, or with `final` the whole piece's remainder."""
        if not final:
            job = self.partial_job(tokens)
            if job is None:
                return np.zeros(0, dtype=np.float32)
            return self.take_partial(job, vocode_partials(self.tts, [job])[0])
        whole = self.job(tokens)
        if whole is None:
            return self._flush()
        wav = self.tts.vocode(whole.tokens, whole.conds, seed=whole.seed, noise=whole.noise)
        return self.take(whole, wav, final=True)

    # ----------------------------------------------------------------------------------------- partials
    def partial_job(self, tokens: list[int]) -> PartialJob | None:
        """The windowed vocode of the tokens after the settled ones (None when nothing new would settle). Moves
        the schedule on: the next partial is due one chunk later (chunks grow by CHUNK_GROWTH)."""
        if len(tokens) >= self.next_at:
            self.chunk = min(self.chunk * CHUNK_GROWTH, MAX_CHUNK_TOKENS)
            self.next_at = len(tokens) + self.chunk
        valid = speech_tokens_for_s3gen(tokens)
        end = len(valid)
        if end - HOLDBACK_TOKENS <= self.settled:
            return None
        decoded = valid + [S3GEN_SILENCE_TOKEN] * self.tts.s3gen_tail_tokens if valid else valid
        start = max(0, self.settled - self.left_context_tokens)
        context = torch.tensor(decoded[start : self.settled], dtype=torch.long)
        new = torch.tensor(decoded[self.settled :], dtype=torch.long)
        # the piece's mel from the context's first frame to the settled end: with the voice's prompt mel it covers
        # exactly the frames of the voice's and the context's tokens
        context_frames = self.mel_end - MEL_FRAMES_PER_TOKEN * start if self.settled else 0
        context_mel = self.mel[:, self.mel.size(-1) - context_frames :]
        # the flow noise of the voice prompt's frames and the window's, as the whole piece's vocode has them there
        frames = self.prompt_frames + MEL_FRAMES_PER_TOKEN * len(decoded)
        noise = torch.cat(
            [self.noise[0, :, : self.prompt_frames],
             self.noise[0, :, self.prompt_frames + MEL_FRAMES_PER_TOKEN * start : frames]], dim=-1,
        )  # fmt: skip
        return PartialJob(
            self.conds.gen, context, new, context_mel, noise, self.seed, start, self.settled, end, self.prompt_tokens
        )

    def take_partial(self, job: PartialJob, result: PartialResult) -> np.ndarray:
        """The audio that may leave now from a partial's result; its settled mel becomes the next one's context."""
        self.calls += 1
        settle = job.end - HOLDBACK_TOKENS
        mel_start = MEL_FRAMES_PER_TOKEN * job.start + job.context_mel.size(-1)  # the piece's frame the result's at
        mel_end = MEL_FRAMES_PER_TOKEN * settle - self.frame_offset
        new_mel = result.mel[:, : max(0, mel_end - mel_start)].float().cpu()
        keep = MEL_FRAMES_PER_TOKEN * (self.left_context_tokens + 1) + max(0, -self.frame_offset)
        self.mel = torch.cat([self.mel, new_mel], dim=-1)[:, -keep:]
        self.mel_end = mel_end
        self.settled = settle
        offset = job.start * SAMPLES_PER_TOKEN  # the waveform's first sample in the piece
        return self._emit(result.wav, offset, settle * SAMPLES_PER_TOKEN, final=False)

    # -------------------------------------------------------------------------------------- whole piece
    def job(self, tokens: list[int]) -> VocodeJob | None:
        """The whole piece's vocode (None without speech tokens): run it anywhere (the server batches it with other
        pieces), then hand the waveform to `take`."""
        valid = speech_tokens_for_s3gen(tokens)
        if not valid:
            return None
        frames = self.prompt_frames + MEL_FRAMES_PER_TOKEN * (len(valid) + self.tts.s3gen_tail_tokens)
        noise = self.noise[:, :, :frames] if frames <= self.noise.size(-1) else None
        return VocodeJob(valid, self.conds, self.seed, noise)

    def take(self, job: VocodeJob, wav: np.ndarray, *, final: bool = True) -> np.ndarray:
        """The rest of the piece from its whole vocode (`job`'s waveform), crossfaded into what left before."""
        del job
        return self._emit(wav, 0, len(wav), final=final)

    def _emit(self, wav: np.ndarray, offset: int, end: int, *, final: bool) -> np.ndarray:
        """Samples [emitted, end) of the piece from `wav` (which starts at sample `offset` of the piece)."""
        start = self.emitted
        if end <= start + (0 if final else CROSSFADE_SAMPLES):
            return self._flush() if final else np.zeros(0, dtype=np.float32)
        segment = wav[start - offset : end - offset].astype(np.float32, copy=True)
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


def distance_to_whole(
    streamed: np.ndarray, whole: np.ndarray, *, frame: int = 1024, hop: int = 256
) -> dict[str, float]:
    """How far streamed audio lies from the piece vocoded whole, against the whole's own scale: `wave` is the rms
    of the sample difference over the rms of the whole piece; `spectrum` the same for STFT magnitudes (a phase
    shift that the ear does not hear counts in `wave`, not in `spectrum`)."""
    n = min(len(streamed), len(whole))
    a = torch.from_numpy(np.ascontiguousarray(streamed[:n], dtype=np.float32))
    b = torch.from_numpy(np.ascontiguousarray(whole[:n], dtype=np.float32))
    wave = float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp_min(1e-12))
    window = torch.hann_window(frame)
    spec_a = torch.stft(a, frame, hop, window=window, return_complex=True).abs()
    spec_b = torch.stft(b, frame, hop, window=window, return_complex=True).abs()
    spectrum = float((spec_a - spec_b).pow(2).mean().sqrt() / spec_b.pow(2).mean().sqrt().clamp_min(1e-12))
    return {"wave": wave, "spectrum": spectrum}


def first_partial_row_buckets(rows: int) -> list[int]:
    """The graph row buckets (`batch_bucket`) batches of 1 to `rows` first partials run in: 1, 2, 4, 8, 16, 32,
    48, 64 up to the one `rows` itself takes."""
    return sorted({batch_bucket(n) for n in range(1, max(1, rows) + 1)})


def warm_up_first_partial(tts: VocoderLike, first_tokens: int, rows: int) -> None:
    """Capture the flow's CUDA graphs of a stream's first partial vocode (the built-in voice's, `first_tokens`
    tokens) for every row bucket a batch of up to `rows` of them takes (`first_partial_row_buckets`; at most the
    graphs' `max_rows`), then run the partial alone and as a batch of up to 4: its kernels chosen, its HiFT shapes
    seen, before any request. A burst of streams starting together then finds their first partials' graphs
    captured (a missing bucket runs on a larger graph or eagerly while it is captured in the background: see
    `cfm_graphs`). Each bucket costs ~1 s of start on an H200 (8 buckets for 64 rows). Other voices' prompts give
    other frame lengths, served by these graphs when they cover them (`covering_bucket`). GPU only: on a CPU nothing
    is captured and the run would only delay start. Raises what the run raises (the server logs it and goes on)."""
    conds = tts.default_conds
    if tts.device.type != "cuda" or first_tokens <= 0 or conds is None:
        return
    tokens = list(range(first_tokens))  # any speech ids: only the shapes matter
    jobs = []
    for seed in range(max(1, min(4, rows))):
        vocoder = IncrementalVocoder(tts, conds, max_tokens=first_tokens, seed=seed, first_tokens=first_tokens)
        jobs.append(vocoder.partial_job(tokens))
    live = [job for job in jobs if job is not None]
    if not live:
        return
    graphs = tts.s3gen.flow.decoder.graphs
    if graphs is not None:
        # the flow's frames for the first partial: 2 per token of the voice prompt and the new tokens (no context)
        frames = MEL_FRAMES_PER_TOKEN * live[0].padded_tokens
        with torch.inference_mode():
            for bucket in first_partial_row_buckets(min(rows, graphs.max_rows)):
                graphs.capture(bucket, frames, device=tts.device)
    vocode_partials(tts, live[:1])
    vocode_partials(tts, live)
    torch.cuda.current_stream(tts.device).synchronize()  # not the whole device: see cfm_graphs (captures)
