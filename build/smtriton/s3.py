"""S3 locations and uploads (model tarballs for deploy; `package --upload` uses upload_file)."""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path

import boto3
from boto3.exceptions import S3UploadFailedError

from smtriton.aws import client
from smtriton.errors import ConfigError, SmtritonError

log = logging.getLogger(__name__)

S3_URI_PATTERN = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(?P<key>.*))?$")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split s3://bucket/key into (bucket, key); the key may be empty."""
    match = S3_URI_PATTERN.match(uri)
    if not match:
        raise ConfigError(f"{uri!r} is not an S3 URI like s3://bucket/path/model.tar.gz")
    return match["bucket"], match["key"] or ""


class _ProgressReporter:
    """Logs every tenth of an upload; boto3 calls it from several threads."""

    def __init__(self, name: str, total: int) -> None:
        self._name, self._total = name, max(total, 1)
        self._sent = 0
        self._next_tenth = 1
        self._lock = threading.Lock()

    def __call__(self, sent_now: int) -> None:
        with self._lock:
            self._sent += sent_now
            while self._sent * 10 >= self._next_tenth * self._total and self._next_tenth <= 10:
                log.info("uploading %s: %d%%", self._name, self._next_tenth * 10)
                self._next_tenth += 1


def upload_file(session: boto3.Session, path: Path, destination: str) -> str:
    """Upload PATH to an s3:// URI; a destination ending in "/" keeps the file name.

    Returns the object's URI, the value deploy's --model-data takes. Large
    files go up in parts, in parallel (boto3's managed transfer).
    """
    if not path.is_file():
        raise SmtritonError(f"{path} is not a file")
    bucket, key = parse_s3_uri(destination)
    if not key or key.endswith("/"):
        key += path.name
    size = path.stat().st_size
    log.info("uploading %s (%d bytes) to s3://%s/%s", path, size, bucket, key)
    try:
        client(session, "s3").upload_file(
            str(path), bucket, key, Callback=_ProgressReporter(path.name, size)
        )
    except S3UploadFailedError as error:
        # boto3 wraps the real cause (no such bucket, access denied) in text.
        raise SmtritonError(f"upload to s3://{bucket}/{key} failed: {error}") from None
    return f"s3://{bucket}/{key}"
