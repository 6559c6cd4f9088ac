"""`smtriton delete`: remove an endpoint with its configuration, models and scaling.

An endpoint's inference components go first, each with its copy scaling and
alarm (SageMaker deletes an endpoint only once its components are gone);
then the endpoint (it is what costs money); then its configuration and
models. What someone already removed is skipped rather than reported as a
failure. `--inference-component NAME` removes that one component alone.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

from smtriton import autoscaling, components, endpoints
from smtriton.aws import AwsOptions, add_aws_arguments, client, open_session
from smtriton.components import COMPONENT_NAME_PATTERN
from smtriton.endpoints import ENDPOINT_NAME_PATTERN
from smtriton.errors import ConfigError, SmtritonError
from smtriton.progress import add_wait_arguments

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeleteConfig:
    aws: AwsOptions
    endpoint_name: str
    wait: bool = False
    wait_timeout_s: float = 1800.0
    poll_interval_s: float = 15.0
    component: str | None = None
    """Delete this inference component only."""

    def __post_init__(self) -> None:
        if not ENDPOINT_NAME_PATTERN.match(self.endpoint_name):
            raise ConfigError(f"invalid endpoint name {self.endpoint_name!r}")
        if self.component is not None and not COMPONENT_NAME_PATTERN.match(self.component):
            raise ConfigError(f"invalid inference component name {self.component!r}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DeleteConfig:
        return cls(
            aws=AwsOptions.from_args(args),
            endpoint_name=args.endpoint_name,
            wait=args.wait,
            wait_timeout_s=args.wait_timeout,
            poll_interval_s=args.poll_interval,
            component=args.inference_component,
        )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "delete",
        help="delete an endpoint, its configuration, models and auto scaling",
        description="Delete the endpoint, deregister its auto scaling, and delete the "
        "endpoint configuration and models it was serving.",
    )
    add_aws_arguments(parser)
    parser.add_argument("--endpoint-name", "--name", required=True, help="endpoint name")
    parser.add_argument(
        "--inference-component",
        metavar="NAME",
        help="delete this inference component (with its scaling) and leave the endpoint",
    )
    add_wait_arguments(
        parser,
        flag_help="wait until the endpoint is gone",
        timeout_s=1800.0,
        poll_s=15.0,
        flag="--wait",
    )
    parser.set_defaults(run=run)


def delete(config: DeleteConfig) -> list[str]:
    """Delete everything the endpoint uses; return what was deleted."""
    session = open_session(config.aws)
    sagemaker = client(session, "sagemaker")
    aas = client(session, "application-autoscaling")
    name = config.endpoint_name
    cloudwatch = client(session, "cloudwatch")
    description = endpoints.describe_endpoint(sagemaker, name)
    if description is None:
        raise SmtritonError(f"there is no endpoint {name} in {session.region_name}")
    hosted = components.list_on(sagemaker, name)
    wait = {"timeout_s": config.wait_timeout_s, "poll_s": config.poll_interval_s}
    if config.component is not None:
        if config.component not in hosted:
            raise SmtritonError(
                f"endpoint {name} hosts no inference component {config.component}"
                + (f" (it hosts {', '.join(hosted)})" if hosted else "")
            )
        return components.remove(sagemaker, aas, cloudwatch, config.component, **wait)
    deleted: list[str] = []
    for component in hosted:
        deleted += components.remove(sagemaker, aas, cloudwatch, component, **wait)
    for variant in description.get("ProductionVariants", []):
        target = autoscaling.Scalable.variant(name, variant["VariantName"])
        if autoscaling.read(aas, target) is not None:
            autoscaling.detach(aas, target)
            deleted.append(f"scalable-target/{target.resource_id}")
    sagemaker.delete_endpoint(EndpointName=name)
    deleted.append(f"endpoint/{name}")
    deleted += endpoints.delete_config_and_models(sagemaker, description["EndpointConfigName"])
    if config.wait:
        endpoints.wait_until_deleted(
            sagemaker, name, timeout_s=config.wait_timeout_s, poll_s=config.poll_interval_s
        )
    return deleted


def run(args: argparse.Namespace) -> int:
    for resource in delete(DeleteConfig.from_args(args)):
        print(f"deleted {resource}")
    return 0
