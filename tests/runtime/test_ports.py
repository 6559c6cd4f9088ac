"""Internal ports (serve/runtime/ports.py)."""

from __future__ import annotations

import errno
import os
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from serve.runtime import ports
from serve.settings import PortRange
from tests.conftest import ServeProcess, triton_argv, wait_all_gone, write_add_model

StartServe = Callable[..., ServeProcess]


class _KernelPicks:
    """A socket whose bind to port 0 gets the next of `picks`, as the kernel would pick."""

    picks: Iterator[int]

    def __init__(self, *_args: object) -> None:
        self.port = 0

    def bind(self, address: tuple[str, int]) -> None:
        self.port = address[1] or next(self.picks)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def setsockopt(self, *_args: object) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_public_port_the_kernel_picks_is_asked_for_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The kernel may pick a public port nginx has not bound yet; Triton would then
    take it from the front (or refuse to start)."""
    _KernelPicks.picks = iter([8080, 40002])
    monkeypatch.setattr(ports.socket, "socket", _KernelPicks)
    with ports.LoopbackPorts(None, {8080}) as loopback:
        assert loopback.reserve("test") == 40002


def test_a_reserved_port_is_kept_from_others_until_released_but_triton_can_listen() -> None:
    """CI saw Triton refuse to start, its gRPC port "already in use": a port probed and
    released was taken before Triton bound it. Held, it is given to no other bind, by
    name or by the kernel, while a listener with SO_REUSEADDR (as Triton's) can bind it,
    and again after that listener is gone (Triton restarted)."""
    with ports.LoopbackPorts(None) as loopback:
        port = loopback.reserve("test")
        other = socket.socket()
        with pytest.raises(OSError) as refused:
            other.bind(("127.0.0.1", port))
        other.close()
        assert refused.value.errno == errno.EADDRINUSE
        for _ in range(2):
            with socket.socket() as triton:
                triton.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                triton.bind(("127.0.0.1", port))
                triton.listen()
                with socket.create_connection(("127.0.0.1", port), timeout=5):
                    pass
        picked = set()
        for _ in range(2000):
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                picked.add(probe.getsockname()[1])
        assert port not in picked
    with socket.socket() as after:
        after.bind(("127.0.0.1", port))


def test_a_range_gives_its_ports_once_and_names_the_variable_when_full() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    with ports.LoopbackPorts(PortRange(free, free)) as loopback:
        assert loopback.reserve("Triton's internal HTTP endpoint") == free
        with pytest.raises(ports.ConfigError, match=r"SAGEMAKER_SAFE_PORT_RANGE.*metrics"):
            loopback.reserve("Triton's metrics")


def test_serve_holds_tritons_internal_ports_while_triton_is_gone(
    opt_ml: Path, start_serve: StartServe
) -> None:
    """Triton's HTTP and metrics ports stay bound by serve itself, not only probed: with
    Triton dead (and serve frozen before it notices), nobody else can bind them."""
    write_add_model(opt_ml / "model")
    server = start_serve(opt_ml).wait_ready()
    (triton,) = server.child_pids("tritonserver")
    argv = triton_argv(server)
    internal = [
        int(flag.split("=", 1)[1])
        for flag in argv
        if flag.startswith(("--http-port=", "--metrics-port="))
    ]
    assert len(internal) == 2, argv
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        os.kill(triton, signal.SIGKILL)
        wait_all_gone([triton], 30)
        for port in internal:
            with socket.socket() as other, pytest.raises(OSError) as refused:
                other.bind(("127.0.0.1", port))
            assert refused.value.errno == errno.EADDRINUSE, port
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
