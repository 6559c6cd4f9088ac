"""What phase `serve` is in, shared by the supervisor and the control app."""

from __future__ import annotations

import enum
import threading


class Phase(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"


class ServerState:
    """Thread-safe phase plus the reason a person would want to read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phase = Phase.STARTING
        self._reason = "loading models"

    def set(self, phase: Phase, reason: str) -> None:
        with self._lock:
            # A failure is final: a later stop must not hide why.
            if self._phase is not Phase.FAILED:
                self._phase, self._reason = phase, reason

    def snapshot(self) -> tuple[Phase, str]:
        with self._lock:
            return self._phase, self._reason
