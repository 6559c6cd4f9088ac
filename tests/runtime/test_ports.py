"""Internal ports (serve/runtime/ports.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from serve.runtime import ports


class _KernelPicks:
    """A socket whose bind to port 0 gets the next of `picks`, as the kernel would pick."""

    picks: Iterator[int]

    def __init__(self, *_args: object) -> None:
        self.port = 0

    def __enter__(self) -> _KernelPicks:
        return self

    def __exit__(self, *_exc: object) -> None:
        pass

    def bind(self, address: tuple[str, int]) -> None:
        self.port = address[1] or next(self.picks)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


def test_a_port_the_kernel_gave_before_is_asked_for_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without SAGEMAKER_SAFE_PORT_RANGE the kernel may hand the port it gave Triton's
    HTTP endpoint (free again once probed) to its gRPC endpoint too; Triton then refuses
    to start (seen once in a full test run)."""
    _KernelPicks.picks = iter([40001, 40001, 40002])
    monkeypatch.setattr(ports.socket, "socket", _KernelPicks)
    http = ports.free_loopback_port(None)
    assert http == 40001
    assert ports.free_loopback_port(None, {http}) == 40002
