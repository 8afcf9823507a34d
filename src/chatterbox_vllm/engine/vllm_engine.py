"""The production T3 engine: vLLM's AsyncLLM (continuous batching, paged KV cache, CUDA graphs).

The engine owns one event loop in a background thread, where AsyncLLM lives. Callers may be synchronous
(`generate`, `stream`: ChatterboxTTS, the CLI) or asynchronous on any other loop (the server: `stream_async` token
by token where audio leaves early, `generate_async` all at once otherwise); each request is pumped from the engine
loop to the caller. Closing a stream early (a client that hangs up) aborts the
request, which frees its KV cache at once.

Prefix caching stays off: a request's prompt positions depend on its length (see `vllm_t3/model.py`), so equal
prefixes of different requests do not have equal keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import math
import os
import queue
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..models.t3 import T3, T3Cond
from ..models.t3.config import T3Config
from ..settings import EngineLimits, gpu_memory_utilization
from ..vram_plan import t3_kv_cache_to_fix, t3_kv_need_bytes, t3_kv_room_bytes
from .base import TOKENS_DONE, SamplingParams, check_text_tokens, drain_tokens, prompt_length, speech_token_limit
from .vllm_t3 import plugin
from .vllm_t3.model_dir import prepare_model_dir
from .vllm_t3.plugin import CFG_WEIGHT, REPETITION_PENALTY, TEMPERATURE, TOP_K, TOP_P

log = logging.getLogger(__name__)

SERVED_MODEL_NAME = "chatterbox-t3"  # the model_name label of vLLM's metrics


@dataclass(frozen=True)
class VLLMOptions:
    """What the VRAM presets control (see `settings.py`); `gpu_memory_utilization` is vLLM's fraction."""

    max_model_len: int = 2048
    max_num_seqs: int = 8
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool = False
    dtype: str = "auto"
    seed: int = 0
    # Prompts prefilled whole, never in chunks: vLLM's CPU backend (0.32) kills its engine when a seeded request's
    # prefill is split (it rewinds the request's generator, which CPU generators cannot do), which any burst of
    # requests with a `seed` whose prompts exceed one step's token budget would do. None: on CPU only.
    whole_prefills: bool | None = None
    # Decode batch sizes vLLM captures CUDA graphs for (None: vLLM's default list). See `cudagraph_capture_sizes`.
    cudagraph_capture_sizes: tuple[int, ...] | None = None
    # torch.compile of T3 on GPUs (CHATTERBOX_T3_COMPILE); reaches vLLM's engine process in the model's config.
    compile: bool = True
    # Where T3's vLLM model directory is written: the server's cache directory (None: the settings', see
    # `compile_cache.cache_root`).
    cache_dir: Path | None = None
    # T3 engines, one per GPU (vLLM's data parallelism; CHATTERBOX_T3_DATA_PARALLEL_SIZE): vLLM balances requests.
    data_parallel_size: int = 1
    # The GPU of one engine when it is not the first visible one (CHATTERBOX_T3_DEVICE=cuda:N): vLLM's device_ids.
    device_index: int | None = None
    # vLLM's KV cache in bytes, fixed (None: vLLM sizes it from a profile of the device's free memory). Set when the
    # S3Gen process starts beside the engine: its allocations would otherwise shrink the profiled KV cache, or fail
    # vLLM's check that no memory was freed while it profiled (`server/s3gen_beside.py`).
    kv_cache_memory_bytes: int | None = None

    @classmethod
    def from_limits(
        cls,
        limits: EngineLimits,
        device: torch.device,
        *,
        explicit_dtype: bool = True,
        compile: bool = True,
        cache_dir: Path | None = None,
        data_parallel_size: int = 1,
        kv_cache_memory_bytes: int | None = None,
    ) -> VLLMOptions:
        """Settings -> engine options. On a GPU the GiB budget becomes vLLM's utilisation fraction of the device;
        on CPU it sizes vLLM's KV cache (VLLM_CPU_KVCACHE_SPACE), and T3 runs in float32 unless a dtype was set.
        `compile` and `cache_dir` are the settings' t3_compile and cache directory, passed through;
        `kv_cache_memory_bytes` fixes the KV cache on a GPU (ignored on a CPU, whose KV cache is fixed already)."""
        dtype = limits.dtype
        if device.type == "cuda":
            total = torch.cuda.get_device_properties(device).total_memory
            utilization = gpu_memory_utilization(limits.gpu_memory_gib, total)
        else:
            utilization = 0.9  # unused by vLLM's CPU backend
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, math.ceil(limits.gpu_memory_gib))))
            if not explicit_dtype:
                dtype = "float32"
        graphs = device.type == "cuda" and not limits.enforce_eager
        return cls(
            max_model_len=limits.max_model_len,
            max_num_seqs=limits.max_batch_size,
            gpu_memory_utilization=utilization,
            enforce_eager=limits.enforce_eager,
            dtype=dtype,
            cudagraph_capture_sizes=cudagraph_capture_sizes(limits.max_batch_size) if graphs else None,
            compile=compile,
            cache_dir=cache_dir,
            data_parallel_size=data_parallel_size,
            device_index=device.index if device.type == "cuda" and device.index else None,
            kv_cache_memory_bytes=kv_cache_memory_bytes if device.type == "cuda" else None,
        )


def cudagraph_capture_sizes(max_num_seqs: int) -> tuple[int, ...]:
    """Batch sizes for T3's decode graphs: powers of two and the halfway points above 8, up to `max_num_seqs`
    (which is included). vLLM's default list runs to twice max_num_seqs in steps of 8 (1, 2, 4, 8, 16, ..., 128 for
    the high preset's 64: 19 sizes, each captured piecewise and whole at start-up); a decode step never holds more
    than max_num_seqs requests, and a batch between two sizes pads to the next, so 10 sizes serve as well."""
    sizes = {max_num_seqs}
    size = 1
    while size < max_num_seqs:
        sizes.add(size)
        if size >= 8 and size + size // 2 < max_num_seqs:
            sizes.add(size + size // 2)
        size *= 2
    return tuple(sorted(sizes))


def vllm_available() -> bool:
    """vLLM imports and has a device it can run on here."""
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # a broken install (e.g. a CUDA build without a GPU) raises more than ImportError
        log.debug("vLLM is not usable: %s", exc)
        return False
    return True


def takes_kv_cache_bytes() -> bool:
    """Whether this vLLM takes its KV cache's size in bytes (EngineArgs.kv_cache_memory_bytes, vLLM 0.11 and
    later: 0.26 to 0.33 have it), so that its start does not depend on what other processes allocate meanwhile."""
    try:
        from vllm.engine.arg_utils import EngineArgs
    except Exception as exc:  # noqa: BLE001 - no usable vLLM: nothing to ask it
        log.debug("vLLM is not usable: %s", exc)
        return False
    return "kv_cache_memory_bytes" in {f.name for f in dataclasses.fields(EngineArgs)}


# Bytes of one element of T3's weights and KV cache in vLLM, by the engine's dtype; "auto" counts float32's, the
# larger (vLLM may keep T3's float32 config as it is).
_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "half": 2, "float32": 4, "float": 4}


def fit_kv_cache(options: VLLMOptions, config: T3Config, device: torch.device) -> VLLMOptions:
    """`options` with vLLM's KV cache fixed at what `max_num_seqs` requests of `max_model_len` tokens need, where
    that is less than the T3 budget leaves (or than a size fixed already) and this vLLM takes the size
    (`vram_plan.t3_kv_cache_to_fix`); else as they were. On GPUs only: a CPU's KV cache is its own setting
    (VLLM_CPU_KVCACHE_SPACE). Logs the choice, which the memory benchmarks read."""
    if device.type != "cuda" or not takes_kv_cache_bytes():
        return options
    dtype_bytes = _DTYPE_BYTES.get(options.dtype, 4)
    budget = int(options.gpu_memory_utilization * torch.cuda.get_device_properties(device).total_memory)
    seqs, length = options.max_num_seqs, options.max_model_len
    fixed = options.kv_cache_memory_bytes
    size = t3_kv_cache_to_fix(config, seqs, length, budget, dtype_bytes=dtype_bytes, fixed=fixed)
    need = t3_kv_need_bytes(config, seqs, length, dtype_bytes)
    if size is not None and size != fixed:
        log.info("vLLM's KV cache fixed at %.2f GiB: what %d requests of %d tokens need at once (the T3 budget of "
                 "%.2f GiB would leave it ~%.2f GiB)", size / 2**30, seqs, length, budget / 2**30,
                 (fixed if fixed is not None else t3_kv_room_bytes(config, budget, dtype_bytes)) / 2**30)  # fmt: skip
        return dataclasses.replace(options, kv_cache_memory_bytes=size)
    if fixed is None:
        log.info("vLLM sizes its KV cache from the T3 budget of %.2f GiB (~%.2f GiB left after T3's weights): %d "
                 "requests of %d tokens would need %.2f GiB: fewer of them decode at once, vLLM holds the others back",
                 budget / 2**30, t3_kv_room_bytes(config, budget, dtype_bytes) / 2**30, seqs, length,
                 need / 2**30)  # fmt: skip
    return options


def _prepare_process_environment() -> None:
    # One logits-processor interface across vLLM 0.26 .. 0.33: the V1 model runner's (V2 has its own).
    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")


def engine_kwargs(model_dir: Path, options: VLLMOptions, config: T3Config | None = None) -> dict[str, Any]:
    """vLLM engine arguments for a prepared T3 model directory (AsyncLLM here; `vllm.LLM` in diagnostics). The
    logits processor is the model's chain: CFG + penalty (Llama T3) or Turbo's (GPT-2 T3)."""
    whole_prefills: dict[str, Any] = {}
    if options.whole_prefills:  # a step's budget then takes the longest prompt whole
        whole_prefills = dict(enable_chunked_prefill=False, max_num_batched_tokens=options.max_model_len)
    parallel: dict[str, Any] = {}
    if options.data_parallel_size > 1:  # only then: one engine's arguments stay those of every vLLM version
        parallel = dict(data_parallel_size=options.data_parallel_size)
    if options.device_index:  # only then: T3 on the first visible GPU keeps the arguments of every vLLM version
        parallel["device_ids"] = [_checked_device_index(options.device_index)]
    sizing: dict[str, Any] = {}
    if options.kv_cache_memory_bytes is not None:  # only then: without it the arguments are every vLLM version's
        sizing = dict(kv_cache_memory_bytes=int(options.kv_cache_memory_bytes))
    graphs: dict[str, Any] = {}
    if options.cudagraph_capture_sizes and not options.enforce_eager:  # a dict: one shape from vLLM 0.26 to 0.33
        graphs = dict(compilation_config={"cudagraph_capture_sizes": list(options.cudagraph_capture_sizes)})
    return dict(
        **whole_prefills,
        **parallel,
        **sizing,
        **graphs,
        model=str(model_dir),
        skip_tokenizer_init=True,
        enable_prompt_embeds=True,
        enable_prefix_caching=False,
        dtype=options.dtype,
        max_model_len=options.max_model_len,
        max_num_seqs=options.max_num_seqs,
        gpu_memory_utilization=options.gpu_memory_utilization,
        enforce_eager=options.enforce_eager,
        seed=options.seed,
        logits_processors=[
            plugin.BACKBONE_LOGITS_PROCESSORS[config.backbone] if config is not None else plugin.LOGITS_PROCESSOR
        ],
        disable_log_stats=False,
        served_model_name=SERVED_MODEL_NAME,
        use_tqdm_on_load=False,  # T3 is one file, read in a moment: a progress bar of its "shards" says nothing
        hf_overrides={plugin.T3_COMPILE: options.compile},  # read by the model class in vLLM's engine process
    )


def _checked_device_index(index: int) -> int:
    """`index`, when this vLLM takes a GPU for its engine (EngineArgs.device_ids, from vLLM 0.32); else the reason."""
    from vllm.engine.arg_utils import EngineArgs

    if "device_ids" not in {f.name for f in dataclasses.fields(EngineArgs)}:
        raise ValueError(
            f"T3 on cuda:{index} needs a vLLM that takes its engine's GPU (device_ids, vLLM 0.32 or later); with this "
            "one, put T3's GPU first in CUDA_VISIBLE_DEVICES and leave CHATTERBOX_T3_DEVICE unset"
        )
    return index


def vllm_sampling_params(
    params: SamplingParams, config: T3Config, *, min_tokens: int = 0, final_only: bool = False
) -> Any:
    """Our sampling settings as vLLM's (CFG weight and T3's repetition penalty ride in extra_args). `final_only`:
    vLLM hands over the request's tokens once, at its end, rather than after every step."""
    import vllm
    from vllm.sampling_params import RequestOutputKind

    output_kind = RequestOutputKind.FINAL_ONLY if final_only else RequestOutputKind.DELTA
    if config.backbone == "gpt2":
        # Turbo's chain runs in TurboLogitsProcessor; vLLM only draws from its result (or takes the argmax).
        return vllm.SamplingParams(
            temperature=0.0 if params.greedy else 1.0,
            seed=params.seed,
            max_tokens=params.max_new_tokens,
            min_tokens=min_tokens,
            stop_token_ids=[config.stop_speech_token],
            extra_args={
                TEMPERATURE: float(params.temperature), TOP_K: int(params.top_k), TOP_P: float(params.top_p),
                REPETITION_PENALTY: float(params.repetition_penalty),
            },
            output_kind=output_kind,
            detokenize=False,
        )  # fmt: skip
    return vllm.SamplingParams(
        temperature=float(params.temperature),
        top_p=float(params.top_p),
        top_k=int(params.top_k),
        min_p=float(params.min_p),
        seed=params.seed,
        max_tokens=params.max_new_tokens,
        min_tokens=min_tokens,
        stop_token_ids=[config.stop_speech_token],
        repetition_penalty=1.0,  # T3's own penalty runs in CFGLogitsProcessor
        extra_args={CFG_WEIGHT: float(params.cfg_weight), REPETITION_PENALTY: float(params.repetition_penalty)},
        output_kind=output_kind,
        detokenize=False,
    )


class VLLMT3Engine:
    """T3 decoding in vLLM. `prefix_model` is T3 on the torch side, used only to build prompt embeddings."""

    name = "vllm"
    concurrent = True  # vLLM batches concurrent requests

    def __init__(self, prefix_model: T3, t3_weights: Path, options: VLLMOptions):
        _prepare_process_environment()
        plugin.register()
        from vllm.engine.arg_utils import AsyncEngineArgs

        self.prefix_model = prefix_model
        self.config: T3Config = prefix_model.config
        self.device = prefix_model.device
        if options.whole_prefills is None:
            options = dataclasses.replace(options, whole_prefills=self.device.type == "cpu")
        self.options = options
        model_dir = prepare_model_dir(t3_weights, self.config, options.cache_dir)
        self._args = AsyncEngineArgs(**engine_kwargs(model_dir, options, self.config))
        self._ids = itertools.count()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="chatterbox-vllm-engine", daemon=True)
        self._thread.start()
        self.llm: Any = self._call(self._start())
        self.dtype = self._model_dtype()
        log.info("T3 engine: vLLM (max_num_seqs=%d, max_model_len=%d)", options.max_num_seqs, options.max_model_len)

    async def _start(self) -> Any:
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(self._args)

    def _model_dtype(self) -> torch.dtype:
        dtype = self.llm.model_config.dtype
        return dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype))

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    # ------------------------------------------------------------------------------------------ requests
    def prompt_embeds(self, text_tokens: torch.Tensor, cond: T3Cond, params: SamplingParams) -> torch.Tensor:
        """[L, 2 * hidden]: the conditional prefix beside the unconditional one (itself again without CFG); GPT-2 T3:
        [L, hidden], its one row."""
        if self.config.backbone == "gpt2":
            with torch.inference_mode():
                rows = self.prefix_model.prefill_embeds(cond.to(self.device), text_tokens, cfg=False)
            return rows[0].to(device="cpu", dtype=self.dtype)
        with torch.inference_mode():
            rows = self.prefix_model.prefill_embeds(cond.to(self.device), text_tokens, cfg=params.uses_cfg)
        uncond = rows[1] if rows.shape[0] == 2 else rows[0]
        return torch.cat((rows[0], uncond), dim=-1).to(device="cpu", dtype=self.dtype)

    def _sampling_params(self, params: SamplingParams, *, final_only: bool = False) -> Any:
        return vllm_sampling_params(params, self.config, final_only=final_only)

    def _check(self, text_tokens: torch.Tensor, cond: T3Cond, params: SamplingParams) -> torch.Tensor:
        tokens = check_text_tokens(text_tokens, self.config).to(self.device)
        prompt = prompt_length(self.config, cond, tokens.numel())
        limit = speech_token_limit(self.config, prompt)
        if params.max_new_tokens > limit:
            raise ValueError(f"max_new_tokens={params.max_new_tokens} exceeds T3's position table ({limit} left)")
        if prompt + params.max_new_tokens > self.options.max_model_len:
            raise ValueError(
                f"prompt ({prompt} embeddings) + max_new_tokens ({params.max_new_tokens}) exceeds the engine's "
                f"max_model_len ({self.options.max_model_len}); shorten the text or raise CHATTERBOX_MAX_MODEL_LEN"
            )
        return tokens

    async def _produce(self, request_id: str, embeds: torch.Tensor, sampling: Any, emit: Any) -> None:
        """Runs on the engine loop: feeds each new token to `emit`, then `TOKENS_DONE` (or the exception)."""
        stop = self.config.stop_speech_token
        try:
            async for output in self.llm.generate({"prompt_embeds": embeds}, sampling, request_id):
                for token in output.outputs[0].token_ids:
                    if token != stop:
                        emit(int(token))
            emit(TOKENS_DONE)
        except asyncio.CancelledError:
            emit(TOKENS_DONE)  # AsyncLLM.generate aborted the request on its way out
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, who re-raises it
            emit(exc)

    def _submit(
        self, text_tokens: torch.Tensor, cond: T3Cond, params: SamplingParams, emit: Any, *, final_only: bool = False
    ) -> Future:
        tokens = self._check(text_tokens, cond, params)
        embeds = self.prompt_embeds(tokens, cond, params)
        request_id = f"t3-{next(self._ids)}-{uuid.uuid4().hex[:8]}"
        return asyncio.run_coroutine_threadsafe(
            self._produce(request_id, embeds, self._sampling_params(params, final_only=final_only), emit), self._loop
        )

    def stream(self, text_tokens: torch.Tensor, cond: T3Cond, params: SamplingParams) -> Iterator[int]:
        """Tokens as they are sampled (synchronous). Closing the iterator early aborts the request."""
        box: queue.Queue = queue.Queue()
        future = self._submit(text_tokens, cond, params, box.put)
        return self._drain_sync(box, future)

    @staticmethod
    def _drain_sync(box: queue.Queue, future: Future) -> Iterator[int]:
        try:
            while True:
                item = box.get()
                if item is TOKENS_DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            future.cancel()

    def generate(self, text_tokens: torch.Tensor, cond: T3Cond, params: SamplingParams) -> list[int]:
        return list(self.stream(text_tokens, cond, params))

    async def stream_async(self, text_tokens: torch.Tensor, cond: T3Cond, params: SamplingParams) -> AsyncIterator[int]:
        """Tokens as they are sampled, for a caller on any event loop. Closing it early aborts the request."""
        loop = asyncio.get_running_loop()
        box: asyncio.Queue = asyncio.Queue()

        def emit(item: Any) -> None:  # on the engine's thread
            with contextlib.suppress(RuntimeError):  # the caller's loop is gone (a consumer that was dropped)
                loop.call_soon_threadsafe(box.put_nowait, item)

        future = self._submit(text_tokens, cond, params, emit)
        try:
            async for token in drain_tokens(box):
                yield token
        finally:
            future.cancel()

    async def generate_async(self, text_tokens: torch.Tensor, cond: T3Cond, params: SamplingParams) -> list[int]:
        """All of a request's tokens at once, for a caller on any event loop that needs no token early: vLLM
        delivers them once (FINAL_ONLY) and the caller's loop wakes once per request, where token by token 64
        streams wake both loops ~10,000 times a second, each wake-up holding the GIL that S3Gen's thread needs to
        launch its kernels.
        Cancelling the caller aborts the request."""
        loop = asyncio.get_running_loop()
        result: asyncio.Future[list[int]] = loop.create_future()
        tokens: list[int] = []

        def settle(outcome: list[int] | BaseException) -> None:
            if result.done():  # the caller was cancelled
                return
            if isinstance(outcome, BaseException):
                result.set_exception(outcome)
            else:
                result.set_result(outcome)

        def emit(item: Any) -> None:  # on the engine's thread
            if item is TOKENS_DONE or isinstance(item, BaseException):
                outcome: list[int] | BaseException = item if isinstance(item, BaseException) else tokens
                with contextlib.suppress(RuntimeError):  # the caller's loop is gone: nobody waits
                    loop.call_soon_threadsafe(settle, outcome)
            else:
                tokens.append(item)

        future = self._submit(text_tokens, cond, params, emit, final_only=True)
        try:
            return await result
        finally:
            future.cancel()

    # ------------------------------------------------------------------------------------------- state
    def num_unfinished_requests(self) -> int:
        """Requests vLLM still holds (queued or decoding); 0 once the engine is shut down."""
        llm = self.llm
        return 0 if llm is None else int(llm.output_processor.get_num_unfinished_requests())

    def shutdown(self) -> None:
        """Stop the engine core process and the engine loop. Safe to call twice."""
        if self.llm is None:
            return
        llm, self.llm = self.llm, None

        async def _cancel_pending() -> None:
            # AsyncLLM's output handler first: stopping the engine core under it makes it log a dead engine.
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self._call(_cancel_pending())
            llm.shutdown()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()
