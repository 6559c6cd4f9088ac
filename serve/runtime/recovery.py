"""Surviving Triton's crash on a multi-model endpoint.

Triton 2.51 can die (SIGSEGV) while loads and unloads of different models run
at once; one crash would take every model of the endpoint down with it, and
SageMaker would replace the instance only after its pings failed. Instead the
supervisor (serve/runtime/server.py) starts Triton again with the same
command, and the registry loads again every model it held
(`ModelRegistry.restore`). Meanwhile /ping answers 200 (Phase.RECOVERING),
loads answer 503 (try again), and an invocation of a model not yet back is
refused; the other models answer as soon as they are.

A crash loop is not survived: past SERVE_TRITON_RESTARTS crashes in
RESTART_WINDOW_SECONDS, serve stops as it does on a single-model endpoint
(where the one model is the endpoint, and a model that crashed Triton would
crash it again).
"""

from __future__ import annotations

import collections
import logging
import signal
import threading
import time
from collections.abc import Callable

from serve.control.state import Phase, ServerState
from serve.multi_model.registry import ModelRegistry
from serve.runtime.processes import ManagedProcess
from serve.triton.client import LIVE_PATH, TritonClient

log = logging.getLogger(__name__)

RESTART_WINDOW_SECONDS = 600.0
# Triton in explicit model control answers its health check before any model
# loads, within seconds; one that does not is killed and counts as a crash.
LIVE_WITHIN_SECONDS = 120.0
_POLL_SECONDS = 0.2


class TritonRecovery:
    """Starts Triton again after a crash, and has the registry load its models again."""

    def __init__(
        self,
        start: Callable[[], ManagedProcess],
        registry: ModelRegistry,
        triton: TritonClient,
        state: ServerState,
        allowed: int,
    ):
        """`start` starts Triton (the command the first one ran); `allowed`: crashes
        survived in RESTART_WINDOW_SECONDS (SERVE_TRITON_RESTARTS)."""
        self._start = start
        self._registry = registry
        self._triton = triton
        self._state = state
        self._allowed = allowed
        self._crashes: collections.deque[float] = collections.deque()

    def replace(self, crashed: ManagedProcess) -> ManagedProcess | None:
        """A new Triton for one that exited on its own; None past the allowed crashes."""
        now = time.monotonic()
        while self._crashes and self._crashes[0] < now - RESTART_WINDOW_SECONDS:
            self._crashes.popleft()
        if len(self._crashes) >= self._allowed:
            log.error(
                "Triton crashed %d time(s) in %.0f s, more than SERVE_TRITON_RESTARTS=%d "
                "allows; stopping",
                len(self._crashes) + 1,
                RESTART_WINDOW_SECONDS,
                self._allowed,
            )
            return None
        self._crashes.append(now)
        held = self._registry.names()
        log.error(
            "%s; starting it again (crash %d of %d allowed in %.0f s, SERVE_TRITON_RESTARTS) "
            "and loading again the %d model(s) it held: %s",
            crashed.describe_exit(),
            len(self._crashes),
            self._allowed,
            RESTART_WINDOW_SECONDS,
            len(held),
            ", ".join(held) or "none",
        )
        self._state.set(
            Phase.RECOVERING,
            f"{crashed.exit_summary()}; Triton is starting again and loading the models it held",
        )
        triton = self._start()
        threading.Thread(
            target=self._reload, args=(triton,), name="triton-recovery", daemon=True
        ).start()
        return triton

    def _reload(self, triton: ManagedProcess) -> None:
        """Once the new Triton answers, load the registry's models into it."""
        started = time.monotonic()
        while not self._triton.is_ready(LIVE_PATH):
            if triton.poll() is not None:
                return  # crashed again: the supervisor decides
            if time.monotonic() - started > LIVE_WITHIN_SECONDS:
                log.error(
                    "the restarted Triton did not answer its health check within %.0f s; "
                    "killing it",
                    LIVE_WITHIN_SECONDS,
                )
                triton.signal(signal.SIGKILL)
                return
            time.sleep(_POLL_SECONDS)
        restored, dropped = self._registry.restore(alive=lambda: triton.poll() is None)
        if triton.poll() is not None or not self._state.change(
            Phase.RECOVERING, Phase.READY, "serving"
        ):
            return  # crashed again, or serve is stopping
        log.info(
            "Triton is back after %.1f s with %d model(s) loaded again%s",
            time.monotonic() - started,
            len(restored),
            f"; {len(dropped)} failed and were unloaded: {', '.join(dropped)}" if dropped else "",
        )
