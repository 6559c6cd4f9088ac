"""S3 locations and uploads (model data for deploy: `package --upload` uses upload_file,
or upload_tree for a repository uncompressed)."""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path

import boto3
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import ClientError

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


def upload_tree(session: boto3.Session, folder: Path, destination: str) -> str:
    """Upload every file under FOLDER to an empty s3:// prefix, at its relative path.

    Returns the prefix, the value deploy's --model-data takes for uncompressed
    model data: SageMaker copies every object under it into /opt/ml/model, so
    objects already there would be served too, and the prefix must be empty.
    """
    bucket, prefix = parse_s3_uri(destination)
    if prefix and not prefix.endswith("/"):
        raise ConfigError(
            f"--upload {destination!r} must end in / for uncompressed model data: a prefix "
            "SageMaker copies into /opt/ml/model as it is"
        )
    s3 = client(session, "s3")
    try:
        present = s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1).get("KeyCount", 0)
    except ClientError as error:
        raise SmtritonError(f"cannot list s3://{bucket}/{prefix}: {error}") from None
    if present:
        raise SmtritonError(
            f"s3://{bucket}/{prefix} already holds objects, and SageMaker would copy them all "
            "into /opt/ml/model: upload to an empty prefix (a version in it, say "
            f"s3://{bucket}/{prefix}v2/)"
        )
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    total = sum(path.stat().st_size for path in files)
    log.info(
        "uploading %d files (%d bytes) to s3://%s/%s, uncompressed",
        len(files),
        total,
        bucket,
        prefix,
    )
    reporter = _ProgressReporter(f"s3://{bucket}/{prefix}", total)
    for path in files:
        key = prefix + path.relative_to(folder).as_posix()
        try:
            s3.upload_file(str(path), bucket, key, Callback=reporter)
        except S3UploadFailedError as error:
            raise SmtritonError(f"upload to s3://{bucket}/{key} failed: {error}") from None
    return f"s3://{bucket}/{prefix}"
