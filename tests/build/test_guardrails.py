"""Deployment guardrails and the GPU driver's AMI, against the AWS stand-in.

The stand-in keeps each update's DeploymentConfig (DescribeEndpoint's and
DescribeInferenceComponent's LastDeploymentConfig), and rolls an update back
when one of its auto-rollback alarms is in ALARM, as SageMaker does when the
alarm goes off while it bakes.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from functools import partial

import boto3
import pytest

from tests.build.conftest import (
    INSTANCE_TYPE,
    MODEL_DATA,
    REGISTRY,
    CliResult,
    deploy_with,
    refused_before_anything_is_created,
)

Smtriton = Callable[..., CliResult]
NEW_IMAGE = f"{REGISTRY}/sagemaker-triton:9f8e7d6c5b4a"
GPU_4_1 = "al2023-ami-sagemaker-inference-gpu-4-1"

pytestmark = pytest.mark.usefixtures("aws_env")


@pytest.fixture
def name() -> str:
    return f"gr-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def alarm(aws: boto3.Session, name: str) -> str:
    """A CloudWatch alarm on the endpoint's 5XX errors, in OK state."""
    alarm_name = f"{name}-errors"
    aws.client("cloudwatch").put_metric_alarm(
        AlarmName=alarm_name,
        Namespace="AWS/SageMaker",
        MetricName="Invocation5XXErrors",
        Dimensions=[{"Name": "EndpointName", "Value": name}],
        Statistic="Sum",
        Period=60,
        EvaluationPeriods=1,
        Threshold=1,
        ComparisonOperator="GreaterThanOrEqualToThreshold",
    )
    return alarm_name


def go_off(aws: boto3.Session, alarm: str) -> None:
    aws.client("cloudwatch").set_alarm_state(
        AlarmName=alarm, StateValue="ALARM", StateReason="the new model answers 500"
    )


def deploy(smtriton: Smtriton, name: str, *options: str) -> CliResult:
    return deploy_with(smtriton, name, *options, defaults={"--model-data": MODEL_DATA})


def test_an_update_shifts_traffic_as_asked_on_the_ami_asked(
    smtriton: Smtriton, aws: boto3.Session, name: str, alarm: str
) -> None:
    instance = ("--instance-type", INSTANCE_TYPE)
    assert deploy(smtriton, name, *instance, "--inference-ami-version", GPU_4_1).code == 0
    sagemaker = aws.client("sagemaker")
    described = sagemaker.describe_endpoint(EndpointName=name)
    config = sagemaker.describe_endpoint_config(EndpointConfigName=described["EndpointConfigName"])
    assert config["ProductionVariants"][0]["InferenceAmiVersion"] == GPU_4_1

    result = deploy(
        smtriton, name, *instance, "--image", NEW_IMAGE, "--rollout", "canary:10%",
        "--bake", "120", "--rollback-alarm", alarm, "--termination-wait", "60",
        "--max-rollout-time", "1800",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert sagemaker.describe_endpoint(EndpointName=name)["LastDeploymentConfig"] == {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": {
                "Type": "CANARY",
                "WaitIntervalInSeconds": 120,
                "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 10},
            },
            "TerminationWaitInSeconds": 60,
            "MaximumExecutionTimeoutInSeconds": 1800,
        },
        "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": alarm}]},
    }
    linear = deploy(smtriton, name, *instance, "--rollout", "linear:1", "--bake", "0")
    assert linear.code == 0, linear.err
    routing = sagemaker.describe_endpoint(EndpointName=name)["LastDeploymentConfig"][
        "BlueGreenUpdatePolicy"
    ]["TrafficRoutingConfiguration"]
    assert routing == {
        "Type": "LINEAR",
        "WaitIntervalInSeconds": 0,
        "LinearStepSize": {"Type": "INSTANCE_COUNT", "Value": 1},
    }


def test_an_alarm_going_off_rolls_the_update_back(
    smtriton: Smtriton, aws: boto3.Session, name: str, alarm: str
) -> None:
    instance = ("--instance-type", INSTANCE_TYPE)
    assert deploy(smtriton, name, *instance).code == 0
    sagemaker = aws.client("sagemaker")
    serving = sagemaker.describe_endpoint(EndpointName=name)["EndpointConfigName"]
    go_off(aws, alarm)
    result = deploy(
        smtriton, name, *instance, "--image", NEW_IMAGE, "--rollout", "linear:50%",
        "--rollback-alarm", alarm,
    )  # fmt: skip
    assert result.code == 1
    assert f"update of endpoint {name} failed and SageMaker rolled it back to {serving}" in (
        result.err
    )
    assert f"Alarm {alarm} went into ALARM" in result.err
    assert sagemaker.describe_endpoint(EndpointName=name)["EndpointConfigName"] == serving
    configs = [
        c["EndpointConfigName"] for c in sagemaker.list_endpoint_configs()["EndpointConfigs"]
    ]
    assert [c for c in configs if c.startswith(name)] == [serving]


def test_a_component_rolls_its_copies_and_an_alarm_keeps_the_old_ones(
    smtriton: Smtriton, aws: boto3.Session, name: str, alarm: str
) -> None:
    component = ("--inference-component", f"{name}-food")
    assert deploy(smtriton, name, *component, "--copies", "4").code == 0
    result = deploy(
        smtriton, name, *component, "--image", NEW_IMAGE, "--rollout", "rolling:1",
        "--bake", "60", "--rollback-alarm", alarm,
    )  # fmt: skip
    assert result.code == 0, result.err
    sagemaker = aws.client("sagemaker")
    described = sagemaker.describe_inference_component(InferenceComponentName=f"{name}-food")
    assert described["LastDeploymentConfig"] == {
        "RollingUpdatePolicy": {
            "MaximumBatchSize": {"Type": "COPY_COUNT", "Value": 1},
            "WaitIntervalInSeconds": 60,
        },
        "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": alarm}]},
    }

    go_off(aws, alarm)
    rolled_back = deploy(
        smtriton, name, *component, "--rollout", "rolling:25%", "--rollback-alarm", alarm
    )
    assert rolled_back.code == 1
    assert "failed and SageMaker kept the copies that were serving" in rolled_back.err
    assert f"Alarm {alarm} went into ALARM" in rolled_back.err
    described = sagemaker.describe_inference_component(InferenceComponentName=f"{name}-food")
    assert described["Specification"]["Container"]["DeployedImage"]["SpecifiedImage"] == NEW_IMAGE


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--rollout", "rolling:1"], "--rollout rolling is for inference components"),
        (["--rollout", "canary"], "--rollout canary needs a size"),
        (["--rollout", "canary:150%"], "a share: 1% to 100%"),
        (["--rollout", "blue-green"], "is not all-at-once, canary:SIZE"),
        (["--rollout", "linear:10%", "--bake", "7200"], "--bake must be between 0 and 3600"),
        (["--inference-component", "c-1", "--rollout", "canary:1"], "rolling batches of copies"),
        (["--inference-ami-version", "gpu-9"], "is not one SageMaker offers: al2-ami-"),
        (["--serverless", "2048", "--rollout", "canary:10%"], "updates all at once"),
        (["--rollback-alarm", "no-such-alarm"], "no-such-alarm: no such CloudWatch alarm"),
    ],
)
def test_bad_guardrails_are_refused_before_anything_is_created(
    smtriton: Smtriton, aws: boto3.Session, name: str, options: list[str], message: str
) -> None:
    run = partial(deploy, smtriton, name, *options)
    refused_before_anything_is_created(aws, run, message, endpoint=name)


def test_a_component_endpoint_keeps_the_ami_it_was_made_with(
    smtriton: Smtriton, aws: boto3.Session, name: str
) -> None:
    made = deploy(
        smtriton, name, "--inference-component", f"{name}-a", "--inference-ami-version", GPU_4_1
    )
    assert made.code == 0, made.err
    described = aws.client("sagemaker").describe_endpoint(EndpointName=name)
    config = aws.client("sagemaker").describe_endpoint_config(
        EndpointConfigName=described["EndpointConfigName"]
    )
    assert config["ProductionVariants"][0]["InferenceAmiVersion"] == GPU_4_1
    other = deploy(
        smtriton, name, "--inference-component", f"{name}-b", "--inference-ami-version",
        "al2-ami-sagemaker-inference-gpu-3-1",
    )  # fmt: skip
    assert other.code == 1
    assert f"endpoint {name} runs {GPU_4_1}, not al2-ami-sagemaker-inference-gpu-3-1" in other.err
