"""Ports: the public ones must be free, internal ones obey SAGEMAKER_SAFE_PORT_RANGE."""

from __future__ import annotations

import errno
import socket
from collections.abc import Collection, Mapping

from serve.errors import ConfigError
from serve.settings import PortRange

# How often the kernel is asked for a free port before giving up.
_KERNEL_TRIES = 64


def free_loopback_port(
    allowed: PortRange | None,
    taken: Collection[int] = (),
    purpose: str = "Triton's internal HTTP endpoint",
) -> int:
    """A port free on 127.0.0.1 and not in `taken`: any when no range is set, else one
    inside it.

    Without a range the kernel picks; it may pick a port it gave an earlier probe
    (Triton's HTTP port, not yet bound), so one in `taken` is asked for again (a test
    run saw Triton refuse the same port for its HTTP and gRPC endpoints).
    """
    candidates = [0] * _KERNEL_TRIES if allowed is None else range(allowed.low, allowed.high + 1)
    for candidate in candidates:
        if candidate in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            port: int = probe.getsockname()[1]
        if port not in taken:
            return port
    if allowed is None:
        raise ConfigError(f"no free port on 127.0.0.1 for {purpose}")
    raise ConfigError(
        f"no free port inside SAGEMAKER_SAFE_PORT_RANGE={allowed} for {purpose}; widen the range"
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
