"""Where people wait (an endpoint starting, a transform job, an asynchronous answer).

SageMaker works for minutes between the call that asks and the state that
answers, so every wait is a bounded poll that says what it waits for and for
how long: on a terminal, one line rewritten in place; in a log (stderr not a
terminal, as in CodeBuild), a plain line at each change of state and once a
minute while nothing changes, so a log never fills with a line per poll.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO, TypeVar

from smtriton.errors import SmtritonError

log = logging.getLogger(__name__)

REPORT_EVERY_S = 60.0
_CLEAR_LINE = "\r\x1b[K"
Result = TypeVar("Result")


class StillWaiting(SmtritonError):
    """The wait ran out while SageMaker is still working; the change may yet succeed."""


def format_elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """One wait's reports: `what: status (elapsed)`."""

    def __init__(
        self,
        what: str,
        *,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        interactive: bool | None = None,
    ) -> None:
        self.what = what
        self._stream = stream if stream is not None else sys.stderr
        self._clock = clock
        self._start = self._last_report = clock()
        self._last_status: str | None = None
        self._line_open = False
        if interactive is None:
            isatty = getattr(self._stream, "isatty", None)
            interactive = bool(isatty and isatty())
        # -q turns progress off, as it does every other line on stderr.
        self._enabled = log.isEnabledFor(logging.INFO)
        self._interactive = interactive and self._enabled

    @property
    def elapsed(self) -> float:
        return self._clock() - self._start

    def update(self, status: str) -> None:
        """Report `status`: in place on a terminal; logged when it changes, or a minute on."""
        now = self._clock()
        line = f"{self.what}: {status} ({format_elapsed(now - self._start)})"
        if self._interactive:
            if status != self._last_status and self._line_open:
                self._stream.write("\n")
            self._stream.write(f"{_CLEAR_LINE}smtriton: {line}")
            self._stream.flush()
            self._line_open = True
        elif status != self._last_status or now - self._last_report >= REPORT_EVERY_S:
            log.info("%s", line)
            self._last_report = now
        self._last_status = status

    def finish(self) -> None:
        """End the line in place, so what is printed next starts on a line of its own."""
        if self._line_open:
            self._stream.write("\n")
            self._stream.flush()
            self._line_open = False


def add_wait_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    flag_help: str,
    timeout_s: float,
    poll_s: float,
    flag: str = "--no-wait",
) -> None:
    """`flag` (--no-wait, or --wait where waiting is not the default), --wait-timeout and
    --poll-interval, as every command that waits for SageMaker has them."""
    parser.add_argument(flag, action="store_true", help=flag_help)
    parser.add_argument(
        "--wait-timeout", type=float, default=timeout_s, help="seconds (default: %(default)s)"
    )
    parser.add_argument(
        "--poll-interval", type=float, default=poll_s, help="seconds (default: %(default)s)"
    )


def poll(
    progress: Progress,
    check: Callable[[], tuple[str, Result | None]],
    *,
    timeout_s: float,
    poll_s: float,
    still_waiting: str,
    sleep: Callable[[float], None] = time.sleep,
) -> Result:
    """Call `check` until it returns a result, reporting its status; it raises to fail.

    `check` returns (status to report, result or None while waiting). Past
    `timeout_s` this raises StillWaiting, whose message ends with
    `still_waiting` (how to follow the change, which SageMaker carries on).
    """
    try:
        while True:
            status, result = check()
            progress.update(status)
            if result is not None:
                return result
            if progress.elapsed >= timeout_s:
                raise StillWaiting(
                    f"{progress.what} is still {status} after "
                    f"{format_elapsed(progress.elapsed)}; {still_waiting}"
                )
            sleep(poll_s)
    finally:
        progress.finish()
