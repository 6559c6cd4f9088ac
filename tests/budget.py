"""A memory and time budget for readers fed hostile inputs (the fuzz tests, issue 24).

A reader must allocate in proportion to what arrived, never to what the input
declares: `memory_budget` fails a block whose traced allocations (Python's
and numpy's) peak past a limit, and `address_space` stops the test process
from mapping more than a few GB while a module runs, so a reader that does
try to allocate what a header declares fails with MemoryError instead of
taking the machine down. Time is the tests' hypothesis deadline.
"""

from __future__ import annotations

import contextlib
import resource
import tracemalloc
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, settings

MEBIBYTE = 1024 * 1024
# Examples per reader and the wall time one may take. Generous: one bzip2 archive
# under tracemalloc takes 1.8 s on a quiet 2-core machine and twice that beside the
# suite's other workers; a reader that works in proportion to what a header declares
# takes minutes, or fails the memory budget first.
FUZZ = settings(
    max_examples=150,
    deadline=timedelta(seconds=10),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@contextlib.contextmanager
def memory_budget(limit: int) -> Iterator[None]:
    """Fail if the block's traced allocations peak past `limit` bytes."""
    tracemalloc.start()
    try:
        yield
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak <= limit, f"allocated {peak} bytes at the peak, over the {limit} budget"


@contextlib.contextmanager
def address_space(extra: int = 4096 * MEBIBYTE) -> Iterator[None]:
    """Let this process map at most `extra` bytes more than it has mapped now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    mapped = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            mapped = int(line.split()[1]) * 1024
    limit = mapped + extra
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
