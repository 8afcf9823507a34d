"""Loading the served models and what they share: each one's registry entry from the settings, the VRAM plan that
fits them on one GPU, the loading (one after another, the default first, in the background while the port is open),
the synthesizer built around each loaded model, and the request places, voices and engine gauge common to all.

Owns the models' start and end (`ModelLoader.load`, `serve`, `close`); does not answer requests (the routes and
`speech_job.py` do) nor decide which model a request names (`registry.py`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import torch

from ..checkpoint.hub import variants_of
from ..checkpoint.weights import CheckpointError
from ..conditioning_store import ConditioningStore
from ..placement import resolve_placement
from ..settings import Settings
from ..start_notices import route_transformers_logs
from ..tts import ChatterboxTTS, settings_device
from ..vram_plan import check_devices, model_need, plan_devices, plan_t3_budgets
from .admission import Admission
from .errors import describe_failure, log_failure
from .metrics import T3_IN_ENGINE, VOICE_CONDITIONING
from .registry import LoadedModel, ModelRegistry, ServedModel, served_id
from .s3gen_beside import S3GenBeside, start_facts, start_order
from .startup import loading_line, phases_text, ready_line
from .synthesis import Synthesizer
from .voices import VoiceLibrary

log = logging.getLogger(__name__)


def model_states(settings: Settings) -> list[ServedModel]:
    """One state per model the settings name, its variant known before anything loads. A name that is no model
    (or a second model of a variant already named) is a failed state with the reason, so the server still starts
    and says why."""
    states: list[ServedModel] = []
    for name, variant in zip(settings.models, variants_of(settings.models), strict=True):
        if isinstance(variant, CheckpointError):
            states.append(ServedModel(model=name, error=describe_failure(variant)))
        else:
            states.append(ServedModel(model=name, variant=variant))
    return states


def _variant(state: ServedModel) -> str:
    """A loading model's variant: known from its name or directory before it loads (else it failed already)."""
    if state.variant is None:
        raise ValueError(f"the model {state.model!r} has no known variant")
    return state.variant


def vram_plan(settings: Settings, states: list[ServedModel]) -> list[float | None]:
    """Each model's T3 budget when several share a GPU (None: its preset's, as for one model alone). Stages placed
    on several GPUs (or several S3Gen workers) are checked GPU by GPU first (`check_placement`)."""
    loading = [state for state in states if state.status == "loading"]
    device = settings_device(settings)
    check_placement(settings, loading)
    if len(loading) < 2 or device.type != "cuda":
        return [None] * len(states)
    limits = settings.limits()
    if settings.vram_budget_gib is not None:
        budget = settings.vram_budget_gib
    else:
        budget = torch.cuda.mem_get_info(device)[0] / 2**30
    needs = [model_need(state.model, _variant(state), settings.preset, limits.max_model_len,
                        settings.s3gen_layout_on(device.type))
             for state in loading]  # fmt: skip
    shares = iter(plan_t3_budgets(needs, limits, budget, t3_budget_explicit=settings.gpu_memory_gib is not None))
    budgets = [next(shares) if state.status == "loading" else None for state in states]
    share = next(b for b in budgets if b is not None)
    log.info("VRAM plan: %d models in %.2f GiB; each T3 gets %.2f GiB (the %s preset's: %g)",
             len(loading), budget, share, settings.preset, limits.gpu_memory_gib)  # fmt: skip
    return budgets


def check_placement(settings: Settings, loading: list[ServedModel]) -> None:
    """Resolve the placement (PlacementError for a device that is not visible) and, where it spreads over GPUs or
    runs several S3Gen workers, check what each GPU must hold against its free memory (VRAMPlanError, with the
    figures; `vram_budget_gib` stands for T3's GPU)."""
    placement = resolve_placement(settings)
    spread = placement.s3gen_devices != (placement.t3_device,) or settings.t3_data_parallel_size > 1
    if not loading or not spread or not placement.gpus():
        return
    limits = settings.limits()
    layout = settings.s3gen_layout_on(placement.t3_device.type)
    needs = [model_need(state.model, _variant(state), settings.preset, limits.max_model_len, layout)
             for state in loading]  # fmt: skip
    devices = plan_devices(placement, needs, [limits.gpu_memory_gib] * len(needs), layout=layout,
                           t3_engines=settings.t3_data_parallel_size)  # fmt: skip
    free = {name: torch.cuda.mem_get_info(torch.device(name))[0] / 2**30 for name in devices}
    if settings.vram_budget_gib is not None and str(placement.t3_device) in free:
        free[str(placement.t3_device)] = settings.vram_budget_gib
    check_devices(devices, free)
    log.info("placement: %s; per GPU: %s", placement.describe(),
             "; ".join(f"{need.device} {need.describe()}" for need in devices.values()))  # fmt: skip


class ModelLoader:
    """Loads the registry's models and holds what they share: the request places, the voices, and the engines'
    gauge."""

    def __init__(self, settings: Settings, served: ModelRegistry) -> None:
        self.settings = settings
        self.served = served
        self.admission = Admission(settings.max_queue)
        self._voices: VoiceLibrary | None = None
        self._created = time.monotonic()  # the server's start, as far as its models' start-up times count
        T3_IN_ENGINE.set_function(self._requests_in_engines)
        for index, state in enumerate(served.states):  # what /health says until each load reports its stages
            if state.status == "loading":
                state.stage = "waiting for the models before it" if index else "starting"

    def voices(self) -> VoiceLibrary:
        """One library over the voices directory for every model (it lists the language voices when any model is
        multilingual; a model that does not speak a language refuses its voice)."""
        if self._voices is None:
            self._voices = VoiceLibrary(
                self.voices_dir,
                multilingual=any(s.family is not None and s.family.multilingual for s in self.served.states),
                max_upload_bytes=self.settings.max_upload_bytes,
            )
        return self._voices

    @property
    def voices_dir(self) -> Path:
        """The directory cloned voices live in (CHATTERBOX_VOICES_DIR, else the user data directory's)."""
        return self.settings.resolved_voices_dir()

    def open_voices(self) -> VoiceLibrary:
        """The library, its directory created (at start: uploads work without any setting)."""
        library = self.voices()
        library.create_directory()
        if library.unwritable is None:
            log.info("voices directory: %s", library.directory)
        return library

    def serve(self, state: ServedModel, tts: ChatterboxTTS, beside: S3GenBeside | None = None) -> None:
        """Build what requests use around a loaded model (taking over the S3Gen process started `beside` its T3
        engine), then mark its state ready once S3Gen's and voice analysis's warm-ups are done."""
        state.stage = "warming up S3Gen"
        voices = self.voices()
        store = None
        if voices.directory is not None and tts.conditioning_fingerprint is not None:
            store = ConditioningStore(voices.directory, tts.variant, tts.conditioning_fingerprint)
        synthesizer = Synthesizer(tts, self.settings, self.admission, store,
                                  language_advice=self.served.language_advice, beside=beside)  # fmt: skip
        try:
            # ready means a request runs at once, not behind S3Gen's compile and graph capture
            synthesizer.wait_warm_up()
        except BaseException:
            synthesizer.close()  # its S3Gen thread, or process, goes with the failed start
            raise
        state.ready_after_s = time.monotonic() - self._created
        log.debug("%s ready after %.1f s: %s", state.describe(), state.ready_after_s, phases_text(tts.startup_phases))
        for source in ("memory", "stored", "computed"):  # each series from 0, so /metrics lists them from the start
            VOICE_CONDITIONING.labels(model=synthesizer.model_id, source=source)
        state.loaded = LoadedModel(synthesizer.model_id, tts, synthesizer, voices)
        state.stage = None

    def s3gen_beside(self, state: ServedModel, budget: float | None) -> S3GenBeside | None:
        """What starts beside the model's T3 engine (its S3Gen process, voice analysis's warm-up), or None: after the
        engine, as `s3gen_beside.start_order` decides for this host, with the reason logged. Either way /health
        says loading until both are done (`serve` waits for the warm-ups)."""
        variant = _variant(state)
        t3_budget = budget if budget is not None else self.settings.limits().gpu_memory_gib
        order = start_order(self.settings, variant, t3_budget, start_facts(self.settings))
        if not order.beside:
            log.info("%s: S3Gen starts after the T3 engine: %s", state.describe(), order.reason)
            return None
        return S3GenBeside(self.settings, served_id(variant), order)

    def announce_ready(self) -> None:
        """The one line that says the server serves, once every model has loaded or failed (failures were logged
        as errors, each in its own line)."""
        line = ready_line(self.settings, self.served)
        if line is not None:
            log.info("%s", line)

    def _requests_in_engines(self) -> float:
        return float(sum(loaded.tts.engine.num_unfinished_requests() for loaded in self.served.loaded()))

    async def load(self) -> None:
        """Load every model in turn (the default first), each within its share of the GPU; a model that fails is
        reported by its state and the others still serve."""
        states = self.served.states
        log.info("%s", loading_line(self.settings, self.served, str(settings_device(self.settings))))
        # transformers is imported with the models (a second's import, kept off the port's opening): its records
        # join the log's handler from here on.
        await asyncio.to_thread(route_transformers_logs)
        try:
            budgets = await asyncio.to_thread(vram_plan, self.settings, states)
        except Exception as exc:
            for state in states:
                if state.status == "loading":
                    state.fail(describe_failure(exc))
            log_failure("the models do not fit the GPU; the server stays up and answers 503", exc)
            return
        for state, budget in zip(states, budgets, strict=True):
            if state.status != "loading":
                log.error("model %s not loaded: %s", state.model, state.error)
                continue
            state.t3_budget_gib = budget
            model: ChatterboxTTS | None = None
            beside: S3GenBeside | None = None

            def progress(stage: str, state: ServedModel = state) -> None:
                state.stage = stage

            try:
                beside = await asyncio.to_thread(self.s3gen_beside, state, budget)
                model = await asyncio.to_thread(
                    ChatterboxTTS.from_settings, self.settings, model=state.model, gpu_memory_gib=budget,
                    progress=progress, beside_engine=beside,
                )  # fmt: skip
                await asyncio.to_thread(self.serve, state, model, beside)
            except Exception as exc:
                if beside is not None:
                    beside.close()  # its S3Gen process, unless the synthesizer took it over (and stopped it)
                if model is not None:
                    model.close()
                state.fail(describe_failure(exc))
                log_failure(f"the model {state.describe()} failed to load; the server stays up and answers 503", exc)
        self.announce_ready()

    def close(self, owned: bool) -> None:
        """Stop each synthesizer's S3Gen worker; close the models too when this loader loaded them (`owned`)."""
        for loaded in self.served.loaded():
            loaded.synthesizer.close()
            if owned:
                loaded.tts.close()
