"""smtriton deploy/invoke/delete with --inference-component, against the AWS stand-in.

The stand-in (fake_sagemaker.py) adds inference components to moto, with the
rules the tests lean on: components only on an endpoint made for them (role,
no model), DeleteEndpoint refused while components remain, a component with
no copies refusing invocations and counting NoCapacityInvocationFailures,
and alarms on that metric running their step scaling policies.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import boto3
import pytest

from tests.build.conftest import (
    IMAGE,
    INSTANCE_TYPE,
    REGISTRY,
    ROLE_ARN,
    CliResult,
    deploy_with,
    refused_before_anything_is_created,
)

Smtriton = Callable[..., CliResult]
NEW_IMAGE = f"{REGISTRY}/sagemaker-triton:9f8e7d6c5b4a"
COPY_DIMENSION = "sagemaker:inference-component:DesiredCopyCount"
FAILURE = "The container of inference component did not pass the ping health check."

pytestmark = pytest.mark.usefixtures("aws_env")


@pytest.fixture
def name() -> str:
    return f"ic-{uuid.uuid4().hex[:10]}"


def deploy(smtriton: Smtriton, endpoint: str, component: str, *options: str) -> CliResult:
    return deploy_with(smtriton, endpoint, "--inference-component", component, *options)


def endpoint_config(aws: boto3.Session, endpoint: str) -> dict[str, Any]:
    sagemaker = aws.client("sagemaker")
    described = sagemaker.describe_endpoint(EndpointName=endpoint)
    return sagemaker.describe_endpoint_config(EndpointConfigName=described["EndpointConfigName"])


def component_of(aws: boto3.Session, component: str) -> dict[str, Any]:
    return aws.client("sagemaker").describe_inference_component(InferenceComponentName=component)


def scaling_of(aws: boto3.Session, component: str) -> tuple[list[dict], list[dict]]:
    aas = aws.client("application-autoscaling")
    resource = f"inference-component/{component}"
    targets = aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[resource])
    policies = aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=resource)
    return targets["ScalableTargets"], policies["ScalingPolicies"]


def alarms_of(aws: boto3.Session, component: str) -> list[dict]:
    return aws.client("cloudwatch").describe_alarms(AlarmNamePrefix=component)["MetricAlarms"]


def test_a_component_gets_an_endpoint_made_for_components(
    smtriton: Smtriton, aws: boto3.Session, name: str
) -> None:
    result = deploy(
        smtriton,
        name,
        f"{name}-food",
        "--model-data",
        "s3://models-bucket/ncf/model.tar.gz",
        "--default-model",
        "ncf_food",
        "--instance-type",
        INSTANCE_TYPE,
        "--cpus",
        "2",
        "--accelerators",
        "1",
        "--memory",
        "4096",
        "--copies",
        "2",
        "--startup-timeout",
        "900",
    )
    assert result.code == 0, result.err
    assert result.out == f"{name} {name}-food InService\n"
    assert f"endpoint {name}: InService" in result.err
    assert f"inference component {name}-food: Creating" in result.err

    config = endpoint_config(aws, name)
    assert config["ExecutionRoleArn"] == ROLE_ARN
    (variant,) = config["ProductionVariants"]
    assert "ModelName" not in variant
    assert variant["InstanceType"] == INSTANCE_TYPE
    assert variant["InitialInstanceCount"] == 1
    assert variant["RoutingConfig"] == {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"}
    assert "ManagedInstanceScaling" not in variant

    component = component_of(aws, f"{name}-food")
    assert component["EndpointName"] == name
    assert component["InferenceComponentStatus"] == "InService"
    spec = component["Specification"]
    assert spec["Container"]["DeployedImage"]["SpecifiedImage"] == IMAGE
    assert spec["Container"]["ArtifactUrl"] == "s3://models-bucket/ncf/model.tar.gz"
    assert spec["Container"]["Environment"] == {"SAGEMAKER_TRITON_DEFAULT_MODEL_NAME": "ncf_food"}
    assert spec["ComputeResourceRequirements"] == {
        "MinMemoryRequiredInMb": 4096,
        "NumberOfCpuCoresRequired": 2.0,
        "NumberOfAcceleratorDevicesRequired": 1.0,
    }
    assert spec["StartupParameters"] == {
        "ContainerStartupHealthCheckTimeoutInSeconds": 900,
        "ModelDataDownloadTimeoutInSeconds": 600,
    }
    assert component["RuntimeConfig"]["DesiredCopyCount"] == 2


def test_a_second_component_shares_the_endpoint_and_updates_change_image_or_copies(
    smtriton: Smtriton, aws: boto3.Session, name: str
) -> None:
    food, fashion = f"{name}-food", f"{name}-fashion"
    assert deploy(smtriton, name, food, "--model-data", "s3://b-1/food.tar.gz").code == 0
    first_config = endpoint_config(aws, name)["EndpointConfigName"]
    result = deploy(smtriton, name, fashion, "--model-data", "s3://b-1/fashion.tar.gz")
    assert result.code == 0, result.err
    assert "creating endpoint" not in result.err
    assert endpoint_config(aws, name)["EndpointConfigName"] == first_config
    listed = aws.client("sagemaker").list_inference_components(EndpointNameEquals=name)
    assert sorted(c["InferenceComponentName"] for c in listed["InferenceComponents"]) == sorted(
        [food, fashion]
    )

    # A new image: the copies stay as they are.
    assert (
        deploy(smtriton, name, food, "--model-data", "s3://b-1/food.tar.gz", "--copies", "3").code
        == 0
    )
    result = deploy(
        smtriton, name, food, "--image", NEW_IMAGE, "--model-data", "s3://b-1/food.tar.gz"
    )
    assert result.code == 0, result.err
    assert f"updating inference component {food}" in result.err
    assert f"inference component {food}: Updating" in result.err
    component = component_of(aws, food)
    assert component["Specification"]["Container"]["DeployedImage"]["SpecifiedImage"] == NEW_IMAGE
    assert component["RuntimeConfig"]["DesiredCopyCount"] == 3
    other = component_of(aws, fashion)
    assert other["Specification"]["Container"]["DeployedImage"]["SpecifiedImage"] == IMAGE


def test_uncompressed_model_data_comes_through_a_model_of_the_components_own(
    smtriton: Smtriton, aws: boto3.Session, name: str
) -> None:
    component = f"{name}-food"
    result = deploy(smtriton, name, component, "--model-data", "s3://b-1/ncf/v1/")
    assert result.code == 0, result.err
    sagemaker = aws.client("sagemaker")
    first = component_of(aws, component)["Specification"]["ModelName"]
    assert first.startswith(f"{component}-")
    source = sagemaker.describe_model(ModelName=first)["PrimaryContainer"]["ModelDataSource"]
    assert source["S3DataSource"]["S3DataType"] == "S3Prefix"
    assert source["S3DataSource"]["CompressionType"] == "None"

    # An update names a new model; the one it replaces goes.
    assert deploy(smtriton, name, component, "--model-data", "s3://b-1/ncf/v2/").code == 0
    second = component_of(aws, component)["Specification"]["ModelName"]
    assert second != first
    models = [
        m["ModelName"] for m in sagemaker.list_models()["Models"] if component in m["ModelName"]
    ]
    assert models == [second]

    result = smtriton("delete", "--endpoint-name", name, "--poll-interval", "0.01")
    assert result.code == 0, result.err
    assert f"deleted model/{second}" in result.out
    assert not [m for m in sagemaker.list_models()["Models"] if component in m["ModelName"]]


def test_copies_scale_to_zero_and_the_alarm_wakes_them(
    smtriton: Smtriton, aws: boto3.Session, name: str
) -> None:
    component = f"{name}-food"
    result = deploy(
        smtriton,
        name,
        component,
        "--model-data",
        "s3://b-1/food.tar.gz",
        "--min-copies",
        "0",
        "--max-copies",
        "4",
        "--max-instances",
        "2",
        "--target-invocations",
        "30",
    )
    assert result.code == 0, result.err
    variant = endpoint_config(aws, name)["ProductionVariants"][0]
    assert variant["ManagedInstanceScaling"] == {
        "Status": "ENABLED",
        "MinInstanceCount": 0,
        "MaxInstanceCount": 2,
    }
    (target,), policies = scaling_of(aws, component)
    assert (target["MinCapacity"], target["MaxCapacity"]) == (0, 4)
    assert target["ScalableDimension"] == COPY_DIMENSION
    by_type = {policy["PolicyType"]: policy for policy in policies}
    tracking = by_type["TargetTrackingScaling"]["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["TargetValue"] == 30.0
    assert tracking["PredefinedMetricSpecification"] == {
        "PredefinedMetricType": "SageMakerInferenceComponentInvocationsPerCopy"
    }
    step = by_type["StepScaling"]
    assert step["StepScalingPolicyConfiguration"]["StepAdjustments"] == [
        {"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}
    ]
    (alarm,) = alarms_of(aws, component)
    assert alarm["MetricName"] == "NoCapacityInvocationFailures"
    assert alarm["Namespace"] == "AWS/SageMaker"
    assert alarm["Dimensions"] == [{"Name": "InferenceComponentName", "Value": component}]
    assert alarm["AlarmActions"] == [step["PolicyARN"]]
    assert "scale to zero" in result.err

    # Idle: auto scaling takes the copies to zero (done here as its scale-in would).
    sagemaker = aws.client("sagemaker")
    sagemaker.update_inference_component_runtime_config(
        InferenceComponentName=component, DesiredRuntimeConfig={"CopyCount": 0}
    )
    while component_of(aws, component)["InferenceComponentStatus"] != "InService":
        pass
    invoke = ("invoke", "--endpoint-name", name, "--inference-component", component, "--body", "{}")
    refused = smtriton(*invoke)
    assert refused.code == 1
    assert f"inference component {component} has no copy to answer" in refused.err
    # That refusal counted one NoCapacityInvocationFailures: the alarm ran the step policy.
    woken = smtriton(*invoke, "--wait-for-capacity", "30")
    assert woken.code == 0, woken.err
    assert f'"inference_component": "{component}"' in woken.out
    assert component_of(aws, component)["RuntimeConfig"]["DesiredCopyCount"] == 1


def test_an_endpoint_for_components_needs_the_component_named(
    smtriton: Smtriton, name: str
) -> None:
    assert deploy(smtriton, name, f"{name}-food", "--model-data", "s3://b-1/f.tar.gz").code == 0
    result = smtriton("invoke", "--endpoint-name", name, "--body", "{}")
    assert result.code == 1
    assert "Inference Component Name header is required" in result.err
    named = smtriton(
        "invoke", "--endpoint-name", name, "--inference-component", f"{name}-food", "--body", "{}"
    )
    assert named.code == 0, named.err


def test_delete_removes_components_with_their_scaling_then_the_endpoint(
    smtriton: Smtriton, aws: boto3.Session, name: str
) -> None:
    food, fashion = f"{name}-food", f"{name}-fashion"
    scaling = ("--min-copies", "0", "--max-copies", "2")
    assert deploy(smtriton, name, food, "--model-data", "s3://b-1/f.tar.gz", *scaling).code == 0
    assert deploy(smtriton, name, fashion, "--model-data", "s3://b-1/g.tar.gz").code == 0
    config = endpoint_config(aws, name)["EndpointConfigName"]

    # One component alone: the endpoint and the other stay.
    result = smtriton(
        "delete",
        "--endpoint-name",
        name,
        "--inference-component",
        fashion,
        "--poll-interval",
        "0.01",
    )
    assert result.code == 0, result.err
    assert result.out.splitlines() == [f"deleted inference-component/{fashion}"]
    assert component_of(aws, food)["InferenceComponentStatus"] == "InService"

    result = smtriton("delete", "--endpoint-name", name, "--wait", "--poll-interval", "0.01")
    assert result.code == 0, result.err
    assert result.out.splitlines() == [
        f"deleted scalable-target/inference-component/{food}",
        f"deleted alarm/{food}-no-capacity",
        f"deleted inference-component/{food}",
        f"deleted endpoint/{name}",
        f"deleted endpoint-config/{config}",
    ]
    assert scaling_of(aws, food) == ([], [])
    assert alarms_of(aws, food) == []


def test_the_stand_in_refuses_to_delete_an_endpoint_that_hosts_components(
    smtriton: Smtriton, aws: boto3.Session, name: str
) -> None:
    """Why delete removes components first: SageMaker keeps the endpoint otherwise."""
    assert deploy(smtriton, name, f"{name}-food", "--model-data", "s3://b-1/f.tar.gz").code == 0
    sagemaker = aws.client("sagemaker")
    with pytest.raises(sagemaker.exceptions.ClientError, match="hosts inference components"):
        sagemaker.delete_endpoint(EndpointName=name)


def test_a_failed_component_shows_sagemakers_reason(smtriton: Smtriton, name: str) -> None:
    result = deploy(
        smtriton,
        name,
        f"{name}-bad",
        "--model-data",
        "s3://b-1/f.tar.gz",
        "--env",
        f"FAKE_SAGEMAKER_FAILURE_REASON={FAILURE}",
    )
    assert result.code == 1
    assert f"inference component {name}-bad is Failed: {FAILURE}" in result.err
    assert "/aws/sagemaker/InferenceComponents/" in result.err
    assert "Traceback" not in result.err


def test_components_and_models_do_not_share_an_endpoint(smtriton: Smtriton, name: str) -> None:
    model = smtriton(
        "deploy",
        "--endpoint-name",
        name,
        "--image",
        IMAGE,
        "--role",
        ROLE_ARN,
        "--instance-type",
        INSTANCE_TYPE,
        "--model-data",
        "s3://b-1/m.tar.gz",
        "--poll-interval",
        "0.01",
    )
    assert model.code == 0, model.err
    result = deploy(smtriton, name, f"{name}-food", "--model-data", "s3://b-1/f.tar.gz")
    assert result.code == 1
    assert f"endpoint {name} serves a model of its own" in result.err

    other = f"{name}-ic"
    assert deploy(smtriton, other, f"{other}-food", "--model-data", "s3://b-1/f.tar.gz").code == 0
    plain = smtriton(
        "deploy",
        "--endpoint-name",
        other,
        "--image",
        IMAGE,
        "--role",
        ROLE_ARN,
        "--model-data",
        "s3://b-1/m.tar.gz",
    )
    assert plain.code == 1
    assert f"endpoint {other} hosts inference components" in plain.err


def test_an_existing_endpoints_instances_are_kept(smtriton: Smtriton, name: str) -> None:
    assert deploy(smtriton, name, f"{name}-a", "--instance-type", INSTANCE_TYPE).code == 0
    result = deploy(smtriton, name, f"{name}-b", "--instance-type", "ml.g4dn.2xlarge")
    assert result.code == 1
    assert f"endpoint {name} runs {INSTANCE_TYPE}, not ml.g4dn.2xlarge" in result.err
    to_zero = deploy(smtriton, name, f"{name}-c", "--min-copies", "0", "--max-copies", "2")
    assert to_zero.code == 1
    assert "cannot scale to zero" in to_zero.err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--memory", "64"], "--memory must be at least 128"),
        (["--cpus", "0.1"], "--cpus must be at least 0.25"),
        (["--accelerators", "0"], "--accelerators must be at least 1"),
        (["--max-copies", "0", "--min-copies", "0"], "--max-copies (0) must be at least 1"),
        (["--copies", "5", "--max-copies", "2"], "--copies (5) must lie between"),
        (["--multi-model", "s3://b-1/mme/"], "an inference component serves one model"),
        (["--inference-component", "bad_name"], "invalid inference component name 'bad_name'"),
    ],
)
def test_bad_component_options_are_refused_before_anything_is_created(
    smtriton: Smtriton, aws: boto3.Session, name: str, options: list[str], message: str
) -> None:
    run = partial(deploy, smtriton, name, f"{name}-x", *options)
    refused_before_anything_is_created(aws, run, message, endpoint=name)


def test_component_options_need_a_component(smtriton: Smtriton, name: str) -> None:
    result = smtriton(
        "deploy", "--endpoint-name", name, "--image", IMAGE, "--role", ROLE_ARN, "--cpus", "2"
    )
    assert result.code == 1
    assert "--cpus describe an inference component: add --inference-component NAME" in result.err
