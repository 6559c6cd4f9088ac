"""smtriton transform: a batch transform job, against the AWS stand-in.

The stand-in runs the job (fake_transform.py): without a container each
request's answer is its body, which shows how the input was split and
assembled; with the image it may run (a real `serve`), the records reach a
real Triton, and the job asks serve's /execution-parameters what it left unset.
"""

from __future__ import annotations

import json
import sys
import urllib.request
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path

import boto3
import pytest

from tests.build.conftest import REGISTRY, ROLE_ARN, CliResult, refused_before_anything_is_created
from tests.conftest import EXAMPLES

Smtriton = Callable[..., CliResult]
IMAGE = f"{REGISTRY}/sagemaker-triton:0a1b2c3d4e5f"
SERVE = Path(sys.executable).with_name("serve")

pytestmark = pytest.mark.usefixtures("aws_env")


@pytest.fixture
def bucket(aws: boto3.Session) -> str:
    name = f"batch-{uuid.uuid4().hex[:12]}"
    aws.client("s3").create_bucket(Bucket=name)
    return name


def put(aws: boto3.Session, bucket: str, key: str, body: bytes) -> None:
    aws.client("s3").put_object(Bucket=bucket, Key=key, Body=body)


def get(aws: boto3.Session, bucket: str, key: str) -> bytes:
    return aws.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()


def transform(smtriton: Smtriton, bucket: str, *options: str, image: str = IMAGE) -> CliResult:
    return smtriton(
        "transform",
        "--image",
        image,
        "--role",
        ROLE_ARN,
        "--input",
        f"s3://{bucket}/in/",
        "--output",
        f"s3://{bucket}/out/",
        "--poll-interval",
        "0.05",
        "--wait-timeout",
        "300",
        *options,
    )


def test_a_job_splits_lines_into_requests_and_assembles_the_answers_by_line(
    smtriton: Smtriton, aws: boto3.Session, bucket: str
) -> None:
    put(aws, bucket, "in/day1.csv", b"1,2\n3,4\n5,6\n")
    put(aws, bucket, "in/more/day2.csv", b"7,8\n")
    job = f"job-{uuid.uuid4().hex[:8]}"
    result = transform(
        smtriton,
        bucket,
        "--job-name",
        job,
        "--model-data",
        "s3://models-bucket/ncf/model.tar.gz",
        "--default-model",
        "ncf_food",
        "--content-type",
        "text/csv",
        "--accept",
        "text/csv",
        "--batch-strategy",
        "MultiRecord",
        "--max-payload",
        "2",
        "--max-concurrent",
        "4",
        "--invocation-timeout",
        "1200",
        "--instance-type",
        "ml.m5.xlarge",
    )
    assert result.code == 0, result.err
    assert result.out == f"s3://{bucket}/out/\n"
    assert f"transform job {job}: Completed" in result.err
    # Each object's answers at its path below the input prefix, with .out added.
    assert get(aws, bucket, "out/day1.csv.out") == b"1,2\n3,4\n5,6\n"
    assert get(aws, bucket, "out/more/day2.csv.out") == b"7,8\n"

    described = aws.client("sagemaker").describe_transform_job(TransformJobName=job)
    assert described["BatchStrategy"] == "MultiRecord"
    assert (described["MaxPayloadInMB"], described["MaxConcurrentTransforms"]) == (2, 4)
    assert described["ModelClientConfig"] == {"InvocationsTimeoutInSeconds": 1200}
    assert described["TransformInput"]["SplitType"] == "Line"
    assert described["TransformInput"]["ContentType"] == "text/csv"
    assert described["TransformOutput"]["AssembleWith"] == "Line"
    assert described["TransformOutput"]["Accept"] == "text/csv"
    assert described["TransformResources"] == {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1}
    # The job's model is gone once the job has ended.
    models = [m["ModelName"] for m in aws.client("sagemaker").list_models()["Models"]]
    assert not [m for m in models if m.startswith(job)]
    assert f"deleted model {job}-model" in result.err


def test_no_input_fails_the_job_with_the_reason(smtriton: Smtriton, bucket: str) -> None:
    result = transform(smtriton, bucket)
    assert result.code == 1
    assert f"is Failed: ClientError: no objects under s3://{bucket}/in/" in result.err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--max-payload", "50", "--max-concurrent", "4"], "is 200 MB; SageMaker takes at most"),
        (["--split-type", "None", "--batch-strategy", "MultiRecord"], "needs records to batch"),
        (["--max-payload", "101"], "--max-payload must be between 0 and 100"),
        (["--invocation-timeout", "7200"], "--invocation-timeout must be between 1 and 3600"),
        (["--job-name", "bad_name"], "invalid job name 'bad_name'"),
    ],
)
def test_bad_options_are_refused_before_anything_is_created(
    smtriton: Smtriton, aws: boto3.Session, bucket: str, options: list[str], message: str
) -> None:
    run = partial(transform, smtriton, bucket, *options)
    refused_before_anything_is_created(aws, run, message)


def test_a_real_serve_answers_every_line_and_chooses_what_the_job_left_unset(
    smtriton: Smtriton, aws: boto3.Session, bucket: str, fake_aws_url: str, tmp_path: Path
) -> None:
    """The stand-in runs the image (serve on the NCF example) as a transform job runs it."""
    image = f"{REGISTRY}/sagemaker-triton:transform-{uuid.uuid4().hex[:8]}"
    spec = {
        "image": image,
        "command": [str(SERVE)],
        "root": str(tmp_path),
        "env": {"SAGEMAKER_TRITON_LOG_VERBOSE": "false"},
    }
    request = urllib.request.Request(
        f"{fake_aws_url}/_fake/images", data=json.dumps(spec).encode(), method="POST"
    )
    urllib.request.urlopen(request, timeout=10).close()
    packed = smtriton(
        "package", str(EXAMPLES / "ncf_food"), "-o", str(tmp_path / "model.tar.gz"),
        "--upload", f"s3://{bucket}/model/",
    )  # fmt: skip
    assert packed.code == 0, packed.err
    put(aws, bucket, "in/users.csv", b"42,7\n42,19\n7,7\n")

    job = f"serve-{uuid.uuid4().hex[:8]}"
    result = transform(
        smtriton, bucket, "--model-data", packed.out.strip(), "--content-type", "text/csv",
        "--accept", "text/csv", "--job-name", job, image=image,
    )  # fmt: skip
    assert result.code == 0, result.err
    scores = get(aws, bucket, "out/users.csv.out").decode().splitlines()
    assert len(scores) == 3 and all(0 < float(score) < 1 for score in scores)
    # Left to the container: SageMaker asks serve's /execution-parameters for these.
    described = aws.client("sagemaker").describe_transform_job(TransformJobName=job)
    assert "BatchStrategy" not in described and "MaxConcurrentTransforms" not in described
    # The job's own container: one serve, laid out from the uploaded archive.
    assert len(list(tmp_path.glob("container-*/opt_ml/model/ncf_food/config.pbtxt"))) == 1

    put(aws, bucket, "in/users.csv", b"42,7\n42,x\n")
    refused = transform(
        smtriton, bucket, "--model-data", packed.out.strip(), "--content-type", "text/csv",
        image=image,
    )  # fmt: skip
    assert refused.code == 1
    assert "is Failed: ClientError: the container answered 400" in refused.err
    assert "line 2 gives 'x'" in refused.err
