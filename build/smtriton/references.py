"""Image names and tags: what Docker and ECR accept, and the default tags.

Checked before docker runs, so a bad tag fails in a second with a message
rather than after a twenty-minute build.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from pathlib import Path

from smtriton.errors import ConfigError

log = logging.getLogger(__name__)

# Docker's reference grammar: lowercase path components separated by "/",
# each made of [a-z0-9] runs joined by ".", "_", "__" or "-" runs.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
REPOSITORY_PATTERN = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
TAG_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
ECR_IMAGE_PATTERN = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/"
)
SHORT_SHA_LENGTH = 12
ACCOUNT_PATTERN = re.compile(r"^\d{12}$")


def check_repository(name: str) -> str:
    if len(name) > 256 or not REPOSITORY_PATTERN.match(name):
        raise ConfigError(
            f"invalid repository name {name!r}: use lowercase letters, digits and "
            "'.', '_', '-' or '/' between them"
        )
    return name


def check_tags(tags: tuple[str, ...]) -> tuple[str, ...]:
    if not tags:
        raise ConfigError("at least one --tag is needed")
    for tag in tags:
        if not TAG_PATTERN.match(tag):
            raise ConfigError(
                f"invalid tag {tag!r}: up to 128 letters, digits, '_', '.' or '-', "
                "not starting with '.' or '-'"
            )
    if len(set(tags)) != len(tags):
        raise ConfigError(f"tags repeat: {', '.join(tags)}")
    return tags


def check_account(account: str) -> str:
    if not ACCOUNT_PATTERN.match(account):
        raise ConfigError(f"--account {account!r} is not a 12-digit AWS account id")
    return account


def ecr_registry_of(image: str) -> tuple[str, str] | None:
    """(account, region) when IMAGE lives in an ECR registry, else None."""
    match = ECR_IMAGE_PATTERN.match(image)
    return (match["account"], match["region"]) if match else None


def git_revision(directory: Path) -> str | None:
    """The short commit of DIRECTORY's checkout, suffixed -dirty with local changes.

    None outside a git checkout (CodeBuild sources often have no .git; the
    buildspec passes CODEBUILD_RESOLVED_SOURCE_VERSION instead).
    """
    git = shutil.which("git")
    if git is None:
        return None

    def git_output(*args: str) -> str | None:
        result = subprocess.run(
            [git, "-C", str(directory), *args], capture_output=True, text=True, check=False
        )
        return result.stdout.strip() if result.returncode == 0 else None

    sha = git_output("rev-parse", f"--short={SHORT_SHA_LENGTH}", "HEAD")
    if not sha:
        return None
    status = git_output("status", "--porcelain", "--untracked-files=no")
    return f"{sha}-dirty" if status else sha


def default_tags(directory: Path) -> tuple[str, ...]:
    """`latest` plus the commit, so every build also gets a tag that never moves."""
    revision = git_revision(directory)
    if revision is None:
        log.warning("%s is not a git checkout: tagging 'latest' only", directory)
        return ("latest",)
    return ("latest", revision)
