"""smtriton deploy and delete against the fake AWS (moto's SageMaker and Application
Auto Scaling over HTTP, plus UpdateEndpoint and endpoint failures, see fake_aws.py)."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import boto3
import pytest
from smtriton.endpoints import wait_for_endpoint
from smtriton.progress import StillWaiting

from tests.build.conftest import (
    IMAGE,
    INSTANCE_TYPE,
    LARGER_INSTANCE_TYPE,
    ROLE_ARN,
    CliResult,
    deploy_with,
    refused_before_anything_is_created,
)

Smtriton = Callable[..., CliResult]
RESOURCE = "endpoint/{name}/variant/AllTraffic"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
FAILURE = (
    "The primary container for production variant AllTraffic did not pass the ping health check."
)

pytestmark = pytest.mark.usefixtures("aws_env")


@pytest.fixture
def name() -> str:
    """A fresh endpoint name: the fake AWS lives for the whole session."""
    return f"ep-{uuid.uuid4().hex[:10]}"


def deploy(smtriton: Smtriton, name: str, *options: str) -> CliResult:
    return deploy_with(smtriton, name, *options, defaults={"--instance-type": INSTANCE_TYPE})


def endpoint_parts(aws: boto3.Session, name: str) -> tuple[dict, dict, dict]:
    sagemaker = aws.client("sagemaker")
    endpoint = sagemaker.describe_endpoint(EndpointName=name)
    config = sagemaker.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    model = sagemaker.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
    return endpoint, config, model


def resources_of(aws: boto3.Session, name: str) -> tuple[list[str], list[str]]:
    sagemaker = aws.client("sagemaker")
    models = [m["ModelName"] for m in sagemaker.list_models()["Models"]]
    configs = [
        c["EndpointConfigName"] for c in sagemaker.list_endpoint_configs()["EndpointConfigs"]
    ]
    return (
        sorted(m for m in models if m.startswith(name + "-")),
        sorted(c for c in configs if c.startswith(name + "-")),
    )


def scaling_of(aws: boto3.Session, name: str) -> tuple[list[dict], list[dict]]:
    aas = aws.client("application-autoscaling")
    resource = RESOURCE.format(name=name)
    targets = aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[resource])
    policies = aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=resource)
    return targets["ScalableTargets"], policies["ScalingPolicies"]


# --- create -------------------------------------------------------------------------------


def test_single_model_endpoint(smtriton: Smtriton, aws: boto3.Session, name: str) -> None:
    result = deploy(
        smtriton,
        name,
        "--model-data",
        "s3://models-bucket/ncf/model.tar.gz",
        "--default-model",
        "ncf_food",
        "--env",
        "SAGEMAKER_TRITON_LOG_VERBOSE=false",
        "--instance-count",
        "2",
    )
    assert result.code == 0, result.err
    assert result.out == f"{name} InService\n"
    assert f"endpoint {name}: Creating" in result.err
    assert f"endpoint {name}: InService" in result.err

    endpoint, config, model = endpoint_parts(aws, name)
    assert endpoint["EndpointStatus"] == "InService"
    (variant,) = config["ProductionVariants"]
    assert variant["VariantName"] == "AllTraffic"
    assert variant["InstanceType"] == INSTANCE_TYPE
    assert variant["InitialInstanceCount"] == 2
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] == 600
    assert variant["ModelDataDownloadTimeoutInSeconds"] == 600
    assert model["ExecutionRoleArn"] == ROLE_ARN
    assert model["PrimaryContainer"] == {
        "Image": IMAGE,
        "Mode": "SingleModel",
        "ModelDataUrl": "s3://models-bucket/ncf/model.tar.gz",
        "Environment": {
            "SAGEMAKER_TRITON_LOG_VERBOSE": "false",
            "SAGEMAKER_TRITON_DEFAULT_MODEL_NAME": "ncf_food",
        },
    }


def test_uncompressed_model_data_is_a_model_data_source(
    smtriton: Smtriton, aws: boto3.Session, name: str
) -> None:
    result = deploy(smtriton, name, "--model-data", "s3://models-bucket/ncf/v1/")
    assert result.code == 0, result.err
    _, _, model = endpoint_parts(aws, name)
    assert "ModelDataUrl" not in model["PrimaryContainer"]
    assert model["PrimaryContainer"]["ModelDataSource"] == {
        "S3DataSource": {
            "S3Uri": "s3://models-bucket/ncf/v1/",
            "S3DataType": "S3Prefix",
            "CompressionType": "None",
        }
    }


def test_multi_model_endpoint(smtriton: Smtriton, aws: boto3.Session, name: str) -> None:
    result = deploy(
        smtriton,
        name,
        "--multi-model",
        "s3://models-bucket/mme",
        "--startup-timeout",
        "1200",
        "--download-timeout",
        "900",
    )
    assert result.code == 0, result.err
    _, config, model = endpoint_parts(aws, name)
    assert model["PrimaryContainer"]["Mode"] == "MultiModel"
    assert model["PrimaryContainer"]["ModelDataUrl"] == "s3://models-bucket/mme/"
    assert model["PrimaryContainer"]["Environment"] == {"SAGEMAKER_MULTI_MODEL": "true"}
    (variant,) = config["ProductionVariants"]
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] == 1200
    assert variant["ModelDataDownloadTimeoutInSeconds"] == 900


def test_auto_scaling_is_attached_once_in_service(
    smtriton: Smtriton, aws: boto3.Session, name: str
) -> None:
    result = deploy(
        smtriton,
        name,
        "--model-data",
        "s3://models-bucket/m/model.tar.gz",
        "--min-instances",
        "1",
        "--max-instances",
        "4",
        "--target-invocations",
        "250",
        "--scale-in-cooldown",
        "600",
    )
    assert result.code == 0, result.err
    (target,), (policy,) = scaling_of(aws, name)
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 4)
    assert target["ScalableDimension"] == DIMENSION
    assert policy["PolicyName"] == f"{name}-invocations-per-instance"
    assert policy["PolicyType"] == "TargetTrackingScaling"
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["TargetValue"] == 250.0
    assert tracking["PredefinedMetricSpecification"] == {
        "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"
    }
    assert (tracking["ScaleInCooldown"], tracking["ScaleOutCooldown"]) == (600, 60)
    assert "1-4 instances, target 250 invocations/instance/minute" in result.err


def test_no_wait_returns_while_creating(smtriton: Smtriton, aws: boto3.Session, name: str) -> None:
    result = deploy(smtriton, name, "--model-data", "s3://models-bucket/m.tar.gz", "--no-wait")
    assert result.code == 0, result.err
    assert result.out == f"{name}\n"
    assert "not waiting" in result.err
    assert aws.client("sagemaker").describe_endpoint(EndpointName=name)["EndpointStatus"] in {
        "Creating",
        "InService",
    }


# --- update -------------------------------------------------------------------------------


def test_update_in_place_replaces_config_and_cleans_up(
    smtriton: Smtriton, aws: boto3.Session, name: str
) -> None:
    assert deploy(smtriton, name, "--model-data", "s3://models-bucket/v1.tar.gz").code == 0
    first_models, first_configs = resources_of(aws, name)

    result = deploy(
        smtriton, name, "--model-data", "s3://models-bucket/v2.tar.gz", "--instance-count", "3"
    )
    assert result.code == 0, result.err
    assert f"updating endpoint {name} (from {first_configs[0]})" in result.err
    assert f"endpoint {name}: Updating" in result.err

    endpoint, config, model = endpoint_parts(aws, name)
    assert endpoint["EndpointConfigName"] != first_configs[0]
    assert config["ProductionVariants"][0]["InitialInstanceCount"] == 3
    assert model["PrimaryContainer"]["ModelDataUrl"] == "s3://models-bucket/v2.tar.gz"
    models, configs = resources_of(aws, name)
    assert configs == [endpoint["EndpointConfigName"]], "the replaced configuration is deleted"
    assert len(models) == 1 and models != first_models


def test_update_can_keep_the_previous_configuration(
    smtriton: Smtriton, aws: boto3.Session, name: str
) -> None:
    assert deploy(smtriton, name, "--model-data", "s3://models-bucket/v1.tar.gz").code == 0
    result = deploy(
        smtriton, name, "--model-data", "s3://models-bucket/v2.tar.gz", "--keep-previous"
    )
    assert result.code == 0, result.err
    models, configs = resources_of(aws, name)
    assert (len(models), len(configs)) == (2, 2)


def test_update_changing_instance_type_detaches_and_restores_scaling(
    smtriton: Smtriton, aws: boto3.Session, name: str
) -> None:
    scaling = ("--max-instances", "5", "--min-instances", "2")
    assert deploy(smtriton, name, "--model-data", "s3://b-1/m.tar.gz", *scaling).code == 0
    result = deploy(
        smtriton, name, "--model-data", "s3://b-1/m.tar.gz", "--instance-type", LARGER_INSTANCE_TYPE
    )
    assert result.code == 0, result.err
    assert result.err.index("detached") < result.err.index("updating endpoint")
    assert "restored" in result.err
    (target,), (policy,) = scaling_of(aws, name)
    assert (target["MinCapacity"], target["MaxCapacity"]) == (2, 5)
    assert policy["PolicyName"] == f"{name}-invocations-per-instance"
    _, config, _ = endpoint_parts(aws, name)
    assert config["ProductionVariants"][0]["InstanceType"] == LARGER_INSTANCE_TYPE


def test_no_wait_is_refused_when_scaling_must_come_off_for_the_update(
    smtriton: Smtriton, aws: boto3.Session, name: str
) -> None:
    assert (
        deploy(smtriton, name, "--model-data", "s3://b-1/m.tar.gz", "--max-instances", "3").code
        == 0
    )
    before = resources_of(aws, name)
    result = deploy(
        smtriton,
        name,
        "--model-data",
        "s3://b-1/m.tar.gz",
        "--instance-type",
        LARGER_INSTANCE_TYPE,
        "--no-wait",
    )
    assert result.code == 1
    assert "changes its instance type" in result.err and "drop --no-wait" in result.err
    assert resources_of(aws, name) == before
    (target,), _ = scaling_of(aws, name)
    assert target["MaxCapacity"] == 3


def test_update_keeping_instance_type_leaves_scaling_attached(
    smtriton: Smtriton, aws: boto3.Session, name: str
) -> None:
    assert (
        deploy(smtriton, name, "--model-data", "s3://b-1/m.tar.gz", "--max-instances", "3").code
        == 0
    )
    result = deploy(smtriton, name, "--model-data", "s3://b-1/m2.tar.gz", "--max-instances", "6")
    assert result.code == 0, result.err
    assert "detached" not in result.err
    (target,), _ = scaling_of(aws, name)
    assert target["MaxCapacity"] == 6


# --- failures -----------------------------------------------------------------------------


def test_a_failed_endpoint_shows_sagemakers_reason(
    smtriton: Smtriton, aws: boto3.Session, name: str
) -> None:
    result = deploy(
        smtriton,
        name,
        "--model-data",
        "s3://models-bucket/broken.tar.gz",
        "--env",
        f"FAKE_SAGEMAKER_FAILURE_REASON={FAILURE}",
    )
    assert result.code == 1
    assert f"smtriton deploy: error: endpoint {name} is Failed: {FAILURE}" in result.err
    assert f"/aws/sagemaker/Endpoints/{name}" in result.err
    assert f"smtriton delete --endpoint-name {name}" in result.err
    assert "Traceback" not in result.err
    assert result.out == ""


def test_a_failed_update_rolls_back_and_discards_the_new_resources(
    smtriton: Smtriton, aws: boto3.Session, name: str
) -> None:
    assert deploy(smtriton, name, "--model-data", "s3://models-bucket/good.tar.gz").code == 0
    good_models, good_configs = resources_of(aws, name)

    result = deploy(
        smtriton,
        name,
        "--model-data",
        "s3://models-bucket/bad.tar.gz",
        "--env",
        f"FAKE_SAGEMAKER_FAILURE_REASON={FAILURE}",
    )
    assert result.code == 1
    assert f"endpoint {name}: RollingBack" in result.err
    assert (
        f"update of endpoint {name} failed and SageMaker rolled it back to {good_configs[0]}: "
        f"{FAILURE}"
    ) in result.err
    endpoint, _, _ = endpoint_parts(aws, name)
    assert endpoint["EndpointStatus"] == "InService"
    assert endpoint["EndpointConfigName"] == good_configs[0]
    assert resources_of(aws, name) == (good_models, good_configs)


def test_a_refused_configuration_leaves_no_model_behind(
    smtriton: Smtriton, aws: boto3.Session, name: str
) -> None:
    """SageMaker rejects the configuration after the model exists: the model goes too."""
    result = deploy(
        smtriton,
        name,
        "--model-data",
        "s3://models-bucket/m.tar.gz",
        "--instance-type",
        "ml.zz.xlarge",
    )
    assert result.code == 1
    assert "smtriton deploy: error: CreateEndpointConfig failed: ValidationException" in result.err
    assert "Traceback" not in result.err
    assert resources_of(aws, name) == ([], [])


def test_a_failed_endpoint_cannot_be_updated(
    smtriton: Smtriton, aws: boto3.Session, name: str
) -> None:
    failing = ("--env", f"FAKE_SAGEMAKER_FAILURE_REASON={FAILURE}")
    assert deploy(smtriton, name, "--model-data", "s3://models-bucket/x.tar.gz", *failing).code == 1
    before = resources_of(aws, name)
    result = deploy(smtriton, name, "--model-data", "s3://models-bucket/x.tar.gz")
    assert result.code == 1
    assert f"endpoint {name} is Failed ({FAILURE}) and cannot be updated" in result.err
    assert resources_of(aws, name) == before


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--role", "SageMakerRole"], "is not an IAM role ARN"),
        (["--model-data", "models/model.tar.gz"], "is not an S3 URI"),
        (["--model-data", "s3://models-bucket"], "for a prefix of tarballs, one model each"),
        (
            ["--multi-model", "s3://models-bucket/mme/", "--default-model", "a"],
            "drop --default-model",
        ),
        (["--instance-type", "g5.xlarge"], "is not like ml.g5.xlarge"),
        (["--instance-count", "0"], "--instance-count must be at least 1"),
        (["--startup-timeout", "7200"], "--startup-timeout must be between 60 and 3600"),
        (["--env", "1BAD=x"], "is not NAME=VALUE"),
        (["--max-instances", "2", "--no-wait"], "drop --no-wait"),
        (["--max-instances", "2", "--min-instances", "3"], "is below --min-instances"),
        (["--endpoint-name", "bad_name"], "invalid endpoint name 'bad_name'"),
    ],
)
def test_bad_options_are_refused_before_anything_is_created(
    smtriton: Smtriton, aws: boto3.Session, name: str, options: list[str], message: str
) -> None:
    run = partial(deploy, smtriton, name, *options)
    refused_before_anything_is_created(aws, run, message)


def test_model_data_and_multi_model_exclude_each_other(smtriton: Smtriton, name: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        deploy(smtriton, name, "--model-data", "s3://a-b/m.tar.gz", "--multi-model", "s3://a-b/p/")
    assert exit_info.value.code == 2


def test_waiting_gives_up_with_advice_and_without_failing_the_endpoint() -> None:
    class AlwaysCreating:
        def describe_endpoint(self, EndpointName: str) -> dict[str, Any]:
            return {"EndpointStatus": "Creating", "EndpointConfigName": "c"}

    ticks = itertools.count(step=30.0)
    with pytest.raises(StillWaiting) as raised:
        wait_for_endpoint(
            AlwaysCreating(),
            "slow",
            expected_config="c",
            timeout_s=120,
            poll_s=1,
            sleep=lambda _: None,
            clock=lambda: next(ticks),
        )
    assert "still Creating after 2m" in str(raised.value)
    assert "describe-endpoint --endpoint-name slow" in str(raised.value)


# --- delete -------------------------------------------------------------------------------


def test_delete_removes_endpoint_config_models_and_scaling(
    smtriton: Smtriton, aws: boto3.Session, name: str
) -> None:
    assert (
        deploy(smtriton, name, "--model-data", "s3://b-1/m.tar.gz", "--max-instances", "2").code
        == 0
    )
    (model,), (config,) = resources_of(aws, name)

    result = smtriton("delete", "--endpoint-name", name, "--wait", "--poll-interval", "0.01")
    assert result.code == 0, result.err
    assert result.out.splitlines() == [
        f"deleted scalable-target/{RESOURCE.format(name=name)}",
        f"deleted endpoint/{name}",
        f"deleted endpoint-config/{config}",
        f"deleted model/{model}",
    ]
    assert resources_of(aws, name) == ([], [])
    assert scaling_of(aws, name) == ([], [])
    sagemaker = aws.client("sagemaker")
    with pytest.raises(sagemaker.exceptions.ClientError, match="Could not find endpoint"):
        sagemaker.describe_endpoint(EndpointName=name)


def test_delete_of_a_missing_endpoint_says_so(smtriton: Smtriton, name: str) -> None:
    result = smtriton("delete", "--endpoint-name", name)
    assert result.code == 1
    assert f"smtriton delete: error: there is no endpoint {name} in us-east-1" in result.err
