"""Logging of the server and the CLI: one line per record, tracebacks only at DEBUG.

A traceback in a log shipped to a shared system can carry request data and internals; at INFO and above an error
is logged as its type and message (`OneLineFormatter`). vLLM, transformers, uvicorn and Python's warnings log
through the same root handler, so their records follow the same rule, and so do the processes the server starts
(vLLM's engine core): they inherit the level and configure themselves the same way when they import this package.
Above DEBUG the handler drops the third-party notices a normal start prints (`start_notices.py`).
"""

from __future__ import annotations

import logging
import logging.config
import os
from typing import Any

from .start_notices import ExpectedNotices, quiet_native_notices, route_transformers_logs

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Set by `configure_logging` for the processes started after it: they log at this level, in this format.
INHERITED_LEVEL_ENV = "_CHATTERBOX_SERVER_LOG_LEVEL"


class OneLineFormatter(logging.Formatter):
    """Renders an exception as `ExcType: message` on the record's own line unless `with_tracebacks`."""

    def __init__(self, fmt: str = FORMAT, with_tracebacks: bool = False) -> None:
        super().__init__(fmt)
        self.with_tracebacks = with_tracebacks

    def format(self, record: logging.LogRecord) -> str:
        if self.with_tracebacks or not record.exc_info:
            return super().format(record)
        exc = record.exc_info[1]
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            line = super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved
        if exc is not None:
            detail = " ".join(str(exc).split())
            line += f" [{type(exc).__name__}: {detail}]" if detail else f" [{type(exc).__name__}]"
        return line.replace("\n", " | ")


def configure_logging(level: str = "info") -> dict[str, Any]:
    """Route every logger (ours, uvicorn's, vLLM's, Python's warnings) through one root handler, which drops the
    expected start notices above DEBUG; returns the config uvicorn takes as `log_config` so that it does not install
    handlers of its own. Processes started from now on inherit it (`configure_inherited_logging`)."""
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")  # vLLM then propagates to the root handler
    os.environ[INHERITED_LEVEL_ENV] = level
    numeric = getattr(logging, level.upper())
    quiet = numeric > logging.DEBUG
    handler: dict[str, Any] = {"class": "logging.StreamHandler", "formatter": "one_line", "stream": "ext://sys.stderr"}
    if quiet:
        handler["filters"] = ["expected_notices"]
        quiet_native_notices()
    config: dict[str, Any] = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "one_line": {"()": OneLineFormatter, "with_tracebacks": numeric <= logging.DEBUG},
        },
        "filters": {"expected_notices": {"()": ExpectedNotices}},
        "handlers": {"stderr": handler},
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True, "level": level.upper()},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": True},
        },
    }
    logging.config.dictConfig(config)
    logging.captureWarnings(True)  # `warnings.warn` as records of the `py.warnings` logger, in the same format
    return config


def configure_inherited_logging() -> None:
    """In a process the server started (vLLM's engine core imports this package before vLLM), log as the server
    does; elsewhere (the server itself before `configure_logging`, a user's program) do nothing."""
    level = os.environ.get(INHERITED_LEVEL_ENV)
    if level and not logging.getLogger().handlers:
        configure_logging(level)
        route_transformers_logs()
        if level == "info":
            # vLLM's engine core at INFO: its whole config in one line, thread binding, KV cache sizes. Its warnings
            # and errors are what the server's log showed of it before (through Python's last-resort handler);
            # at debug everything shows.
            logging.getLogger("vllm").setLevel(logging.WARNING)
