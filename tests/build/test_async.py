"""smtriton deploy --async-output and invoke --async, against the AWS stand-in.

The stand-in (fake_aws.py) queues each InvokeEndpointAsync, reads its body
from its S3, answers (an echo here: these endpoints run no container; the
rehearsal's runs a real serve) into S3OutputPath, a failure into
S3FailurePath, and publishes SageMaker's notification to the SNS topics,
which tests read through an SQS queue subscribed to them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import boto3
import pytest

from tests.build.conftest import (
    IMAGE,
    INSTANCE_TYPE,
    MODEL_DATA,
    ROLE_ARN,
    CliResult,
    deploy_with,
    refused_before_anything_is_created,
)

Smtriton = Callable[..., CliResult]

pytestmark = pytest.mark.usefixtures("aws_env")


@pytest.fixture
def name() -> str:
    return f"async-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def bucket(aws: boto3.Session) -> str:
    name = f"answers-{uuid.uuid4().hex[:12]}"
    aws.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture
def topics(aws: boto3.Session) -> tuple[str, str, str]:
    """A success and an error topic, and an SQS queue subscribed to both."""
    sns, sqs = aws.client("sns"), aws.client("sqs")
    suffix = uuid.uuid4().hex[:8]
    success = sns.create_topic(Name=f"answers-{suffix}")["TopicArn"]
    error = sns.create_topic(Name=f"failures-{suffix}")["TopicArn"]
    queue = sqs.create_queue(QueueName=f"notifications-{suffix}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    for topic in (success, error):
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    return success, error, queue


def notifications(aws: boto3.Session, queue: str) -> list[dict[str, Any]]:
    sqs = aws.client("sqs")
    found = []
    for _ in range(20):
        messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        for message in messages.get("Messages", []):
            envelope = json.loads(message["Body"])
            found.append({"topic": envelope["TopicArn"], **json.loads(envelope["Message"])})
        if found:
            return found
    return found


def deploy(smtriton: Smtriton, name: str, *options: str) -> CliResult:
    defaults = {"--instance-type": INSTANCE_TYPE, "--model-data": MODEL_DATA}
    return deploy_with(smtriton, name, *options, defaults=defaults)


def test_an_asynchronous_endpoint_answers_through_s3_and_sns(
    smtriton: Smtriton, aws: boto3.Session, name: str, bucket: str, topics: tuple[str, str, str]
) -> None:
    success, error, queue = topics
    result = deploy(
        smtriton,
        name,
        "--async-output",
        f"s3://{bucket}/answers/",
        "--async-failure",
        f"s3://{bucket}/failures/",
        "--async-success-topic",
        success,
        "--async-error-topic",
        error,
        "--async-max-concurrency",
        "2",
    )
    assert result.code == 0, result.err
    sagemaker = aws.client("sagemaker")
    described = sagemaker.describe_endpoint(EndpointName=name)
    config = sagemaker.describe_endpoint_config(EndpointConfigName=described["EndpointConfigName"])
    assert config["AsyncInferenceConfig"] == {
        "OutputConfig": {
            "S3OutputPath": f"s3://{bucket}/answers/",
            "S3FailurePath": f"s3://{bucket}/failures/",
            "NotificationConfig": {"SuccessTopic": success, "ErrorTopic": error},
        },
        "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 2},
    }
    model = sagemaker.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
    assert model["PrimaryContainer"]["Environment"]["SERVE_ASYNC_INFERENCE"] == "true"

    body = '{"inputs": [{"name": "user_id", "shape": [1, 1], "datatype": "INT64", "data": [7]}]}'
    answered = smtriton(
        "invoke", "--endpoint-name", name, "--async", "--body", body, "--poll-interval", "0.05"
    )
    assert answered.code == 0, answered.err
    assert json.loads(answered.out) == {
        "endpoint": name,
        "body": body,
        "Content-Type": "application/json",
    }
    assert f"its answer goes to s3://{bucket}/answers/" in answered.err
    # The body went to S3 first, beside the answers.
    inputs = aws.client("s3").list_objects_v2(Bucket=bucket, Prefix=f"async-inputs/{name}/")
    assert len(inputs["Contents"]) == 1
    (note,) = notifications(aws, queue)
    assert note["topic"] == success
    assert note["invocationStatus"] == "Completed"
    assert note["requestParameters"]["endpointName"] == name
    assert note["responseParameters"]["outputLocation"].startswith(f"s3://{bucket}/answers/")

    # A body SageMaker cannot read: the failure is where the configuration says.
    missing = f"s3://{bucket}/nowhere/request.json"
    failed = smtriton(
        "invoke",
        "--endpoint-name",
        name,
        "--async",
        "--input-location",
        missing,
        "--poll-interval",
        "0.05",
    )
    assert failed.code == 1
    assert f"failed (s3://{bucket}/failures/" in failed.err
    assert "could not read the input" in failed.err
    (note,) = notifications(aws, queue)
    assert (note["topic"], note["invocationStatus"]) == (error, "Failed")
    assert note["failureLocation"].startswith(f"s3://{bucket}/failures/")


def test_no_wait_prints_where_the_answer_will_be(
    smtriton: Smtriton, aws: boto3.Session, name: str, bucket: str
) -> None:
    assert deploy(smtriton, name, "--async-output", f"s3://{bucket}/out").code == 0
    result = smtriton("invoke", "--endpoint-name", name, "--async", "--no-wait", "--body", "{}")
    assert result.code == 0, result.err
    location = result.out.strip()
    assert location.startswith(f"s3://{bucket}/out/") and location.endswith(".out")


def test_async_invoke_of_a_real_time_endpoint_says_what_to_do(
    smtriton: Smtriton, name: str
) -> None:
    assert deploy(smtriton, name).code == 0
    result = smtriton("invoke", "--endpoint-name", name, "--async", "--body", "{}")
    assert result.code == 1
    assert f"endpoint {name} is not asynchronous" in result.err
    assert "--async-output" in result.err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--async-output", "s3://b-1/o/", "--async-max-concurrency", "0"], "between 1 and 1000"),
        (["--async-output", "s3://b-1/o/", "--async-success-topic", "answers"], "not an SNS"),
        (["--async-failure", "s3://b-1/f/"], "--async-failure need --async-output"),
        (["--async-output", "answers/"], "is not an S3 URI"),
    ],
)
def test_bad_async_options_are_refused_before_anything_is_created(
    smtriton: Smtriton, aws: boto3.Session, name: str, options: list[str], message: str
) -> None:
    run = partial(deploy, smtriton, name, *options)
    refused_before_anything_is_created(aws, run, message)


def test_async_and_multi_model_do_not_mix(smtriton: Smtriton, name: str) -> None:
    result = smtriton(
        "deploy", "--endpoint-name", name, "--image", IMAGE, "--role", ROLE_ARN,
        "--multi-model", "s3://b-1/mme/", "--async-output", "s3://b-1/o/",
    )  # fmt: skip
    assert result.code == 1
    assert "an asynchronous endpoint serves one model" in result.err
