"""Lines other libraries print on every normal start that a user can do nothing about, kept out of the log.

A clean start says one thing at INFO: when the server is ready (`server/startup.py`). vLLM, transformers, torch and
uvicorn say more on the way: notices about settings this project makes on purpose, CPU tuning hints, and uvicorn's
"running" lines, printed while the models are still loading. Each one is named here with the reason it is expected;
`ExpectedNotices` drops exactly those records, matched by logger and message, so anything new or unexpected from
the same libraries still shows. At `--log-level debug` nothing is dropped (`log_config.configure_logging`).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Notice:
    """Records of `logger` (or a logger under it) whose message matches `pattern` (searched), and why they are
    expected."""

    logger: str
    pattern: str
    why: str

    def matches(self, record: logging.LogRecord) -> bool:
        name = record.name
        if name != self.logger and not name.startswith(self.logger + "."):
            return False
        return re.search(self.pattern, record.getMessage()) is not None


EXPECTED: tuple[Notice, ...] = (
    Notice(
        "uvicorn.error",
        r"^(Started server process|Waiting for application startup|Application startup complete"
        r"|Uvicorn running on)",
        "the port opens before the models load: these would say the server runs while "
        "/health still answers 503; the ready line says when it serves",
    ),
    Notice(
        "vllm.engine.arg_utils",
        r"^This model does not officially support disabling chunked prefill",
        "on CPU prompts are prefilled whole on purpose (VLLMOptions.whole_prefills)",
    ),
    Notice(
        "vllm.renderers.base",
        r"^Using None for (EOS|BOS) token id because tokenizer is not initialized",
        "T3 has no text tokenizer in vLLM (its prompts are embeddings); requests stop on stop_token_ids",
    ),
    Notice(
        "vllm.v1.engine.input_processor",
        r"^Passing raw prompts to InputProcessor is deprecated",
        "T3's prompts are embeddings, passed the one way every vLLM from 0.26 to 0.33 takes them",
    ),
    Notice(
        "transformers.modeling_rope_utils",
        r"^Unrecognized keys in `rope_parameters` for 'rope_type'='default': "
        r"\{'mrope_section'\}$",
        "T3's vLLM config sets mrope_section to reach vLLM's M-RoPE positions "
        "(engine/vllm_t3/model_dir.py); transformers reads the config three times in each of two processes",
    ),
    Notice(
        "vllm.config.vllm",
        r"^Inductor compilation was disabled by user settings",
        "vLLM's CPU build (and the low preset's enforce_eager) compiles T3 without Inductor, as chosen",
    ),
    Notice(
        "vllm.triton_utils.importing",
        r"^Triton is installed, but doesn't include CPU backend",
        "vLLM's CPU build runs without Triton (xgrammar installs the GPU one beside it)",
    ),
    Notice("vllm.platforms.cpu", r"^Triton is not installed\. triton-cpu is expected", "as above"),
    Notice("vllm.platforms.cpu", r"^Reset SSM cache type to float32", "T3 has no SSM (Mamba) layers"),
    Notice(
        "vllm.v1.worker.cpu_worker",
        r"^(libtcmalloc|libiomp) is not found in LD_PRELOAD",
        "a CPU tuning hint for vLLM's own deployments; the server runs correctly without the preload",
    ),
    Notice(
        "py.warnings",
        r"FutureWarning: `torch\.distributed\.reduce_op` is deprecated",
        "vLLM's Triton dispatcher looks at every attribute of torch.distributed, this deprecated one too",
    ),
)

# vLLM's CPU engine notes its NUMA memory binding from C++ (c10's warning log, which no Python filter reaches):
# "NUMA binding: Using MEMBIND policy ...". The level below applies to processes started after it is set (torch
# reads it when it loads), which in the server are vLLM's engine processes.
TORCH_CPP_LOG_LEVEL = "ERROR"


class ExpectedNotices(logging.Filter):
    """Drops the records `EXPECTED` names; passes every other record."""

    def __init__(self, notices: tuple[Notice, ...] = EXPECTED) -> None:
        super().__init__()
        self.notices = notices

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(notice.matches(record) for notice in self.notices)


def quiet_native_notices() -> None:
    """Keeps C++ warning lines of processes started from now on (vLLM's engine core) out of the log, unless the
    user set TORCH_CPP_LOG_LEVEL."""
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", TORCH_CPP_LOG_LEVEL)


def route_transformers_logs() -> None:
    """transformers prints through a handler of its own (`[transformers] ...`, beside the log's format, out of reach
    of its filters); send its records to the root handler like every other library's."""
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:  # pragma: no cover - transformers comes with vLLM; without it there is nothing to route
        return
    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()
