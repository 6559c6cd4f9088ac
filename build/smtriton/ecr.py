"""ECR: repositories and registry logins, done with boto3 rather than the aws CLI.

An authorization token is valid for twelve hours for every registry the
caller may read in one region, so one token logs in to this account's
registry and, for a base image, to AWS's deep-learning-container registry.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from urllib.parse import urlparse

from botocore.exceptions import ClientError

from smtriton.aws import Client

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegistryCredentials:
    """What `docker login` needs for one region's ECR registries."""

    username: str
    password: str
    registry: str
    """Host of the caller's own registry, e.g. 123456789012.dkr.ecr.us-east-1.amazonaws.com."""

    @property
    def account(self) -> str:
        return self.registry.split(".", 1)[0]

    def registry_for(self, account: str) -> str:
        """The same region's registry host for another account."""
        return f"{account}.{self.registry.split('.', 1)[1]}"


def get_credentials(ecr: Client) -> RegistryCredentials:
    """Fetch and decode an authorization token ("AWS:<password>", base64)."""
    data = ecr.get_authorization_token()["authorizationData"][0]
    username, password = base64.b64decode(data["authorizationToken"]).decode().split(":", 1)
    registry = urlparse(data["proxyEndpoint"]).netloc or data["proxyEndpoint"]
    return RegistryCredentials(username=username, password=password, registry=registry)


def ensure_repository(ecr: Client, name: str, account: str | None = None) -> str:
    """Return the repository's URI, creating the repository when it is missing.

    New repositories scan images on push; tags stay mutable because `latest`
    moves (the commit tag is what deployments should name).
    """
    scope = {"registryId": account} if account else {}
    try:
        found = ecr.describe_repositories(repositoryNames=[name], **scope)
        return found["repositories"][0]["repositoryUri"]
    except ClientError as error:
        if error.response["Error"]["Code"] != "RepositoryNotFoundException":
            raise
    created = ecr.create_repository(
        repositoryName=name,
        imageScanningConfiguration={"scanOnPush": True},
        imageTagMutability="MUTABLE",
        **scope,
    )
    uri = created["repository"]["repositoryUri"]
    log.info("created ECR repository %s", uri)
    return uri


def image_size(ecr: Client, image: str) -> int | None:
    """The size ECR reports for IMAGE (REGISTRY/REPO:TAG or @DIGEST), None when unknown.

    ECR counts the layers as pushed, compressed: what a host unpacks is
    larger, so a size over a limit is over it for certain, one under may not
    be under it.
    """
    host, _, rest = image.partition("/")
    account = host.split(".", 1)[0]
    if "@" in rest:
        repository, _, digest = rest.partition("@")
        image_id = {"imageDigest": digest}
    else:
        repository, _, tag = rest.rpartition(":") if ":" in rest else (rest, "", "latest")
        image_id = {"imageTag": tag}
    try:
        details = ecr.describe_images(
            registryId=account, repositoryName=repository, imageIds=[image_id]
        )["imageDetails"]
    except ClientError as error:
        log.debug("cannot describe %s: %s", image, error)
        return None
    sizes = [d["imageSizeInBytes"] for d in details if d.get("imageSizeInBytes") is not None]
    return max(sizes) if sizes else None
