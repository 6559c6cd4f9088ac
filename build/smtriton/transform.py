"""`smtriton transform`: a batch transform job, from S3 to S3, with the image.

SageMaker starts the image (SAGEMAKER_BATCH=true), asks GET
/execution-parameters how to call it (serve answers with the model's
concurrency, batch strategy and payload limit), then sends the input's
records: with --split-type Line and MultiRecord as many lines per request as
fit in the payload limit, and serve answers one line per line, in order; the
answers of each input object land, assembled by line, at the same path
under --output with `.out` added. The concurrency, strategy and payload
limit are SageMaker's to ask the container for unless given here.

The job gets a model of its own (image, model data, environment), deleted
once the job has ended, whatever its outcome.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from smtriton import endpoints
from smtriton.aws import AwsOptions, Client, add_aws_arguments, client, open_session
from smtriton.deploy import (
    DEFAULT_INSTANCE_TYPE,
    INSTANCE_TYPE_PATTERN,
    add_model_arguments,
    check_model,
    container_definition,
    environment_from_args,
    model_request,
)
from smtriton.errors import ConfigError, SmtritonError
from smtriton.progress import Progress, add_wait_arguments, poll
from smtriton.s3 import parse_s3_uri

log = logging.getLogger(__name__)

SPLIT_TYPES = ("Line", "None")
BATCH_STRATEGIES = ("MultiRecord", "SingleRecord")
# SageMaker's limits: a request's payload, and payload times concurrency.
MAX_PAYLOAD_MB = 100
MAX_INVOCATION_TIMEOUT_S = 3600
MAX_RETRIES = 3
TERMINAL = frozenset({"Completed", "Failed", "Stopped"})


@dataclass(frozen=True)
class TransformConfig:
    aws: AwsOptions
    job_name: str
    image: str
    role_arn: str
    input: str
    """s3://bucket/prefix/: every object under it is transformed."""
    output: str
    model_data: str | None = None
    environment: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    accept: str | None = None
    split_type: str = "Line"
    batch_strategy: str | None = None
    """None: what the container's /execution-parameters answers."""
    max_payload_mb: int | None = None
    max_concurrent: int | None = None
    invocation_timeout_s: int | None = None
    max_retries: int | None = None
    instance_type: str = DEFAULT_INSTANCE_TYPE
    instance_count: int = 1
    ami_version: str | None = None
    wait: bool = True
    wait_timeout_s: float = 24 * 3600.0
    poll_interval_s: float = 15.0

    def __post_init__(self) -> None:
        endpoints.check_name("job", self.job_name)
        check_model(self.image, self.role_arn, self.model_data, self.environment)
        for uri in (self.input, self.output):
            parse_s3_uri(uri)
        if self.split_type not in SPLIT_TYPES:
            raise ConfigError(f"--split-type must be one of {', '.join(SPLIT_TYPES)}")
        if self.batch_strategy is not None and self.batch_strategy not in BATCH_STRATEGIES:
            raise ConfigError(f"--batch-strategy must be one of {', '.join(BATCH_STRATEGIES)}")
        if self.batch_strategy is not None and self.split_type == "None":
            raise ConfigError(
                "--batch-strategy needs records to batch: --split-type Line (with None each "
                "object is one request)"
            )
        payload, concurrent = self.max_payload_mb, self.max_concurrent
        if payload is not None and not 0 <= payload <= MAX_PAYLOAD_MB:
            raise ConfigError(f"--max-payload must be between 0 and {MAX_PAYLOAD_MB} (MB)")
        if concurrent is not None and concurrent < 1:
            raise ConfigError("--max-concurrent must be at least 1")
        if payload and concurrent and payload * concurrent > MAX_PAYLOAD_MB:
            raise ConfigError(
                f"--max-payload x --max-concurrent is {payload * concurrent} MB; SageMaker "
                f"takes at most {MAX_PAYLOAD_MB}"
            )
        if self.invocation_timeout_s is not None and not (
            1 <= self.invocation_timeout_s <= MAX_INVOCATION_TIMEOUT_S
        ):
            raise ConfigError(
                f"--invocation-timeout must be between 1 and {MAX_INVOCATION_TIMEOUT_S}"
            )
        if self.max_retries is not None and not 0 <= self.max_retries <= MAX_RETRIES:
            raise ConfigError(f"--max-retries must be between 0 and {MAX_RETRIES}")
        if not INSTANCE_TYPE_PATTERN.match(self.instance_type):
            raise ConfigError(f"--instance-type {self.instance_type!r} is not like ml.g5.xlarge")
        if self.instance_count < 1:
            raise ConfigError("--instance-count must be at least 1")
        if self.wait_timeout_s <= 0 or self.poll_interval_s <= 0:
            raise ConfigError("--wait-timeout and --poll-interval must be positive")

    def job_request(self, model_name: str) -> dict[str, Any]:
        transform_input: dict[str, Any] = {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": self.input}},
            "ContentType": self.content_type,
            "SplitType": self.split_type,
        }
        transform_output: dict[str, Any] = {"S3OutputPath": self.output}
        if self.split_type == "Line":
            # One answer line per input line, in order, as serve writes them.
            transform_output["AssembleWith"] = "Line"
        if self.accept:
            transform_output["Accept"] = self.accept
        resources: dict[str, Any] = {
            "InstanceType": self.instance_type,
            "InstanceCount": self.instance_count,
        }
        if self.ami_version:
            resources["TransformAmiVersion"] = self.ami_version
        request: dict[str, Any] = {
            "TransformJobName": self.job_name,
            "ModelName": model_name,
            "TransformInput": transform_input,
            "TransformOutput": transform_output,
            "TransformResources": resources,
        }
        optional = {
            "BatchStrategy": self.batch_strategy,
            "MaxPayloadInMB": self.max_payload_mb,
            "MaxConcurrentTransforms": self.max_concurrent,
        }
        request.update({key: value for key, value in optional.items() if value is not None})
        client_config = {
            "InvocationsTimeoutInSeconds": self.invocation_timeout_s,
            "InvocationsMaxRetries": self.max_retries,
        }
        client_config = {key: value for key, value in client_config.items() if value is not None}
        if client_config:
            request["ModelClientConfig"] = client_config
        return request

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TransformConfig:
        environment = environment_from_args(args)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        return cls(
            aws=AwsOptions.from_args(args),
            job_name=args.job_name or f"smtriton-transform-{stamp}-{secrets.token_hex(2)}",
            image=args.image,
            role_arn=args.role,
            input=args.input,
            output=args.output,
            model_data=args.model_data,
            environment=environment,
            content_type=args.content_type,
            accept=args.accept,
            split_type=args.split_type,
            batch_strategy=args.batch_strategy,
            max_payload_mb=args.max_payload,
            max_concurrent=args.max_concurrent,
            invocation_timeout_s=args.invocation_timeout,
            max_retries=args.max_retries,
            instance_type=args.instance_type,
            instance_count=args.instance_count,
            ami_version=args.transform_ami_version,
            wait=not args.no_wait,
            wait_timeout_s=args.wait_timeout,
            poll_interval_s=args.poll_interval,
        )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "transform",
        help="run a batch transform job over S3 objects",
        description="Create a model and a batch transform job that sends every object under "
        "--input through the image and writes the answers under --output, wait until it "
        "ends, and print where the answers are.",
    )
    add_aws_arguments(parser)
    parser.add_argument("--job-name", help="default: smtriton-transform-TIME-XXXX")
    add_model_arguments(parser)
    data = parser.add_argument_group("data")
    data.add_argument("--input", required=True, metavar="S3_PREFIX", help="objects to transform")
    data.add_argument("--output", required=True, metavar="S3_PREFIX", help="where answers go")
    data.add_argument(
        "--content-type", default="application/json", help="the input's (default: %(default)s)"
    )
    data.add_argument("--accept", help="the answers' content type")
    data.add_argument(
        "--split-type",
        choices=SPLIT_TYPES,
        default="Line",
        help="Line: one record per line (default); None: each object is one request",
    )
    requests = parser.add_argument_group(
        "requests (default: what the container's /execution-parameters asks for)"
    )
    requests.add_argument("--batch-strategy", choices=BATCH_STRATEGIES)
    requests.add_argument("--max-payload", type=int, metavar="MB", help="largest request body")
    requests.add_argument("--max-concurrent", type=int, help="requests at once per instance")
    requests.add_argument(
        "--invocation-timeout", type=int, metavar="SECONDS", help="per request (up to 3600)"
    )
    requests.add_argument("--max-retries", type=int, help="retries of a failed request (0-3)")
    resources = parser.add_argument_group("instances")
    resources.add_argument(
        "--instance-type", default=DEFAULT_INSTANCE_TYPE, help="default: %(default)s"
    )
    resources.add_argument("--instance-count", type=int, default=1, help="default: %(default)s")
    resources.add_argument(
        "--transform-ami-version",
        help="the GPU driver's AMI (al2-ami-sagemaker-batch-gpu-535, ...)",
    )
    add_wait_arguments(
        parser.add_argument_group("waiting"),
        flag_help="return once SageMaker accepted the job",
        timeout_s=24 * 3600.0,
        poll_s=15.0,
    )
    parser.set_defaults(run=run)


def transform(config: TransformConfig) -> dict[str, Any] | None:
    """Create the model and the job, and wait until the job ends; its description.

    None with --no-wait. A failed job raises with SageMaker's reason; the model
    goes either way once the job has ended.
    """
    session = open_session(config.aws)
    sagemaker = client(session, "sagemaker")
    model = f"{config.job_name[:57]}-model"
    sagemaker.create_model(
        **model_request(
            model,
            role_arn=config.role_arn,
            container=container_definition(
                config.image, config.environment, model_data=config.model_data
            ),
            tag=config.job_name,
        )
    )
    log.info("created model %s", model)
    try:
        sagemaker.create_transform_job(**config.job_request(model))
    except Exception:
        endpoints.delete_quietly(sagemaker.delete_model, f"model {model}", ModelName=model)
        raise
    log.info("created transform job %s: %s -> %s", config.job_name, config.input, config.output)
    if not config.wait:
        log.info(
            "not waiting: follow it with `aws sagemaker describe-transform-job "
            "--transform-job-name %s`; delete model %s once it has ended",
            config.job_name,
            model,
        )
        return None
    try:
        return wait_for_job(sagemaker, config)
    finally:
        endpoints.delete_quietly(sagemaker.delete_model, f"model {model}", ModelName=model)


def wait_for_job(sagemaker: Client, config: TransformConfig) -> dict[str, Any]:
    name = config.job_name

    def check() -> tuple[str, dict[str, Any] | None]:
        description = sagemaker.describe_transform_job(TransformJobName=name)
        status = description["TransformJobStatus"]
        if status in {"Failed", "Stopped"}:
            reason = description.get("FailureReason") or "SageMaker gave no reason"
            raise SmtritonError(
                f"transform job {name} is {status}: {reason} (container logs: CloudWatch log "
                "group /aws/sagemaker/TransformJobs)"
            )
        return status, description if status == "Completed" else None

    return poll(
        Progress(f"transform job {name}"),
        check,
        timeout_s=config.wait_timeout_s,
        poll_s=config.poll_interval_s,
        still_waiting="SageMaker carries on: check it with `aws sagemaker "
        f"describe-transform-job --transform-job-name {name}`",
    )


def run(args: argparse.Namespace) -> int:
    config = TransformConfig.from_args(args)
    description = transform(config)
    if description is None:
        print(config.job_name)
    else:
        print(description["TransformOutput"]["S3OutputPath"])
    return 0
