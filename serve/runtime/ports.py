"""Ports: the public ones must be free, internal ones obey SAGEMAKER_SAFE_PORT_RANGE."""

from __future__ import annotations

import errno
import socket
from collections.abc import Collection, Mapping

from serve.errors import ConfigError
from serve.settings import PortRange

# How often the kernel is asked for a free port before giving up.
_KERNEL_TRIES = 64


class LoopbackPorts:
    """Ports on 127.0.0.1 for Triton's internal endpoints, held until serve stops.

    Each port stays bound (not listening) by serve with SO_REUSEADDR set after an
    exclusive bind: the kernel then gives it to no other bind and no connection's
    source port, while Triton, which binds with SO_REUSEADDR, can listen on it, and
    again after a restart. A port only probed and released could be taken before
    Triton binds it (CI saw Triton's gRPC endpoint refused "already in use").
    """

    def __init__(self, allowed: PortRange | None, taken: Collection[int] = ()):
        self.allowed = allowed
        self._taken = set(taken)
        self._held: list[socket.socket] = []

    def __enter__(self) -> LoopbackPorts:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release every port: only once Triton no longer listens on them."""
        for held in self._held:
            held.close()
        self._held.clear()

    def reserve(self, purpose: str) -> int:
        """A port free on 127.0.0.1 and not taken: any when no range is set, else one
        inside SAGEMAKER_SAFE_PORT_RANGE.

        The kernel's pick may be a public port not yet bound (in `taken`): it is asked
        for again.
        """
        allowed = self.allowed
        candidates = (
            [0] * _KERNEL_TRIES if allowed is None else range(allowed.low, allowed.high + 1)
        )
        for candidate in candidates:
            if candidate in self._taken:
                continue
            held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                held.bind(("127.0.0.1", candidate))
            except OSError:
                held.close()
                continue
            port: int = held.getsockname()[1]
            if port in self._taken:
                held.close()
                continue
            held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._held.append(held)
            self._taken.add(port)
            return port
        if allowed is None:
            raise ConfigError(f"no free port on 127.0.0.1 for {purpose}")
        raise ConfigError(
            f"no free port inside SAGEMAKER_SAFE_PORT_RANGE={allowed} for {purpose}; "
            "widen the range"
        )


def refuse_ports_in_use(public: Mapping[str, int]) -> None:
    """Stop start-up, naming the variable, when a public port already has a listener.

    nginx and Triton would otherwise find out only after the models have been
    prepared, and a listener with SO_REUSEPORT would share the port with the
    other server in silence. Like nginx, the probe sets SO_REUSEADDR, so the
    closing connections of an earlier run do not count as a listener.
    """
    for variable, port in public.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("0.0.0.0", port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise ConfigError(f"{variable}={port} cannot be used: {exc.strerror}") from exc
                local = (
                    " (`make serve PORT=N` locally)" if variable == "SAGEMAKER_BIND_TO_PORT" else ""
                )
                raise ConfigError(
                    f"{variable}={port} is already in use by another server (a second serve?); "
                    f"stop it, or choose a free port with {variable}{local}"
                ) from exc
