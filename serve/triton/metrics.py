"""Triton's Prometheus metrics, read from its loopback port, with labels that survive restarts.

Triton's metrics listen on loopback only. The front serves them on the public
port's GET /metrics (with its own, serve/front/metrics.py) and, when
SAGEMAKER_TRITON_ALLOW_METRICS asks, on SAGEMAKER_TRITON_METRICS_PORT as in
NVIDIA's image; both read them here at each scrape.

Triton labels each model's series with the repository it loaded the model
from (`namespace`). serve hands Triton a prepared copy in a new temporary
folder at every start, so that label would change at every restart and split
every series; it is replaced by the folder the models came from
(/opt/ml/model, the label NVIDIA's image shows, or /opt/ml/models).
"""

from __future__ import annotations

import logging
from pathlib import Path

from serve.triton.client import TritonClient

log = logging.getLogger(__name__)

# Prometheus' text format, which Triton writes and the front's metrics follow.
EXPOSITION_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Triton answers its metrics from memory; a scrape that waits longer finds it stuck.
SCRAPE_TIMEOUT_S = 5.0


class TritonMetrics:
    """Triton's metrics at `port` on loopback, `repository` (serve's copy) shown as `source`."""

    def __init__(self, port: int, repository: Path, source: Path):
        self.port = port
        self._client = TritonClient(port)
        self._copy_label = _label("namespace", str(repository))
        self._source_label = _label("namespace", str(source))

    def listening(self) -> bool:
        """Whether Triton serves its metrics yet: it opens their port after its HTTP one."""
        return self._client.is_ready("/metrics")

    def exposition(self) -> tuple[bytes | None, str]:
        """What SAGEMAKER_TRITON_METRICS_PORT answers: the text (None: unreadable), its type."""
        return self.text(), EXPOSITION_TYPE

    def text(self) -> bytes | None:
        """Triton's exposition, relabelled and ending in a newline; None if it cannot be read."""
        try:
            reply = self._client.request("GET", "/metrics", timeout=SCRAPE_TIMEOUT_S)
        except OSError as exc:
            log.warning("Triton's metrics could not be read: %s", exc)
            return None
        if reply.status != 200:
            log.warning("Triton's metrics answered %d", reply.status)
            return None
        text = reply.body.replace(self._copy_label, self._source_label)
        return text if text.endswith(b"\n") or not text else text + b"\n"


def _label(name: str, value: str) -> bytes:
    """`name="value"` as the Prometheus text format writes it."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'{name}="{escaped}"'.encode()
