"""S3 uploads (what `package --upload` and deploy's --model-data rely on) against the fake S3."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

import boto3
import pytest
from smtriton.aws import AwsOptions, open_session
from smtriton.errors import ConfigError, SmtritonError
from smtriton.s3 import parse_s3_uri, upload_file

pytestmark = pytest.mark.usefixtures("aws_env")


@pytest.fixture
def bucket(aws: boto3.Session) -> str:
    name = f"models-{uuid.uuid4().hex[:12]}"
    aws.client("s3").create_bucket(Bucket=name)
    return name


def test_upload_to_a_prefix_keeps_the_file_name(
    aws: boto3.Session, bucket: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    archive = tmp_path / "model.tar.gz"
    content = os.urandom(9 * 1024 * 1024)  # above boto3's 8 MB multipart threshold
    archive.write_bytes(content)
    with caplog.at_level(logging.INFO, logger="smtriton"):
        uri = upload_file(open_session(AwsOptions()), archive, f"s3://{bucket}/ncf/v1/")
    assert uri == f"s3://{bucket}/ncf/v1/model.tar.gz"
    stored = aws.client("s3").get_object(Bucket=bucket, Key="ncf/v1/model.tar.gz")["Body"].read()
    assert stored == content
    progress = [
        r.getMessage() for r in caplog.records if "uploading model.tar.gz" in r.getMessage()
    ]
    assert progress[-1] == "uploading model.tar.gz: 100%"
    assert len(progress) == 10


def test_upload_to_a_key_uses_that_key(aws: boto3.Session, bucket: str, tmp_path: Path) -> None:
    archive = tmp_path / "local.tar.gz"
    archive.write_bytes(b"tarball")
    uri = upload_file(open_session(AwsOptions()), archive, f"s3://{bucket}/models/food.tar.gz")
    assert uri == f"s3://{bucket}/models/food.tar.gz"
    head = aws.client("s3").head_object(Bucket=bucket, Key="models/food.tar.gz")
    assert head["ContentLength"] == len(b"tarball")


def test_upload_to_a_missing_bucket_says_what_failed(tmp_path: Path) -> None:
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(b"x")
    with pytest.raises(
        SmtritonError, match=r"upload to s3://no-such-bucket-here/model.tar.gz failed"
    ):
        upload_file(open_session(AwsOptions()), archive, "s3://no-such-bucket-here/")


@pytest.mark.parametrize("uri", ["bucket/key", "s3://", "s3://UPPER/key", "https://b/k"])
def test_s3_uris_are_checked(uri: str) -> None:
    with pytest.raises(ConfigError, match="is not an S3 URI"):
        parse_s3_uri(uri)


def test_s3_uri_parts() -> None:
    assert parse_s3_uri("s3://my-bucket/a/b.tar.gz") == ("my-bucket", "a/b.tar.gz")
    assert parse_s3_uri("s3://my-bucket") == ("my-bucket", "")
