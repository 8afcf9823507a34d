"""T3's engine started on a thread of its own while the rest of a checkpoint loads (`loading.load_parts`).

On an H200's warm start the server spent ~8 s loading S3Gen, the voice encoder and the text front end before it
even imported vLLM (~19 s of import and engine arguments), then ~35 s in vLLM's engine core: the engine's start was
the longest path, and nothing else needed it to wait (BENCHMARKS.md note 4). So the engine starts first, on this
thread, and the load joins it at the end. On a GPU, vLLM's engine itself starts that early only where its KV cache
was fixed after checking the GPU's free memory (`loading.waits_for_parts`: the S3Gen process started beside it);
otherwise it imports and prepares meanwhile and starts its engine once the parts are on the GPU (`parts_loaded`),
as before, so that its profile of the device sees them.

An error of the start is raised by `result`, on the loading thread, as it was raised on this one: a load fails
with the engine's own message.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .engine.base import T3Engine


class EngineStart:
    """`build(start)` run on a daemon thread from construction; `result()` waits for its engine or raises its error.
    `build` calls `wait_for_parts` before whatever must see the parts loaded, and sets `kind` once known."""

    def __init__(self, build: Callable[[EngineStart], T3Engine]) -> None:
        self.kind: str | None = None  # "vllm" | "torch", once `build` resolved it
        self.parts_loaded = threading.Event()  # the loading thread's parts are on their device (or failed)
        self.started_at = time.perf_counter()
        self.waited_s = 0.0  # seconds `build` waited for the parts
        self.seconds = 0.0  # from the thread's start to its end
        self._build = build
        self._engine: T3Engine | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="t3-engine-start", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._engine = self._build(self)
        except BaseException as exc:  # noqa: BLE001 - raised again on the loading thread by `result`
            self._error = exc
        finally:
            self.seconds = time.perf_counter() - self.started_at

    def wait_for_parts(self) -> None:
        """Block the build until the loading thread's parts are loaded (see the module's docstring)."""
        waiting = time.perf_counter()
        self.parts_loaded.wait()
        self.waited_s += time.perf_counter() - waiting

    def result(self) -> T3Engine:
        """The started engine, once its thread ends; its error, raised here, if it failed."""
        self.parts_loaded.set()  # nothing waits for parts that will not come
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._engine is not None
        return self._engine

    def abandon(self) -> None:
        """The load failed elsewhere: wait for the start to end and shut down the engine it made, if any (vLLM's
        engine core is a process of its own: it must not outlive the failed load)."""
        self.parts_loaded.set()
        self._thread.join()
        if self._engine is not None:
            self._engine.shutdown()
