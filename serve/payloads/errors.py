"""Payload errors, each with the status the caller receives (and a JSON body)."""

from __future__ import annotations

from serve.errors import ServeError


class PayloadError(ServeError):
    """The body does not fit the model's inputs (or cannot be read at all)."""

    status = 400


class UnsupportedMediaType(ServeError):
    status = 415


class NotAcceptable(ServeError):
    status = 406


class TritonUnavailable(ServeError):
    status = 503
