"""The phase the supervisor and the control app share (serve/control/state.py)."""

from __future__ import annotations

import threading
import time

from serve.control.state import Phase, ServerState


def test_a_recovery_that_ends_during_a_stop_leaves_the_stop() -> None:
    state = ServerState()
    state.set(Phase.RECOVERING, "Triton is starting again")
    assert state.change(Phase.RECOVERING, Phase.READY, "serving")
    assert state.snapshot() == (Phase.READY, "serving")
    state.set(Phase.RECOVERING, "Triton is starting again")
    state.set(Phase.STOPPING, "shutting down")
    assert not state.change(Phase.RECOVERING, Phase.READY, "serving")
    assert state.snapshot() == (Phase.STOPPING, "shutting down")


def test_a_ping_waits_for_the_supervisors_decision_but_not_longer() -> None:
    state = ServerState()
    state.set(Phase.READY, "serving")
    timer = threading.Timer(0.1, state.set, (Phase.RECOVERING, "Triton crashed"))
    timer.start()
    started = time.monotonic()
    assert state.after(Phase.READY, 5) == (Phase.RECOVERING, "Triton crashed")
    assert time.monotonic() - started < 2
    state.set(Phase.READY, "serving")
    started = time.monotonic()
    assert state.after(Phase.READY, 0.2) == (Phase.READY, "serving")
    assert time.monotonic() - started >= 0.2
