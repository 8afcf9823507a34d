"""A pytest plugin for heavy resources several test modules share (a vLLM engine, a server process): made when
the first module needs one, closed as soon as the last module that uses it has run.

A session-scoped fixture would keep each of them alive to the end of the suite; worse, one imported into several
modules (`from helpers import fixture`) is a separate fixture in each, so every importing module made its own copy
and kept it. A clean-clone CI run then held seven idle vLLM engines and a two-engine server beside the last half
of the suite, slow enough for a server start to time out. A lease is taken by a module-scoped fixture:

    @pytest.fixture(scope="module")
    def english_tts(request):
        with lease(request, "english_tts", make_engine) as tts:
            yield tts

`make_engine` is a context manager factory; it is entered once, and exited after the last module (in the order
the session runs them) whose tests use the fixture, or at the end of the session if a run ends early.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

_users: dict[str, set[str]] = {}  # fixture name -> node ids of the modules that use it and have not finished
_open: dict[str, tuple[Any, contextlib.ExitStack]] = {}


def pytest_collection_finish(session: pytest.Session) -> None:
    """Which modules of this run (after -k/-m selection) use each fixture."""
    _users.clear()
    for item in session.items:
        module = item.getparent(pytest.Module)
        if module is None:
            continue
        for name in item.fixturenames:
            _users.setdefault(name, set()).add(module.nodeid)


def pytest_sessionfinish(session: pytest.Session) -> None:
    for name in list(_open):
        _close(name)


def _close(name: str) -> None:
    _, stack = _open.pop(name)
    stack.close()


@contextlib.contextmanager
def lease(request: pytest.FixtureRequest, name: str, factory: Callable[[], contextlib.AbstractContextManager]) -> Iterator[Any]:
    """The shared resource `name` for this module (made by entering `factory()` if none is open); released when
    the module is done, and closed if no later module of the run uses it."""
    if name not in _open:
        stack = contextlib.ExitStack()
        try:
            value = stack.enter_context(factory())
        except BaseException:
            stack.close()
            raise
        _open[name] = (value, stack)
    try:
        yield _open[name][0]
    finally:
        users = _users.get(name)
        if users is not None:
            users.discard(request.node.nodeid)
            if not users and name in _open:
                _close(name)
