"""`smtriton login`: docker login to ECR registries with boto3's token.

CodeBuild's pre_build runs this; push logs in by itself, so a person rarely
needs it, except to pull a base image that lives in ECR (AWS's
sagemaker-tritonserver images sit in account 763104351884).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

from smtriton.aws import AwsOptions, add_aws_arguments, client, open_session
from smtriton.docker import Docker
from smtriton.ecr import RegistryCredentials, get_credentials
from smtriton.references import check_account, ecr_registry_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoginConfig:
    aws: AwsOptions
    accounts: tuple[str, ...] = ()
    """Registries to log in to besides the caller's own, by account id."""
    images: tuple[str, ...] = ()
    """Images that will be pulled; those in ECR add their registry."""

    def __post_init__(self) -> None:
        for account in self.accounts:
            check_account(account)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LoginConfig:
        return cls(
            aws=AwsOptions.from_args(args),
            accounts=tuple(args.account or ()),
            images=tuple(args.for_image or ()),
        )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "login",
        help="docker login to ECR",
        description="Log docker in to this account's ECR registry, and to the "
        "registries of other accounts or of base images that live in ECR.",
    )
    add_aws_arguments(parser)
    parser.add_argument(
        "--account", action="append", help="also log in to this account's registry; repeatable"
    )
    parser.add_argument(
        "--for-image",
        action="append",
        metavar="IMAGE",
        help="also log in to IMAGE's registry when it is in ECR (e.g. the base image)",
    )
    parser.set_defaults(run=run)


def login(config: LoginConfig, docker: Docker) -> list[str]:
    """Log in; return the registry hosts, the caller's own first."""
    session = open_session(config.aws)
    own = get_credentials(client(session, "ecr"))
    by_region: dict[str, RegistryCredentials] = {session.region_name: own}
    targets: dict[str, RegistryCredentials] = {own.registry: own}
    for account in config.accounts:
        targets.setdefault(own.registry_for(account), own)
    for image in config.images:
        found = ecr_registry_of(image)
        if found is None:
            log.info("%s is not in ECR: no login needed for it", image)
            continue
        account, region = found
        if region not in by_region:
            # A token covers one region only: ask the image's region for its own.
            other_region = open_session(AwsOptions(region, config.aws.profile))
            by_region[region] = get_credentials(client(other_region, "ecr"))
        credentials = by_region[region]
        targets.setdefault(credentials.registry_for(account), credentials)
    for registry, credentials in targets.items():
        log.info("logging in to %s", registry)
        docker.login(registry, credentials.username, credentials.password)
    return list(targets)


def run(args: argparse.Namespace) -> int:
    config = LoginConfig.from_args(args)
    for registry in login(config, Docker.locate()):
        print(registry)
    return 0
