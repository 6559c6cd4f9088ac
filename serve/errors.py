"""Errors `serve` reports to people, each with the HTTP status it maps to.

Requests get `{"error": message}` with `status`; at start-up the message is
printed and `serve` exits non-zero. Messages say what was wrong and what to do.
"""

from __future__ import annotations


class ServeError(Exception):
    """A failure a user can act on."""

    status: int = 500

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class ArtifactError(ServeError):
    """A model artifact (archive, folder, config, environment) is unusable."""

    status = 400


class ConfigError(ServeError):
    """The container's configuration (environment variables) is invalid."""

    status = 500


class ModelNotFound(ServeError):
    """A request names a model this endpoint does not have loaded."""

    status = 404


class InsufficientMemory(ServeError):
    """CPU or GPU memory ran out; on multi-model endpoints SageMaker evicts and retries."""

    status = 507
