"""smtriton deploy --serverless, against the AWS stand-in.

The image's size comes from ECR before anything is created. moto reports an
image's size as its manifest's config size (real ECR adds up the layers), so
the tests push manifests whose config says the size they need.
"""

from __future__ import annotations

import hashlib
import json
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
GIB = 1024**3

pytestmark = pytest.mark.usefixtures("aws_env")


@pytest.fixture
def name() -> str:
    return f"sl-{uuid.uuid4().hex[:10]}"


def pushed_image(aws: boto3.Session, size: int) -> str:
    """An image in the stand-in's ECR that ECR says is `size` bytes."""
    repository = f"triton-{uuid.uuid4().hex[:8]}"
    ecr = aws.client("ecr")
    ecr.create_repository(repositoryName=repository)
    layer = "sha256:" + hashlib.sha256(repository.encode()).hexdigest()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": size,
            "digest": layer,
        },
        "layers": [
            {
                "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "size": size,
                "digest": layer,
            }
        ],
    }
    ecr.put_image(repositoryName=repository, imageManifest=json.dumps(manifest), imageTag="v1")
    return f"{REGISTRY}/{repository}:v1"


def deploy(smtriton: Smtriton, name: str, image: str, *options: str) -> CliResult:
    return deploy_with(
        smtriton, name, "--image", image, *options, defaults={"--model-data": MODEL_DATA}
    )


def test_a_serverless_endpoint_has_memory_and_concurrency_instead_of_instances(
    smtriton: Smtriton, aws: boto3.Session, name: str
) -> None:
    image = pushed_image(aws, 3 * GIB)
    result = deploy(smtriton, name, image, "--serverless", "4096,12")
    assert result.code == 0, result.err
    assert result.out == f"{name} InService\n"
    assert "is 3.0 GB in ECR: within serverless's 10 GB" in result.err
    sagemaker = aws.client("sagemaker")
    described = sagemaker.describe_endpoint(EndpointName=name)
    config = sagemaker.describe_endpoint_config(EndpointConfigName=described["EndpointConfigName"])
    (variant,) = config["ProductionVariants"]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 4096, "MaxConcurrency": 12}
    assert "InstanceType" not in variant and "InitialInstanceCount" not in variant

    # An update stays serverless; concurrency alone defaults to SageMaker's SDK's 5.
    assert deploy(smtriton, name, image, "--serverless", "2048").code == 0
    described = sagemaker.describe_endpoint(EndpointName=name)
    config = sagemaker.describe_endpoint_config(EndpointConfigName=described["EndpointConfigName"])
    assert config["ProductionVariants"][0]["ServerlessConfig"] == {
        "MemorySizeInMB": 2048,
        "MaxConcurrency": 5,
    }


def test_an_image_too_large_for_serverless_is_refused_before_aws_is_asked(
    smtriton: Smtriton, aws: boto3.Session, name: str
) -> None:
    image = pushed_image(aws, 12 * GIB)
    models = len(aws.client("sagemaker").list_models()["Models"])
    result = deploy(smtriton, name, image, "--serverless", "6144")
    assert result.code == 1
    assert f"{image} is 12.0 GB in ECR; serverless endpoints take images up to 10 GB" in result.err
    assert len(aws.client("sagemaker").list_models()["Models"]) == models
    assert aws.client("sagemaker").list_endpoints(NameContains=name)["Endpoints"] == []


def test_an_image_ecr_does_not_know_is_deployed_with_a_warning(
    smtriton: Smtriton, name: str
) -> None:
    image = f"{REGISTRY}/not-pushed-{uuid.uuid4().hex[:6]}:v1"
    result = deploy(smtriton, name, image, "--serverless", "1024")
    assert result.code == 0, result.err
    assert f"cannot read the size of {image} from ECR" in result.err


def test_an_endpoint_on_instances_does_not_become_serverless(
    smtriton: Smtriton, aws: boto3.Session, name: str
) -> None:
    image = pushed_image(aws, GIB)
    assert deploy(smtriton, name, image, "--instance-type", INSTANCE_TYPE).code == 0
    result = deploy(smtriton, name, image, "--serverless", "2048")
    assert result.code == 1
    assert "SageMaker cannot make an endpoint on instances serverless" in result.err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--serverless", "1500"], "1500 MB is not one SageMaker offers: 1024, 2048"),
        (["--serverless", "2048,500"], "concurrency must be between 1 and 200"),
        (["--serverless", "lots"], "is not MEMORY_MB[,MAX_CONCURRENCY]"),
        (["--serverless", "2048", "--instance-type", "ml.g5.xlarge"], "no instances, and no GPUs"),
        (["--serverless", "2048", "--instance-count", "2"], "scales by itself"),
        (["--serverless", "2048", "--async-output", "s3://b-1/o/"], "serve one model in real"),
    ],
)
def test_what_serverless_cannot_have_is_refused_before_aws_is_asked(
    smtriton: Smtriton, aws: boto3.Session, name: str, options: list[str], message: str
) -> None:
    run = partial(deploy, smtriton, name, f"{REGISTRY}/triton:v1", *options)
    refused_before_anything_is_created(aws, run, message)
