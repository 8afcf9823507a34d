"""In-process servers of the server tests: the app under uvicorn on a free loopback port, in a thread."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from support.processes import free_port

from chatterbox_vllm.server.app import create_app
from chatterbox_vllm.settings import Settings
from chatterbox_vllm.tts import ChatterboxTTS

# 40 speech tokens a piece: the random model never samples the stop token, so every piece is 39 x 40 ms long.
TOKENS_PER_PIECE = 40
PIECE_SECONDS = (TOKENS_PER_PIECE - 1) * 0.04


@dataclass
class Server:
    url: str
    settings: Settings
    app: object
    server: uvicorn.Server
    thread: threading.Thread


def start_server(settings: Settings, tts: ChatterboxTTS | None, extra: tuple[ChatterboxTTS, ...] = ()) -> Server:
    """uvicorn on a free loopback port: `tts` (and `extra` models beside it) served, or loaded by the app when None."""
    port = free_port()
    app = create_app(settings, tts=tts, extra=extra)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.05)
    return Server(f"http://127.0.0.1:{port}", settings, app, server, thread)


def stop_server(server: Server) -> None:
    server.server.should_exit = True
    server.thread.join(timeout=30)


def make_settings(tmp_path: Path, **overrides) -> Settings:
    # jobs' data beside the test's directory, not in it (tests check that nothing but voices/ appears there), and
    # never the session's shared user data directory, where another test's server would resume the jobs
    values = {"model": "english", "max_new_tokens": TOKENS_PER_PIECE, "voices_dir": str(tmp_path / "voices"),
              "data_dir": str(tmp_path.with_name(f"{tmp_path.name}-data"))}  # fmt: skip
    values.update(overrides)
    return Settings(**values)
