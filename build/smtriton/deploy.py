"""`smtriton deploy`: a SageMaker endpoint serving the image, in each way SageMaker hosts it.

Creates a model and an endpoint configuration, then creates the endpoint,
or updates it in place when it exists (SageMaker swaps instances without
downtime and rolls back on failure). Single-model endpoints take a
model.tar.gz (ModelDataUrl); multi-model endpoints take an S3 prefix of
tarballs (Mode=MultiModel), loaded on first use by TargetModel. With
--inference-component the model is a component of an endpoint made for
components instead (smtriton/components.py).
"""

from __future__ import annotations

import argparse
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from smtriton import autoscaling, components, ecr, endpoints
from smtriton.autoscaling import Scalable, ScalingConfig
from smtriton.aws import CLIENT_CONFIG, AwsOptions, Client, add_aws_arguments, client, open_session
from smtriton.components import ComponentConfig, CopyScaling, Resources
from smtriton.endpoints import TAG_KEY, ResourceNames
from smtriton.errors import ConfigError, SmtritonError
from smtriton.guardrails import DEFAULT_BAKE_S, Rollout, check_ami_version
from smtriton.hosting import AsyncOutput, Serverless
from smtriton.image import parse_key_values
from smtriton.progress import add_wait_arguments
from smtriton.references import ecr_registry_of
from smtriton.s3 import parse_s3_uri

log = logging.getLogger(__name__)

DEFAULT_INSTANCE_TYPE = "ml.g5.xlarge"
DEFAULT_VARIANT = "AllTraffic"
# Startup and download limits (seconds) allowed by SageMaker; the defaults
# leave room for large models, where SageMaker's own (shorter) defaults fail.
TIMEOUT_RANGE = (60, 3600)
DEFAULT_STARTUP_TIMEOUT_S = 600
DEFAULT_DOWNLOAD_TIMEOUT_S = 600
INSTANCE_TYPE_PATTERN = re.compile(r"^ml\.[a-z0-9-]+\.[a-z0-9]+$")
ROLE_ARN_PATTERN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/\S+$")
ENV_NAME_PATTERN = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]{0,1023}$")
MAX_ENV_ENTRIES = 100
MAX_ENV_VALUE = 1024
DEFAULT_MODEL_VARIABLE = "SAGEMAKER_TRITON_DEFAULT_MODEL_NAME"
MULTI_MODEL_VARIABLE = "SAGEMAKER_MULTI_MODEL"
BUSY_STATES = frozenset({"Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting"})


def check_model(
    image: str, role_arn: str, model_data: str | None, environment: dict[str, str]
) -> None:
    """What a SageMaker model refuses, checked before anything is created."""
    if not image or any(c.isspace() for c in image):
        raise ConfigError(f"invalid image URI {image!r}")
    if not ROLE_ARN_PATTERN.match(role_arn):
        raise ConfigError(
            f"--role {role_arn!r} is not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)"
        )
    if model_data:
        _, key = parse_s3_uri(model_data)
        if not key:
            raise ConfigError(
                f"--model-data {model_data!r} names a bucket: name a model.tar.gz, or a prefix "
                "(ending in /) holding the repository's files uncompressed; for a prefix of "
                "tarballs, one model each, use --multi-model"
            )
    if len(environment) > MAX_ENV_ENTRIES:
        raise ConfigError(f"at most {MAX_ENV_ENTRIES} environment variables")
    for name, value in environment.items():
        if not ENV_NAME_PATTERN.match(name) or len(value) > MAX_ENV_VALUE:
            raise ConfigError(f"environment variable {name!r} has a bad name or is too long")


def add_model_arguments(parser: argparse.ArgumentParser) -> argparse._MutuallyExclusiveGroup:
    """--image, --role, --model-data, --env and --default-model: what makes a SageMaker model.

    Returns the group --model-data is in, for options that exclude it.
    """
    parser.add_argument("--image", required=True, help="image URI in ECR (from smtriton push)")
    parser.add_argument("--role", required=True, help="SageMaker execution role ARN")
    data = parser.add_mutually_exclusive_group()
    data.add_argument(
        "--model-data",
        help="s3://.../model.tar.gz, or s3://bucket/prefix/ of the repository uncompressed "
        "(smtriton package --uncompressed uploads one)",
    )
    parser.add_argument(
        "--env", action="append", metavar="NAME=VALUE", help="container environment variable"
    )
    parser.add_argument(
        "--default-model",
        help=f"model to serve when the repository holds several ({DEFAULT_MODEL_VARIABLE})",
    )
    return data


def environment_from_args(args: argparse.Namespace) -> dict[str, str]:
    """The container's environment: --env, with --default-model as its variable."""
    environment = parse_key_values(args.env, "--env")
    if args.default_model:
        environment[DEFAULT_MODEL_VARIABLE] = args.default_model
    return environment


def container_definition(
    image: str,
    environment: dict[str, str],
    *,
    model_data: str | None = None,
    multi_model_prefix: str | None = None,
) -> dict[str, Any]:
    """A model's container: a model.tar.gz as ModelDataUrl, a prefix/ as ModelDataSource."""
    container: dict[str, Any] = {
        "Image": image,
        "Mode": "MultiModel" if multi_model_prefix else "SingleModel",
        "Environment": environment,
    }
    if model_data is not None and model_data.endswith("/"):
        container["ModelDataSource"] = {
            "S3DataSource": {
                "S3Uri": model_data,
                "S3DataType": "S3Prefix",
                "CompressionType": "None",
            }
        }
    elif multi_model_prefix or model_data:
        container["ModelDataUrl"] = multi_model_prefix or model_data
    return container


def model_request(
    model_name: str, *, role_arn: str, container: dict[str, Any], tag: str
) -> dict[str, Any]:
    return {
        "ModelName": model_name,
        "ExecutionRoleArn": role_arn,
        "PrimaryContainer": container,
        "Tags": [{"Key": TAG_KEY, "Value": tag}],
    }


@dataclass(frozen=True)
class DeployConfig:
    aws: AwsOptions
    endpoint_name: str
    image: str
    """Image URI in ECR, as `smtriton push` printed it."""
    role_arn: str
    """Execution role SageMaker assumes to pull the image and read S3."""
    model_data: str | None = None
    """s3://.../model.tar.gz, or s3://bucket/prefix/ of the repository's files, uncompressed
    (ModelDataSource: SageMaker copies them into /opt/ml/model as they are, AWS's advice for
    large models: nothing to unpack)."""
    multi_model_prefix: str | None = None
    """s3://bucket/prefix/ holding the tarballs of a multi-model endpoint."""
    instance_type: str | None = None
    """None: DEFAULT_INSTANCE_TYPE, or an existing component endpoint's own."""
    instance_count: int | None = None
    """None: 1 (serverless endpoints have none)."""
    environment: dict[str, str] = field(default_factory=dict)
    startup_timeout_s: int = DEFAULT_STARTUP_TIMEOUT_S
    download_timeout_s: int = DEFAULT_DOWNLOAD_TIMEOUT_S
    variant_name: str = DEFAULT_VARIANT
    scaling: ScalingConfig | None = None
    wait: bool = True
    wait_timeout_s: float = 3600.0
    poll_interval_s: float = 15.0
    keep_previous: bool = False
    """Keep the model and configuration an update replaces (for a manual rollback)."""
    component: ComponentConfig | None = None
    """Deploy the model as this inference component (the endpoint made for it if missing)."""
    instance_bounds: tuple[int, int] | None = None
    """A component endpoint's ManagedInstanceScaling (min, max instances)."""
    asynchronous: AsyncOutput | None = None
    """An asynchronous endpoint: where answers go (smtriton/hosting.py)."""
    serverless: Serverless | None = None
    """A serverless endpoint: memory and concurrency instead of instances."""
    rollout: Rollout | None = None
    """How an update reaches production: blue/green traffic shifting, or rolling copies."""
    ami_version: str | None = None
    """InferenceAmiVersion: the host's GPU driver (smtriton/guardrails.py)."""

    def __post_init__(self) -> None:
        endpoints.check_name("endpoint", self.endpoint_name)
        check_model(self.image, self.role_arn, self.model_data, self.environment)
        if self.model_data and self.multi_model_prefix:
            raise ConfigError("give --model-data (one model) or --multi-model (a prefix), not both")
        if self.multi_model_prefix:
            parse_s3_uri(self.multi_model_prefix)
            if DEFAULT_MODEL_VARIABLE in self.environment:
                raise ConfigError(
                    "a multi-model endpoint picks the model per request (--target-model); "
                    "drop --default-model"
                )
        if self.instance_type is not None and not INSTANCE_TYPE_PATTERN.match(self.instance_type):
            raise ConfigError(f"--instance-type {self.instance_type!r} is not like ml.g5.xlarge")
        if self.component is not None and self.multi_model:
            raise ConfigError(
                "an inference component serves one model repository: drop --multi-model, or "
                "deploy each model as a component of its own"
            )
        if self.asynchronous is not None and (self.multi_model or self.component is not None):
            raise ConfigError(
                "an asynchronous endpoint serves one model: drop --multi-model and "
                "--inference-component, or --async-output"
            )
        if self.instance_bounds is not None and not (
            0 <= self.instance_bounds[0] <= self.instance_bounds[1] and self.instance_bounds[1] >= 1
        ):
            raise ConfigError("--max-instances must be at least 1 and --min-instances")
        if self.instance_count is not None and self.instance_count < 1:
            raise ConfigError("--instance-count must be at least 1")
        if self.serverless is not None:
            self._check_serverless()
        if self.ami_version is not None:
            check_ami_version(self.ami_version)
        if self.rollout is not None:
            if self.component is not None:
                self.rollout.component_request()
            else:
                self.rollout.endpoint_request()
        for what, value in (
            ("--startup-timeout", self.startup_timeout_s),
            ("--download-timeout", self.download_timeout_s),
        ):
            if not TIMEOUT_RANGE[0] <= value <= TIMEOUT_RANGE[1]:
                raise ConfigError(
                    f"{what} must be between {TIMEOUT_RANGE[0]} and {TIMEOUT_RANGE[1]}"
                )
        if self.scaling is not None and not self.wait:
            raise ConfigError(
                "auto scaling is attached once the endpoint is InService: drop --no-wait"
            )
        if self.wait_timeout_s <= 0 or self.poll_interval_s <= 0:
            raise ConfigError("--wait-timeout and --poll-interval must be positive")

    @property
    def multi_model(self) -> bool:
        return self.multi_model_prefix is not None

    @property
    def uncompressed(self) -> bool:
        """Whether --model-data is a prefix of the repository's files (not an archive)."""
        return self.model_data is not None and self.model_data.endswith("/")

    def _check_serverless(self) -> None:
        """What a serverless endpoint cannot have, refused before AWS is asked."""
        if self.instance_type is not None or self.component is not None:
            raise ConfigError(
                "a serverless endpoint has no instances, and no GPUs: drop --instance-type "
                "and --inference-component (or --serverless)"
            )
        if self.instance_count is not None or self.scaling is not None:
            raise ConfigError(
                "a serverless endpoint scales by itself, up to its concurrency: drop "
                "--instance-count and --max-instances"
            )
        if self.multi_model or self.asynchronous is not None:
            raise ConfigError(
                "serverless endpoints serve one model in real time: drop --multi-model and "
                "--async-output (or --serverless)"
            )
        if self.ami_version is not None or self.rollout is not None:
            raise ConfigError(
                "a serverless endpoint picks its own hosts and updates all at once: drop "
                "--inference-ami-version, --rollout and --rollback-alarm"
            )

    @property
    def ami_request(self) -> dict[str, str]:
        """The variant's InferenceAmiVersion, when one was asked for."""
        return {"InferenceAmiVersion": self.ami_version} if self.ami_version else {}

    @property
    def instances(self) -> int:
        return 1 if self.instance_count is None else self.instance_count

    @property
    def instance(self) -> str:
        """The instance type to create with."""
        return self.instance_type or DEFAULT_INSTANCE_TYPE

    @property
    def container_environment(self) -> dict[str, str]:
        if self.multi_model:
            # SageMaker sets it too; stating it keeps `docker run` tests and SageMaker alike.
            return {MULTI_MODEL_VARIABLE: "true", **self.environment}
        if self.asynchronous is not None:
            return {**self.asynchronous.environment(), **self.environment}
        return dict(self.environment)

    def model_request(self, model_name: str) -> dict[str, Any]:
        return model_request(
            model_name,
            role_arn=self.role_arn,
            container=container_definition(
                self.image,
                self.container_environment,
                model_data=self.model_data,
                multi_model_prefix=self.multi_model_prefix,
            ),
            tag=self.endpoint_name,
        )

    def endpoint_config_request(self, config_name: str, model_name: str) -> dict[str, Any]:
        request: dict[str, Any] = {
            "EndpointConfigName": config_name,
            "ProductionVariants": [
                {
                    "VariantName": self.variant_name,
                    "ModelName": model_name,
                    "InstanceType": self.instance,
                    "InitialInstanceCount": self.instances,
                    "ContainerStartupHealthCheckTimeoutInSeconds": self.startup_timeout_s,
                    "ModelDataDownloadTimeoutInSeconds": self.download_timeout_s,
                    **self.ami_request,
                }
            ],
            "Tags": [{"Key": TAG_KEY, "Value": self.endpoint_name}],
        }
        if self.asynchronous is not None:
            request["AsyncInferenceConfig"] = self.asynchronous.request()
        if self.serverless is not None:
            request["ProductionVariants"] = [self.serverless.variant(self.variant_name, model_name)]
        return request

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DeployConfig:
        environment = environment_from_args(args)
        component = _component_from_args(args)
        scaling = instance_bounds = None
        if component is not None and args.max_instances is not None:
            instance_bounds = (args.min_instances, args.max_instances)
        elif args.max_instances is not None:
            scaling = ScalingConfig(
                min_instances=args.min_instances,
                max_instances=args.max_instances,
                target_invocations=args.target_invocations,
                scale_in_cooldown_s=args.scale_in_cooldown,
                scale_out_cooldown_s=args.scale_out_cooldown,
            )
        multi_model = args.multi_model
        if multi_model and not multi_model.endswith("/"):
            multi_model += "/"
        return cls(
            aws=AwsOptions.from_args(args),
            endpoint_name=args.endpoint_name,
            image=args.image,
            role_arn=args.role,
            model_data=args.model_data,
            multi_model_prefix=multi_model,
            instance_type=args.instance_type,
            instance_count=args.instance_count,
            environment=environment,
            startup_timeout_s=args.startup_timeout,
            download_timeout_s=args.download_timeout,
            scaling=scaling,
            wait=not args.no_wait,
            wait_timeout_s=args.wait_timeout,
            poll_interval_s=args.poll_interval,
            keep_previous=args.keep_previous,
            component=component,
            instance_bounds=instance_bounds,
            asynchronous=_async_from_args(args),
            serverless=Serverless.parse(args.serverless) if args.serverless else None,
            rollout=Rollout.parse(
                args.rollout,
                bake_s=args.bake,
                alarms=tuple(args.rollback_alarm or ()),
                termination_wait_s=args.termination_wait,
                max_time_s=args.max_rollout_time,
            ),
            ami_version=args.inference_ami_version,
        )


def _async_from_args(args: argparse.Namespace) -> AsyncOutput | None:
    given = [
        option
        for option, value in (
            ("--async-failure", args.async_failure),
            ("--async-success-topic", args.async_success_topic),
            ("--async-error-topic", args.async_error_topic),
            ("--async-max-concurrency", args.async_max_concurrency),
        )
        if value is not None
    ]
    if args.async_output is None:
        if given:
            raise ConfigError(f"{', '.join(given)} need --async-output s3://BUCKET/PREFIX/")
        return None
    return AsyncOutput(
        output=args.async_output,
        failure=args.async_failure,
        success_topic=args.async_success_topic,
        error_topic=args.async_error_topic,
        max_concurrency=args.async_max_concurrency,
    )


# Options that describe an inference component: refused without --inference-component.
_COMPONENT_OPTIONS = ("cpus", "accelerators", "memory", "max_memory", "copies", "max_copies")


def _component_from_args(args: argparse.Namespace) -> ComponentConfig | None:
    if args.inference_component is None:
        given = [
            f"--{o.replace('_', '-')}" for o in _COMPONENT_OPTIONS if getattr(args, o) is not None
        ]
        if given:
            raise ConfigError(
                f"{', '.join(given)} describe an inference component: add "
                "--inference-component NAME"
            )
        return None
    scaling = None
    if args.max_copies is not None:
        scaling = CopyScaling(
            min_copies=args.min_copies,
            max_copies=args.max_copies,
            target_invocations=args.target_invocations,
            scale_in_cooldown_s=args.scale_in_cooldown,
            scale_out_cooldown_s=args.scale_out_cooldown,
        )
    return ComponentConfig(
        name=args.inference_component,
        resources=Resources(
            memory_mb=args.memory if args.memory is not None else components.DEFAULT_MEMORY_MB,
            cpus=args.cpus,
            accelerators=args.accelerators,
            max_memory_mb=args.max_memory,
        ),
        copies=args.copies,
        scaling=scaling,
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "deploy",
        help="create or update a SageMaker endpoint",
        description="Create (or update in place) a real-time endpoint for one model "
        "(--model-data) or many (--multi-model), wait until it is InService, and "
        "optionally attach target-tracking auto scaling.",
    )
    add_aws_arguments(parser)
    parser.add_argument("--endpoint-name", "--name", required=True, help="endpoint name")
    data = add_model_arguments(parser)
    data.add_argument("--multi-model", metavar="S3_PREFIX", help="s3://bucket/prefix/ of tarballs")
    parser.add_argument(
        "--instance-type",
        help=f"default: {DEFAULT_INSTANCE_TYPE} (an inference component: its endpoint's type)",
    )
    parser.add_argument("--instance-count", type=int, help="default: 1")
    parser.add_argument(
        "--serverless",
        metavar="MEMORY_MB[,MAX_CONCURRENCY]",
        help="a serverless endpoint: 1024-6144 MB in 1024 steps, up to 200 concurrent "
        "invocations (default 5); CPUs only, images up to 10 GB (checked in ECR first)",
    )
    parser.add_argument(
        "--startup-timeout",
        type=int,
        default=DEFAULT_STARTUP_TIMEOUT_S,
        help="seconds for the container to pass /ping (default: %(default)s)",
    )
    parser.add_argument(
        "--download-timeout",
        type=int,
        default=DEFAULT_DOWNLOAD_TIMEOUT_S,
        help="seconds to download the model data (default: %(default)s)",
    )
    asynchronous = parser.add_argument_group(
        "asynchronous endpoint (requests queued, bodies in S3 up to 1 GB, an hour to answer)"
    )
    asynchronous.add_argument(
        "--async-output",
        metavar="S3_PREFIX",
        help="make it asynchronous: answers go to this prefix (INFERENCE_ID.out)",
    )
    asynchronous.add_argument(
        "--async-failure", metavar="S3_PREFIX", help="where failures go (default: SageMaker's)"
    )
    asynchronous.add_argument(
        "--async-success-topic", metavar="SNS_ARN", help="SNS topic told of each answer"
    )
    asynchronous.add_argument(
        "--async-error-topic", metavar="SNS_ARN", help="SNS topic told of each failure"
    )
    asynchronous.add_argument(
        "--async-max-concurrency",
        type=int,
        metavar="N",
        help="requests one instance works on at once (default: SageMaker's)",
    )
    component = parser.add_argument_group(
        "inference component (several models on one endpoint, each with its own share)"
    )
    component.add_argument(
        "--inference-component",
        metavar="NAME",
        help="deploy the model as this component, on an endpoint made for components "
        "(created when missing); deploying it again updates it",
    )
    component.add_argument("--cpus", type=float, help="CPU cores one copy needs (0.25 and up)")
    component.add_argument("--accelerators", type=int, help="GPUs (or Inferentia) one copy needs")
    component.add_argument(
        "--memory",
        type=int,
        metavar="MB",
        help=f"memory one copy needs (default: {components.DEFAULT_MEMORY_MB})",
    )
    component.add_argument("--max-memory", type=int, metavar="MB", help="memory one copy may use")
    component.add_argument(
        "--copies", type=int, help="copies to run (default 1; an update keeps the count)"
    )
    component.add_argument(
        "--min-copies",
        type=int,
        default=1,
        help="auto scaling's least copies; 0 scales to zero (default: %(default)s)",
    )
    component.add_argument(
        "--max-copies", type=int, help="auto scaling's most copies (turns copy scaling on)"
    )
    scaling = parser.add_argument_group(
        "auto scaling (instances: on when --max-instances is given; an inference component's "
        "endpoint gets managed instance scaling)"
    )
    scaling.add_argument("--min-instances", type=int, default=1, help="default: %(default)s")
    scaling.add_argument("--max-instances", type=int, help="upper bound of the instance count")
    scaling.add_argument(
        "--target-invocations",
        type=float,
        default=100.0,
        help="invocations per instance (per copy, for components) per minute to hold "
        "(default: %(default)s)",
    )
    scaling.add_argument(
        "--scale-in-cooldown", type=int, default=300, help="seconds (default: %(default)s)"
    )
    scaling.add_argument(
        "--scale-out-cooldown", type=int, default=60, help="seconds (default: %(default)s)"
    )
    add_wait_arguments(
        parser.add_argument_group("waiting"),
        flag_help="return once SageMaker accepted the request",
        timeout_s=3600.0,
        poll_s=15.0,
    )
    parser.add_argument(
        "--inference-ami-version",
        metavar="VERSION",
        help="the hosts' GPU driver: al2-ami-sagemaker-inference-gpu-3-1 (550, CUDA 12.4), "
        "al2023-ami-sagemaker-inference-gpu-4-1 (580, CUDA 13.0), ...; SageMaker's default "
        "is 470 on ml.g4dn/g5/p3/p4d",
    )
    guardrails = parser.add_argument_group(
        "deployment guardrails (how an update reaches production; real-time and "
        "asynchronous endpoints, inference components)"
    )
    guardrails.add_argument(
        "--rollout",
        metavar="WAY",
        help="all-at-once, canary:SIZE or linear:SIZE (an endpoint's blue/green traffic "
        "shifting; SIZE 10%% or an instance count), rolling:SIZE (a component's copies)",
    )
    guardrails.add_argument(
        "--bake",
        type=int,
        default=DEFAULT_BAKE_S,
        metavar="SECONDS",
        help="how long each step is watched before the next (default: %(default)s)",
    )
    guardrails.add_argument(
        "--rollback-alarm",
        action="append",
        metavar="ALARM",
        help="a CloudWatch alarm that rolls the update back when it goes off (repeatable)",
    )
    guardrails.add_argument(
        "--termination-wait", type=int, metavar="SECONDS", help="keep the old fleet this long"
    )
    guardrails.add_argument("--max-rollout-time", type=int, metavar="SECONDS", help="600 to 28800")
    parser.add_argument(
        "--keep-previous",
        action="store_true",
        help="keep the model and endpoint configuration an update replaces",
    )
    parser.set_defaults(run=run)


def _ecr_for(session: Any, image: str) -> Client:
    """An ECR client in the image's own region (it may not be the endpoint's)."""
    registry = ecr_registry_of(image)
    if registry is None:
        return client(session, "ecr")
    return session.client("ecr", region_name=registry[1], config=CLIENT_CONFIG)


def _check_becomes_serverless(sagemaker: Client, existing: dict[str, Any]) -> None:
    config = sagemaker.describe_endpoint_config(EndpointConfigName=existing["EndpointConfigName"])
    if any("ServerlessConfig" not in v for v in config["ProductionVariants"]):
        raise ConfigError(
            f"endpoint {existing['EndpointName']} runs on instances, and SageMaker cannot make "
            "an endpoint on instances serverless: use another --endpoint-name, or delete it first"
        )


def _variant(description: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((v for v in description["ProductionVariants"] if v["VariantName"] == name), None)


@dataclass(frozen=True)
class ScalingPlan:
    """Auto scaling found on the variant before an update, and whether it must come off."""

    current: autoscaling.ScalingState | None = None
    detach: bool = False
    """SageMaker refuses to change the instance type of a variant registered for scaling."""


def _plan_scaling(
    config: DeployConfig, sagemaker: Client, aas: Client, existing: dict[str, Any]
) -> ScalingPlan:
    current = autoscaling.read(aas, Scalable.variant(config.endpoint_name, config.variant_name))
    if current is None:
        return ScalingPlan()
    previous = sagemaker.describe_endpoint_config(EndpointConfigName=existing["EndpointConfigName"])
    old_variant = _variant(previous, config.variant_name)
    detach = old_variant is None or old_variant.get("InstanceType") != config.instance
    if detach and not config.wait:
        raise ConfigError(
            f"endpoint {config.endpoint_name} scales automatically and this update changes its "
            "instance type: auto scaling comes off for the update and goes back on once it is "
            "InService, so drop --no-wait"
        )
    return ScalingPlan(current=current, detach=detach)


def _create_or_update(
    config: DeployConfig,
    sagemaker: Client,
    aas: Client,
    existing: dict[str, Any] | None,
    scaling: ScalingPlan,
    names: ResourceNames,
) -> None:
    """Create model and configuration, then create or update the endpoint."""
    name = config.endpoint_name
    sagemaker.create_model(**config.model_request(names.model))
    log.info("created model %s", names.model)
    sagemaker.create_endpoint_config(
        **config.endpoint_config_request(names.endpoint_config, names.model)
    )
    log.info("created endpoint configuration %s", names.endpoint_config)
    if existing is None:
        sagemaker.create_endpoint(
            EndpointName=name,
            EndpointConfigName=names.endpoint_config,
            Tags=[{"Key": TAG_KEY, "Value": name}],
        )
        log.info("creating endpoint %s", name)
        return
    if scaling.detach:
        autoscaling.detach(aas, Scalable.variant(name, config.variant_name))
    update: dict[str, Any] = {}
    if config.rollout is not None:
        update["DeploymentConfig"] = config.rollout.endpoint_request()
    try:
        sagemaker.update_endpoint(
            EndpointName=name,
            EndpointConfigName=names.endpoint_config,
            # While auto scaling owns the instance count, keep the count it chose.
            RetainAllVariantProperties=scaling.current is not None and not scaling.detach,
            **update,
        )
    except Exception:
        if scaling.detach and scaling.current is not None:
            autoscaling.restore(aas, Scalable.variant(name, config.variant_name), scaling.current)
        raise
    log.info("updating endpoint %s (from %s)", name, existing["EndpointConfigName"])


def _discard(sagemaker: Client, names: ResourceNames) -> None:
    """Best-effort removal of a model and configuration that never went live."""
    endpoints.delete_quietly(
        sagemaker.delete_endpoint_config,
        f"endpoint-config {names.endpoint_config}",
        EndpointConfigName=names.endpoint_config,
    )
    endpoints.delete_quietly(sagemaker.delete_model, f"model {names.model}", ModelName=names.model)


def deploy(config: DeployConfig) -> dict[str, Any] | None:
    """Create or update the endpoint; return its description once InService.

    Returns None with --no-wait, as soon as SageMaker has accepted the request.
    """
    if config.component is not None:
        return components.deploy(config)
    session = open_session(config.aws)
    if config.rollout is not None:
        config.rollout.check_alarms(client(session, "cloudwatch"))
    sagemaker = client(session, "sagemaker")
    aas = client(session, "application-autoscaling")
    name = config.endpoint_name

    if config.serverless is not None:
        Serverless.check_image(
            ecr.image_size(_ecr_for(session, config.image), config.image), config.image
        )
    existing = endpoints.describe_endpoint(sagemaker, name)
    if existing is not None and config.serverless is not None:
        _check_becomes_serverless(sagemaker, existing)
    if existing is not None and components.hosts_components(sagemaker, existing):
        raise ConfigError(
            f"endpoint {name} hosts inference components: deploy with --inference-component "
            "NAME, or use another --endpoint-name"
        )
    if existing is not None:
        endpoints.check_updatable(
            f"endpoint {name}",
            existing,
            "EndpointStatus",
            BUSY_STATES,
            f"smtriton delete --endpoint-name {name}",
        )

    scaling = ScalingPlan() if existing is None else _plan_scaling(config, sagemaker, aas, existing)
    detached = scaling.current if scaling.detach else None
    names = ResourceNames.new(name)
    try:
        _create_or_update(config, sagemaker, aas, existing, scaling, names)
    except Exception:
        # Nothing points at the new model and configuration yet: don't leave them behind.
        _discard(sagemaker, names)
        raise

    if not config.wait:
        log.info(
            "not waiting: follow it with `aws sagemaker describe-endpoint --endpoint-name %s`", name
        )
        return None
    try:
        description = endpoints.wait_for_endpoint(
            sagemaker,
            name,
            expected_config=names.endpoint_config,
            timeout_s=config.wait_timeout_s,
            poll_s=config.poll_interval_s,
        )
    except endpoints.EndpointFailed as error:
        if existing is None:
            raise SmtritonError(
                f"{error}; remove it with `smtriton delete --endpoint-name {name}`"
            ) from None
        # The endpoint is back on its old configuration: so is its scaling, and
        # the new model and configuration serve nothing.
        if detached is not None:
            autoscaling.restore(aas, Scalable.variant(name, config.variant_name), detached)
        _discard(sagemaker, names)
        raise

    if config.scaling is not None:
        autoscaling.attach(aas, name, config.variant_name, config.scaling)
    elif detached is not None:
        autoscaling.restore(aas, Scalable.variant(name, config.variant_name), detached)

    if existing is not None and not config.keep_previous:
        _remove_replaced(sagemaker, name, existing["EndpointConfigName"])
    return description


def _remove_replaced(sagemaker: Client, endpoint_name: str, config_name: str) -> None:
    """Delete the configuration (and models) an update replaced, if deploy made them."""
    if not ResourceNames.suffix_pattern(endpoint_name).match(config_name):
        log.info("keeping %s: it was not created by smtriton", config_name)
        return
    for resource in endpoints.delete_config_and_models(sagemaker, config_name):
        log.info("deleted replaced %s", resource)


def run(args: argparse.Namespace) -> int:
    config = DeployConfig.from_args(args)
    description = deploy(config)
    if description is None:
        print(config.endpoint_name)
    elif "InferenceComponentName" in description:
        print(
            f"{description['EndpointName']} {description['InferenceComponentName']} "
            f"{description['InferenceComponentStatus']}"
        )
    else:
        print(f"{description['EndpointName']} {description['EndpointStatus']}")
    return 0
