"""The control app's server thread: stopped at any moment, it ends without a traceback."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from serve.runtime.server import ControlServer


def empty_app(environ: dict, start_response: Callable[..., object]) -> Iterable[bytes]:
    start_response("200 OK", [])
    return [b""]


def test_a_stop_right_after_the_start_leaves_no_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """serve stops at once when a setting is wrong; waitress's loop then lost its socket
    under it (EBADF) and printed a traceback, about one stop in three."""
    failures: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: failures.append(args.exc_value))
    for attempt in range(30):
        server = ControlServer(empty_app, tmp_path / f"control-{attempt}.sock")
        server.start()
        server.stop()
        time.sleep(0.02)
    time.sleep(0.2)
    assert failures == []
