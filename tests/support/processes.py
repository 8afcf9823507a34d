"""Server processes started as users start them, on free loopback ports."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server_process(
    args: list[str],
    env: dict[str, str],
    port: int,
    log_path: Path,
    ready_timeout: float = 900,
    while_loading: Callable[[str, httpx.Response], None] | None = None,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start a server process as a user would, wait until /health answers 200, yield its URL and process; stop
    it after (SIGTERM, then SIGKILL after a minute) unless the test already did. `while_loading(url, health)`
    is called for each other answer of /health on the way.
    The bound on the start is generous: a two-engine server took over 5 minutes on a 2-core host loaded by other
    work; the bound only has to catch a server that never comes up.
    """
    url = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log:
        server = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + ready_timeout
            while True:
                assert server.poll() is None, log_path.read_text()[-3000:]
                try:
                    health = httpx.get(f"{url}/health", timeout=2)
                    if health.status_code == 200:
                        break
                    if while_loading is not None:
                        while_loading(url, health)
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(1)
            yield url, server
        finally:
            if server.poll() is None:
                server.terminate()
                try:
                    server.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    server.kill()


@contextlib.contextmanager
def running_server(args: list[str], env: dict[str, str], port: int, log_path: Path) -> Iterator[str]:
    """`server_process`, yielding only the URL."""
    with server_process(args, env, port, log_path) as (url, _):
        yield url
