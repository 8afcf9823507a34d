"""Logging of the server and the CLI: one line per record, tracebacks only at DEBUG.

A traceback in a log shipped to a shared system can carry request data and internals; at INFO and above an error
is logged as its type and message (`OneLineFormatter`). vLLM and uvicorn log through the same root handler, so
their records follow the same rule.
"""

from __future__ import annotations

import logging
import logging.config
import os
from typing import Any

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


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
    """Route every logger (ours, uvicorn's, vLLM's) through one root handler; returns the config uvicorn takes
    as `log_config` so that it does not install handlers of its own."""
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")  # vLLM then propagates to the root handler
    numeric = getattr(logging, level.upper())
    config: dict[str, Any] = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "one_line": {"()": OneLineFormatter, "with_tracebacks": numeric <= logging.DEBUG},
        },
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "one_line", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True, "level": level.upper()},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": True},
        },
    }
    logging.config.dictConfig(config)
    return config
