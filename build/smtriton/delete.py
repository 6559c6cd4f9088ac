"""`smtriton delete`: remove an endpoint with its configuration, models and scaling.

The endpoint goes first (it is what costs money); a configuration or model
someone already removed is skipped rather than reported as a failure.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

from smtriton import autoscaling, endpoints
from smtriton.aws import AwsOptions, add_aws_arguments, client, open_session
from smtriton.endpoints import ENDPOINT_NAME_PATTERN
from smtriton.errors import ConfigError, SmtritonError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeleteConfig:
    aws: AwsOptions
    endpoint_name: str
    wait: bool = False
    wait_timeout_s: float = 1800.0
    poll_interval_s: float = 15.0

    def __post_init__(self) -> None:
        if not ENDPOINT_NAME_PATTERN.match(self.endpoint_name):
            raise ConfigError(f"invalid endpoint name {self.endpoint_name!r}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DeleteConfig:
        return cls(
            aws=AwsOptions.from_args(args),
            endpoint_name=args.endpoint_name,
            wait=args.wait,
            wait_timeout_s=args.wait_timeout,
            poll_interval_s=args.poll_interval,
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
    parser.add_argument("--wait", action="store_true", help="wait until the endpoint is gone")
    parser.add_argument(
        "--wait-timeout", type=float, default=1800.0, help="seconds (default: %(default)s)"
    )
    parser.add_argument(
        "--poll-interval", type=float, default=15.0, help="seconds (default: %(default)s)"
    )
    parser.set_defaults(run=run)


def delete(config: DeleteConfig) -> list[str]:
    """Delete everything the endpoint uses; return what was deleted."""
    session = open_session(config.aws)
    sagemaker = client(session, "sagemaker")
    aas = client(session, "application-autoscaling")
    name = config.endpoint_name
    description = endpoints.describe_endpoint(sagemaker, name)
    if description is None:
        raise SmtritonError(f"there is no endpoint {name} in {session.region_name}")
    deleted: list[str] = []
    for variant in description.get("ProductionVariants", []):
        if autoscaling.read(aas, name, variant["VariantName"]) is not None:
            autoscaling.detach(aas, name, variant["VariantName"])
            deleted.append(
                f"scalable-target/{autoscaling.resource_id(name, variant['VariantName'])}"
            )
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
