"""nginx's access log as the front's request metrics read it, and the thread that follows it.

No Python runs per request. nginx writes one line per request into a
buffered file (`access_log ... buffer=64k flush=1s`: a memcpy on the request
path, one write per 64 KiB), and `AccessLogFollower` reads that file from a
thread of `serve`, in batches. A pipe or a datagram socket would be simpler to
follow, but nginx blocks on a full pipe, and drops datagrams once ten are
queued on a unix socket (net.unix.max_dgram_qlen); a file never stalls nginx
and never loses a line. When the file grows past a size, the follower unlinks
it and asks nginx (SIGUSR1) to reopen its logs, reads the old file to its end,
then goes on with the new one, so the disk holds at most about that size.

Label values are bounded here: routes become templates (`/models/{name}`),
content types lose their parameters, and anything unknown is "other", so a
caller cannot create series at will.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from serve.payloads.formats import FORMATS

log = logging.getLogger(__name__)

# The access log's fields, in order; tab-separated. nginx escapes tabs and
# other control characters inside values (\x09), so a tab always separates.
ACCESS_LOG_FIELDS = (
    "$status",
    "$request_time",
    "$request_method",
    "$request_uri",
    "$content_type",
    "$request_length",
    "$bytes_sent",
)
# As nginx's log_format wants it, inside single quotes (nginx turns \t into a tab).
ACCESS_LOG_FORMAT = "\\t".join(ACCESS_LOG_FIELDS)

# Request content types kept as they are: those a payload format reads
# (serve/payloads/formats.py); any other becomes "other" so a caller cannot
# create series at will.
KNOWN_CONTENT_TYPES = frozenset(FORMATS.request_types())
KNOWN_PREFIXES = tuple(prefix for f in FORMATS for prefix in f.request_prefixes)
KNOWN_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"})


def route_of(request_uri: str, metrics_path: str | None = None) -> str:
    """The route template of a request URI: bounded label values, no model names.

    `metrics_path` is where the public port serves metrics (SERVE_METRICS_PATH).
    """
    path = request_uri.split("?", 1)[0]
    if path in ("/ping", "/invocations", "/models") or path == metrics_path:
        return path
    if path.startswith("/models/"):
        rest = path[len("/models/") :]
        if rest.endswith("/invoke") and "/" not in rest[: -len("/invoke")] and len(rest) > 7:
            return "/models/{name}/invoke"
        if rest and "/" not in rest:
            return "/models/{name}"
    return "other"


def content_type_of(raw: str) -> str:
    """The request's media type without parameters; "none" when absent, "other" if unknown."""
    if raw in ("", "-"):
        return "none"
    media = raw.split(";", 1)[0].strip().lower()
    if media in KNOWN_CONTENT_TYPES:
        return media
    return next((f"{p}*" for p in KNOWN_PREFIXES if media.startswith(p)), "other")


def load_outcome(status: str) -> str:
    """POST /models: SageMaker's contract answers 200, 409 (loaded already) or 507 (memory)."""
    return {"200": "success", "409": "already_loaded", "507": "insufficient_memory"}.get(
        status, "failure"
    )


def unload_outcome(status: str) -> str:
    return {"200": "success", "404": "not_loaded"}.get(status, "failure")


class AccessLogFollower:
    """Follows nginx's access log (as `tail -F` would) and hands complete lines to `sink`.

    Past `rotate_bytes` it unlinks the file and calls `reopen` (SIGUSR1 to
    nginx's master), keeps reading the old file until nginx has switched,
    then follows the new one.
    """

    def __init__(
        self,
        path: Path,
        sink: Callable[[list[bytes]], None],
        reopen: Callable[[], None],
        rotate_bytes: int = 64 * 1024 * 1024,
        poll_seconds: float = 0.25,
        switch_grace_seconds: float = 2.0,
    ):
        self.path = path
        self._sink = sink
        self._reopen = reopen
        self._rotate_bytes = rotate_bytes
        self._poll = poll_seconds
        self._grace = switch_grace_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Read what is left, then stop."""
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            self._follow()
        except Exception:  # the metrics must never take serve down
            log.exception("following %s failed; the front's request metrics stop here", self.path)

    def _follow(self) -> None:
        fd: int | None = None
        pending = b""
        rotated_at: float | None = None
        warned = False
        while True:
            stopping = self._stop.is_set()
            if fd is None:
                with contextlib.suppress(FileNotFoundError):
                    fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            if fd is not None:
                chunk = os.read(fd, 1 << 20)
                if chunk:
                    lines = (pending + chunk).split(b"\n")
                    pending = lines.pop()
                    if lines:
                        self._sink(lines)
                    continue
                if rotated_at is None and os.lseek(fd, 0, os.SEEK_CUR) >= self._rotate_bytes:
                    self._rotate()
                    rotated_at = time.monotonic()
                elif rotated_at is not None and time.monotonic() - rotated_at >= self._grace:
                    if self._written_since_reopen():
                        # nginx flushed the old file before writing the new one; read what
                        # is left of the old one, then follow the new one.
                        pending = self._drain(fd, pending)
                        os.close(fd)
                        fd, pending, rotated_at, warned = None, b"", None, False
                        continue
                    if not warned and time.monotonic() - rotated_at > 60:
                        warned = True
                        log.warning(
                            "nginx writes no new %s since it was asked to reopen it; its "
                            "workers may not be allowed to create files there (the old file "
                            "is still read, but its disk space is not freed)",
                            self.path,
                        )
            if stopping:
                break
            self._stop.wait(self._poll)
        if fd is not None:
            os.close(fd)

    def _written_since_reopen(self) -> bool:
        """Whether nginx's workers write to the new file (the master only creates it)."""
        try:
            return self.path.stat().st_size > 0
        except FileNotFoundError:
            return False

    def _drain(self, fd: int, pending: bytes) -> bytes:
        while chunk := os.read(fd, 1 << 20):
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            if lines:
                self._sink(lines)
        return pending

    def _rotate(self) -> None:
        log.info(
            "access log %s reached %d bytes; starting a new one", self.path, self._rotate_bytes
        )
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._reopen()


def nginx_reopener(pid_file: Path) -> Callable[[], None]:
    """Ask the nginx master whose pid `pid_file` holds to reopen its log files."""

    def reopen() -> None:
        try:
            os.kill(int(pid_file.read_text().strip()), signal.SIGUSR1)
        except (OSError, ValueError) as exc:
            log.warning("could not ask nginx to reopen its access log: %s", exc)

    return reopen
