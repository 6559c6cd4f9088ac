"""Where and when a benchmark ran, in one line for its plots and result files.

A figure read months later, or beside one from another machine, means little
without the hardware, the commit and the date it came from; every plot the
benchmarks write carries this line, and the result files keep it (run.txt)
so that plotting an earlier run again shows that run's, not today's.
"""

from __future__ import annotations

import datetime
import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
STAMP_FILE = "run.txt"


def machine() -> str:
    """The GPUs if any answer nvidia-smi, else the CPU model; and the CPUs this process may use."""
    cpus = len(os.sched_getaffinity(0))
    try:
        gpus = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.split("\n")
        names = [name.strip() for name in gpus if name.strip()]
    except (OSError, subprocess.SubprocessError):
        names = []
    if names:
        count = f"{len(names)} x " if len(names) > 1 else ""
        return f"{count}{names[0]}, {cpus} CPU cores"
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {cpus} CPU cores, no GPU"


def commit() -> str:
    """The checkout's commit, marked -dirty when tracked files differ from it."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short=7", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "diff", "--quiet", "HEAD", "--"],
            capture_output=True,
            check=False,
        ).returncode
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"
    return f"{head}-dirty" if dirty else head


def run_stamp() -> str:
    """`machine · commit C · YYYY-MM-DD` for a run made now, here."""
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    return f"{machine()} · commit {commit()} · {today}"


def read_stamp(folder: Path) -> str | None:
    path = folder / STAMP_FILE
    return path.read_text().strip() if path.is_file() else None


def write_stamp(folder: Path, stamp: str) -> Path:
    path = folder / STAMP_FILE
    path.write_text(stamp + "\n")
    return path
