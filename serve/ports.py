"""Picking internal ports that obey SAGEMAKER_SAFE_PORT_RANGE."""

from __future__ import annotations

import socket
from collections.abc import Collection

from serve.errors import ConfigError
from serve.settings import PortRange


def free_loopback_port(allowed: PortRange | None, taken: Collection[int] = ()) -> int:
    """A port free on 127.0.0.1: any when no range is set, else one inside it."""
    candidates = [0] if allowed is None else range(allowed.low, allowed.high + 1)
    for port in candidates:
        if port in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise ConfigError(
        f"no free port inside SAGEMAKER_SAFE_PORT_RANGE={allowed} for Triton's internal "
        "HTTP endpoint; widen the range"
    )
