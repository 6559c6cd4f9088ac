"""`smtriton push`: put a locally built image into ECR.

Creates the repository on first use, logs docker in with boto3's token, then
tags and pushes every tag, so `smtriton image` followed by `smtriton push`
with the same --repository/--tag options is the whole road to ECR.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

from smtriton.aws import AwsOptions, add_aws_arguments, client, open_session
from smtriton.docker import Docker
from smtriton.ecr import ensure_repository, get_credentials
from smtriton.image import add_image_arguments
from smtriton.references import check_account, check_repository, check_tags, default_tags

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PushConfig:
    aws: AwsOptions
    repository: str
    """ECR repository name; also the local image name unless source_repository is set."""
    tags: tuple[str, ...]
    source_repository: str | None = None
    account: str | None = None
    """Registry (account id) to push to; default: the caller's account."""

    def __post_init__(self) -> None:
        check_repository(self.repository)
        check_repository(self.local_repository)
        check_tags(self.tags)
        if self.account is not None:
            check_account(self.account)

    @property
    def local_repository(self) -> str:
        return self.source_repository or self.repository

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> PushConfig:
        return cls(
            aws=AwsOptions.from_args(args),
            repository=args.repository,
            tags=tuple(args.tag) if args.tag else default_tags(Path(".")),
            source_repository=args.source_repository,
            account=args.account or None,
        )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "push",
        help="push the image to ECR (creating the repository when missing)",
        description="Create the ECR repository when missing, docker login with "
        "boto3's authorization token, then tag and push every tag.",
    )
    add_aws_arguments(parser)
    add_image_arguments(parser)
    parser.add_argument(
        "--source-repository", help="local image name when it differs from --repository"
    )
    parser.add_argument("--account", help="account id of the target registry (default: yours)")
    parser.set_defaults(run=run)


def push_image(config: PushConfig, docker: Docker) -> list[str]:
    """Push every tag; return the remote references."""
    ecr = client(open_session(config.aws), "ecr")
    repository_uri = ensure_repository(ecr, config.repository, config.account)
    credentials = get_credentials(ecr)
    registry = repository_uri.split("/", 1)[0]
    docker.login(registry, credentials.username, credentials.password)
    pushed = []
    for tag in config.tags:
        remote = f"{repository_uri}:{tag}"
        docker.tag(f"{config.local_repository}:{tag}", remote)
        log.info("pushing %s", remote)
        docker.push(remote)
        pushed.append(remote)
    return pushed


def run(args: argparse.Namespace) -> int:
    config = PushConfig.from_args(args)
    for reference in push_image(config, Docker.locate()):
        print(reference)
    return 0
