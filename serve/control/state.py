"""What phase `serve` is in, shared by the supervisor and the control app."""

from __future__ import annotations

import enum
import threading

# The longest the supervisor (serve/runtime/server.py, which polls every 0.1 s) takes
# to see that a child died, with room for a busy host.
NOTICE_SECONDS = 0.5


class Phase(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    # Triton crashed on a multi-model endpoint and is being started again
    # (serve/runtime/recovery.py): the endpoint is healthy and comes back by itself.
    RECOVERING = "recovering"
    STOPPING = "stopping"
    FAILED = "failed"


class ServerState:
    """Thread-safe phase plus the reason a person would want to read."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._phase = Phase.STARTING
        self._reason = "loading models"

    def set(self, phase: Phase, reason: str) -> None:
        with self._changed:
            # A failure is final: a later stop must not hide why.
            if self._phase is not Phase.FAILED:
                self._put(phase, reason)

    def change(self, current: Phase, phase: Phase, reason: str) -> bool:
        """Set `phase` only while the phase is `current` (a stop or failure meanwhile stays)."""
        with self._changed:
            if self._phase is not current:
                return False
            self._put(phase, reason)
            return True

    def _put(self, phase: Phase, reason: str) -> None:
        self._phase, self._reason = phase, reason
        self._changed.notify_all()

    def snapshot(self) -> tuple[Phase, str]:
        with self._changed:
            return self._phase, self._reason

    def after(self, phase: Phase, timeout: float) -> tuple[Phase, str]:
        """The phase once it is no longer `phase`, or after `timeout` seconds if it stays."""
        with self._changed:
            self._changed.wait_for(lambda: self._phase is not phase, timeout)
            return self._phase, self._reason
