"""CPU work in proportion to a request, done where other requests keep being answered.

The payload service answers every request on one event loop. Decoding a
large body, building its Triton requests and writing its answer take tens to
hundreds of milliseconds even in numpy; on the loop, every other request
(health checks through nginx aside) would wait that long. Such work runs in
worker threads instead: numpy releases the interpreter's lock in most of it,
and where it does not, Python hands the lock to the loop every few
milliseconds (sys.getswitchinterval), so small requests keep being answered
(docs/benchmarks.md, "Large bodies and everyone else", measured the options).
Small bodies stay on the loop: handing work to a thread costs more than the
work.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

# Bodies from this size are decoded, and answered, in a worker thread.
OFF_LOOP_BYTES = 256 * 1024
# Large bodies adapted at once; more wait their turn (each holds a few times its body).
WORKERS = 2


class Offload:
    """Worker threads for the work of large bodies; `run` does small ones in place."""

    def __init__(self, threshold: int = OFF_LOOP_BYTES, workers: int = WORKERS):
        self.threshold = threshold
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="payload-work")

    async def run(self, size: int, function: Callable[..., T], *args: object) -> T:
        """`function(*args)` for a body of `size` bytes: in a worker from `threshold` on."""
        if size < self.threshold:
            return function(*args)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(function, *args))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
