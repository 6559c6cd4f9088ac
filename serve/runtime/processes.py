"""Starting and watching external processes (Triton, nginx, v2 JSON writers): the one place.

Every child runs in its own process group with a parent-death signal, so it
never outlives `serve`, even when `serve` is killed with SIGKILL. That signal
is SIGTERM, not SIGKILL: nginx's master must live long enough to stop its
workers, and Triton to remove its shared-memory regions. Its output
is streamed, whole lines at a time, to our stdout (CloudWatch reads it), and
the last lines are kept so a crash can be explained.

Once a child has ended, whatever is left of its process group is killed:
its own children do not get the parent-death signal. An nginx worker whose
master died keeps the public port and answers 502; a Python-backend stub
that Triton was starting when it stopped runs on for good, holding its
shared-memory region in /dev/shm.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import fcntl
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from serve.machine.users import RunAs, popen_user

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_TAIL_LINES = 40
# Output kept for the tail: enough for _TAIL_LINES of Triton's longest usual lines.
_TAIL_BYTES = 64 * 1024
_READ_BYTES = 1024 * 1024
# A child's pipe holds this much (Linux's default is 64 KiB), and the relay lets
# output gather for _GATHER_SECONDS after a read that emptied it: one read per
# burst of lines instead of per line, while a child writing fast never fills it.
_PIPE_BYTES = 1024 * 1024
_GATHER_SECONDS = 0.005
_F_SETPIPE_SZ = 1031
_PROC = Path("/proc")
_SHARED_MEMORY = Path("/dev/shm")


def _stop_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    # The parent may have died between fork and prctl.
    if os.getppid() == 1:
        os._exit(1)


class ManagedProcess:
    """One child process, its output relayed to stdout as it comes."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        pass_fds: Sequence[int] = (),
        run_as: RunAs | None = None,
        shared_memory: str | None = None,
    ):
        """`pass_fds`: descriptors the child inherits (a socket it serves); `run_as`: the
        unprivileged user the child becomes before its exec (serve/machine/users.py);
        `shared_memory`: a pattern that names, in /dev/shm, the files this child's
        processes make and no other process does (removed once they have ended)."""
        self.name = name
        self.argv = list(argv)
        self._shared_memory = shared_memory
        self._recent: collections.deque[bytes] = collections.deque()
        as_user = f" as {run_as.name} (uid {run_as.uid})" if run_as else ""
        log.info("starting %s%s: %s", name, as_user, " ".join(self.argv))
        self._process = subprocess.Popen(
            self.argv,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            pass_fds=pass_fds,
            # The user changes before preexec_fn runs, which matters: a change of
            # user clears the parent-death signal.
            preexec_fn=_stop_with_parent,
            **popen_user(run_as),
        )
        assert self._process.stdout is not None  # stdout=PIPE
        with contextlib.suppress(OSError):  # the limit may be lower; the default works too
            fcntl.fcntl(self._process.stdout.fileno(), _F_SETPIPE_SZ, _PIPE_BYTES)
        self._relay = threading.Thread(
            target=self._relay_output, name=f"{name}-output", daemon=True
        )
        self._relay.start()

    @property
    def pid(self) -> int:
        return self._process.pid

    def _relay_output(self) -> None:
        """Copy the child's output in blocks, within milliseconds of its writing.

        Python touches each block once, not each line: Triton's verbose log (on
        by default) writes about nine lines per request, and a relay that read,
        wrote and flushed each one cost serve about 6 us of CPU a line, with the
        GIL held beside the payload service. Only whole lines are written, so
        they never mix with serve's own.
        """
        assert self._process.stdout is not None
        source = self._process.stdout.fileno()
        partial = b""
        kept = 0
        while block := os.read(source, _READ_BYTES):
            end = block.rfind(b"\n") + 1
            if end:
                sys.stdout.buffer.write(partial + block[:end])
                sys.stdout.flush()
                partial = block[end:]
            else:
                partial += block
            self._recent.append(block)
            kept += len(block)
            while kept - len(self._recent[0]) >= _TAIL_BYTES:
                kept -= len(self._recent.popleft())
            if len(block) < _READ_BYTES:
                time.sleep(_GATHER_SECONDS)
        if partial:
            sys.stdout.buffer.write(partial + b"\n")
            sys.stdout.flush()

    def poll(self) -> int | None:
        return self._process.poll()

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def signal(self, signum: int) -> None:
        if self._process.poll() is None:
            self._process.send_signal(signum)

    def stop(self, signum: int, deadline: float) -> int:
        """Send `signum`, wait until `deadline` (monotonic), then kill the group."""
        self.signal(signum)
        code = self.wait(max(0.0, deadline - time.monotonic()))
        if code is None:
            log.warning("%s did not stop in time; killing it", self.name)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            code = self._process.wait()
        self.kill_group()
        self._relay.join(timeout=2)
        return code

    def kill_group(self) -> None:
        """Kill what is left of the child's process group, once the child has ended.

        The child's own children (nginx's workers, Triton's stubs) are in its
        group. The /dev/shm files they map go with them: their owner (Triton,
        which removes its Python-backend regions when it stops normally) is
        gone, and nobody else knows those names. So do the files named as the
        child's own (`shared_memory`), which no process may map any more: a
        stub killed before Triton crashed leaves its region to nobody, and each
        such crash would keep that much of the machine's memory.
        """
        members = _group_members(self._process.pid)
        leftovers = shared_memory_files(members)
        if members:
            log.warning(
                "%s left %d process(es) behind (%s); killing them",
                self.name,
                len(members),
                ", ".join(map(str, members)),
            )
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
        if self._shared_memory is not None:
            leftovers.update(_SHARED_MEMORY.glob(self._shared_memory))
        for path in leftovers:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                log.warning("removed %s, which %s's processes held", path, self.name)

    def exit_summary(self) -> str:
        """How the process ended, in one line: what a caller of /ping may read."""
        code = self._process.poll()
        if code is None:
            return f"{self.name} is still running"
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        return f"{self.name} exited ({how})"

    def describe_exit(self) -> str:
        """How the process ended, with its last output lines: for the container's log only
        (they name models, paths and what the model printed)."""
        summary = self.exit_summary()
        if self._process.poll() is None:
            return summary
        self._relay.join(timeout=2)
        output = b"".join(self._recent).decode("utf-8", errors="replace")
        tail = "\n".join(output.splitlines()[-_TAIL_LINES:])
        return f"{summary}; its last output:\n{tail}"


def _group_members(group: int) -> list[int]:
    """The live processes of process group `group` (zombies excluded)."""
    members = []
    for stat in _PROC.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # After the command: state, ppid, pgrp.
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def shared_memory_files(pids: Iterable[int]) -> set[Path]:
    """The /dev/shm files the processes `pids` map."""
    found = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in (_PROC / str(pid) / "maps").read_text().splitlines():
                # address, permissions, offset, device, inode, then the path if any.
                fields = line.split(maxsplit=5)
                path = fields[5] if len(fields) == 6 else ""
                if path.startswith(f"{_SHARED_MEMORY}/") and not path.endswith("(deleted)"):
                    found.add(Path(path))
    return found
