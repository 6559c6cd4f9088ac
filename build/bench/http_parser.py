"""Benchmark: the payload service's HTTP parsing, httptools against the hand-written parsers.

The hand-written request and answer parsers serve/payloads/ had until commit
c72619b are read from git (`git show`), so both run in this process, on the
same messages, taking turns: a request as nginx sends it to the service and
an answer as Triton writes it. Printed: microseconds per message of each, and
the ratio. The payload service handles one request and one answer for each
adapted invocation, so the sum is what the parser change costs or saves there.

Run: `.venv/bin/python build/bench/http_parser.py [--messages 20000] [--commit c72619b]`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

from serve.payloads.body import Spool
from serve.payloads.http_parser import Head, RequestReader, ResponseReader

REPO = Path(__file__).resolve().parents[2]
_ROWS = b'{"inputs": [[42, 7], [42, 19], [42, 301]]}'
REQUEST = (
    b"POST /_serve/invocations HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n"
    b"Content-Type: application/json\r\nAccept: */*\r\nUser-Agent: python-requests/2.32\r\n"
    b"X-Serve-Model: ncf_food\r\nX-Serve-Inference: infer\r\n\r\n%s" % (len(_ROWS), _ROWS)
)
_SCORE = (
    b'{"model_name":"ncf_food","model_version":"1","outputs":[{"name":"score",'
    b'"datatype":"FP32","shape":[1,1],"data":[0.5]}]}'
)
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
    len(_SCORE),
    _SCORE,
)


def old_module(commit: str, path: str) -> types.ModuleType:
    """The module at `path` as it was at `commit`."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{commit}:{path}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    module = types.ModuleType(path.replace("/", ".").removesuffix(".py") + "_old")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    # Our own history, from git: the module as it was.
    exec(compile(source, path, "exec"), module.__dict__)
    return module


class _Owner:
    def message_head(self, head: Head) -> None:
        self.head = head

    def message_body(self, data: bytes) -> None:
        self.body = data

    def message_end(self, keep_alive: bool) -> None:
        self.done = keep_alive


def timed(step: Callable[[], object], messages: int) -> float:
    """Microseconds per message."""
    started = time.perf_counter()
    for _ in range(messages):
        step()
    return (time.perf_counter() - started) / messages * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--commit", default="c72619b")
    args = parser.parse_args()
    service = old_module(args.commit, "serve/payloads/service.py")
    triton_http = old_module(args.commit, "serve/payloads/triton_http.py")
    spool = Spool(Path("/tmp"), 1 << 30)
    owner = _Owner()
    request_reader, answer_reader = RequestReader(owner), ResponseReader(owner)

    def old_request() -> None:
        service._parse_request(bytearray(REQUEST), spool)

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    connection = triton_http._Connection()

    def old_answer() -> None:
        connection._answer = loop.create_future()
        connection._head, connection._body = None, []
        connection._buffer += ANSWER
        connection._parse()

    steps = {
        ("request", "hand-written"): old_request,
        ("request", "httptools"): lambda: request_reader.feed(REQUEST),
        ("answer", "hand-written"): old_answer,
        ("answer", "httptools"): lambda: answer_reader.feed(ANSWER),
    }
    times: dict[tuple[str, str], list[float]] = {key: [] for key in steps}
    for _ in range(args.rounds):
        for key, step in steps.items():
            times[key].append(timed(step, args.messages))
    medians = {key: statistics.median(values) for key, values in times.items()}
    print(f"{args.messages} messages x {args.rounds} rounds, medians (us per message)")
    for kind in ("request", "answer"):
        old, new = medians[kind, "hand-written"], medians[kind, "httptools"]
        print(
            f"{kind:8} hand-written {old:6.2f}  httptools {new:6.2f}  "
            f"httptools / hand-written {new / old:.2f}"
        )
    old = medians["request", "hand-written"] + medians["answer", "hand-written"]
    new = medians["request", "httptools"] + medians["answer", "httptools"]
    print(f"per adapted invocation: {old:.2f} -> {new:.2f} us ({new - old:+.2f} us)")


if __name__ == "__main__":
    main()
