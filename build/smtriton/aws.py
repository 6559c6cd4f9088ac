"""One place that turns --region/--profile into a checked boto3 session.

boto3 reads AWS_ENDPOINT_URL (and AWS_ENDPOINT_URL_<SERVICE>) itself, which is
how the tests point every client at a local moto server; nothing here needs
to know about that.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ProfileNotFound

from smtriton.errors import NO_CREDENTIALS, NO_REGION, SmtritonError

Client = Any
"""A boto3 client: generated at run time, so there is no static type to name."""

# Standard retry mode backs off on throttling, which the control-plane calls
# of a busy account do hit.
CLIENT_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5})


@dataclass(frozen=True)
class AwsOptions:
    """Where and as whom to call AWS; None means boto3's usual lookup."""

    region: str | None = None
    profile: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AwsOptions:
        return cls(region=args.region, profile=args.profile)


def add_aws_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --region and --profile, shared by every command that calls AWS."""
    group = parser.add_argument_group("AWS")
    group.add_argument(
        "--region", help="AWS region (default: AWS_DEFAULT_REGION or the profile's region)"
    )
    group.add_argument("--profile", help="named profile from ~/.aws/config (default: AWS_PROFILE)")


def known_regions(session: boto3.Session, service: str = "sagemaker") -> set[str]:
    """Regions botocore knows for a service, across every partition (aws, aws-cn, ...)."""
    regions: set[str] = set()
    for partition in session.get_available_partitions():
        regions.update(session.get_available_regions(service, partition_name=partition))
    return regions


def open_session(options: AwsOptions) -> boto3.Session:
    """Return a session with a known region and credentials, or explain what is missing.

    Checking here, before any resource is created, keeps a deploy from
    stopping half-way on a typo in the region or an expired login.
    """
    try:
        session = boto3.Session(profile_name=options.profile, region_name=options.region)
    except ProfileNotFound as error:
        raise SmtritonError(f"{error}: check AWS_PROFILE / --profile") from None
    region = session.region_name
    if not region:
        raise SmtritonError(NO_REGION)
    if region not in known_regions(session):
        raise SmtritonError(
            f"unknown AWS region {region!r}: use a region where SageMaker runs, such as "
            "us-east-1 (if the region is new, upgrade boto3)"
        )
    if session.get_credentials() is None:
        raise SmtritonError(NO_CREDENTIALS)
    return session


def client(session: boto3.Session, service: str) -> Client:
    """Create a client with the shared retry configuration."""
    return session.client(service, config=CLIENT_CONFIG)
