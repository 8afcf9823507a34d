"""The expected start notices are dropped narrowly (by logger and message), and the ready line's URLs reach the
server. The whole start is tested as users run it in tests/server/test_clean_start.py."""

from __future__ import annotations

import logging

import pytest

from chatterbox_vllm.server.startup import base_url
from chatterbox_vllm.start_notices import EXPECTED, ExpectedNotices


def record(logger: str, message: str, *args: object, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord(logger, level, __file__, 1, message, args, None)


@pytest.mark.parametrize(
    ("logger", "message", "args"),
    [
        ("vllm.engine.arg_utils", "This model does not officially support disabling chunked prefill. Disabling this "
         "manually may cause the engine to crash or produce incorrect outputs.", ()),
        ("vllm.renderers.base", "Using None for EOS token id because tokenizer is not initialized", ()),
        ("transformers.modeling_rope_utils",
         "Unrecognized keys in `rope_parameters` for 'rope_type'='default': {'mrope_section'}", ()),
        ("vllm.v1.worker.cpu_worker", "%s is not found in LD_PRELOAD. For best performance, ...", ("libtcmalloc",)),
        ("uvicorn.error", "Uvicorn running on %s://%s:%d (Press CTRL+C to quit)", ("http", "0.0.0.0", 8000)),
        ("py.warnings", "/x/vllm/triton_utils/dispatcher.py:138: FutureWarning: `torch.distributed.reduce_op` is "
         "deprecated, please use `torch.distributed.ReduceOp` instead\n", ()),
    ],
)  # fmt: skip
def test_expected_notices_are_dropped(logger: str, message: str, args: tuple) -> None:
    assert not ExpectedNotices().filter(record(logger, message, *args))


@pytest.mark.parametrize(
    ("logger", "message"),
    [
        # the same loggers saying something else
        ("vllm.engine.arg_utils", "This model does not support something new."),
        ("transformers.modeling_rope_utils", "Unrecognized keys in `rope_parameters` for 'rope_type'='default': "
         "{'mrope_section', 'factor'}"),
        ("uvicorn.error", "[Errno 98] error while attempting to bind on address ('0.0.0.0', 8000): address in use"),
        ("py.warnings", "/x/y.py:1: FutureWarning: something else is deprecated"),
        # the same message from another logger
        ("chatterbox_vllm.server.model_loader", "Using None for EOS token id because tokenizer is not initialized"),
        ("vllm.engine.arg_utilsx", "This model does not officially support disabling chunked prefill."),
    ],
)  # fmt: skip
def test_anything_else_passes(logger: str, message: str) -> None:
    assert ExpectedNotices().filter(record(logger, message))


def test_every_notice_says_why() -> None:
    assert all(notice.why for notice in EXPECTED)


@pytest.mark.parametrize(
    ("host", "url"),
    [("0.0.0.0", "http://localhost:8000"), ("::", "http://localhost:8000"), ("127.0.0.1", "http://127.0.0.1:8000"),
     ("::1", "http://[::1]:8000"), ("tts.example.org", "http://tts.example.org:8000")],
)  # fmt: skip
def test_the_ready_lines_url_is_reachable_from_this_machine(host: str, url: str) -> None:
    assert base_url(host, 8000) == url
