"""`smtriton image`: build the serving image with docker.

Build arguments the user does not set are not passed, so the Dockerfile's
ARG lines stay the one place that holds their defaults.
"""

from __future__ import annotations

import argparse
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from smtriton.docker import Docker
from smtriton.errors import ConfigError
from smtriton.references import (
    check_repository,
    check_tags,
    default_tags,
)

log = logging.getLogger(__name__)

DEFAULT_REPOSITORY = "sagemaker-triton"
DEFAULT_PLATFORM = "linux/amd64"
TRITON_VERSION_PATTERN = re.compile(r"^\d{2}\.\d{2}$")
KEY_VALUE_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def parse_key_values(items: list[str] | None, what: str) -> dict[str, str]:
    """Turn ["K=V", ...] into a dict, rejecting entries without a valid name."""
    result: dict[str, str] = {}
    for item in items or []:
        if not KEY_VALUE_PATTERN.match(item):
            raise ConfigError(f"{what} {item!r} is not NAME=VALUE")
        name, value = item.split("=", 1)
        result[name] = value
    return result


@dataclass(frozen=True)
class ImageConfig:
    """What to build and how to name it."""

    repository: str = DEFAULT_REPOSITORY
    """Local image name; push uses the same name for the ECR repository."""
    tags: tuple[str, ...] = ("latest",)
    context: Path = Path(".")
    dockerfile: Path | None = None
    """Defaults to CONTEXT/Dockerfile."""
    triton_version: str | None = None
    """NGC release (yy.mm) of the base image; None keeps the Dockerfile's default."""
    base_image: str | None = None
    """Base image without tag, e.g. AWS's sagemaker-tritonserver in ECR."""
    extra_build_args: dict[str, str] = field(default_factory=dict)
    platform: str | None = DEFAULT_PLATFORM
    """SageMaker GPU hosts are x86_64; this keeps an Apple-silicon build usable."""
    pull: bool = False

    def __post_init__(self) -> None:
        check_repository(self.repository)
        check_tags(self.tags)
        if not self.context.is_dir():
            raise ConfigError(f"build context {self.context} is not a directory")
        if not self.dockerfile_path.is_file():
            raise ConfigError(f"no Dockerfile at {self.dockerfile_path}")
        if self.triton_version is not None and not TRITON_VERSION_PATTERN.match(
            self.triton_version
        ):
            raise ConfigError(
                f"--triton-version {self.triton_version!r} is not an NGC release like 24.10"
            )
        if self.base_image is not None and (
            not self.base_image or "@" in self.base_image or ":" in self.base_image.split("/")[-1]
        ):
            raise ConfigError(
                f"--base-image {self.base_image!r} must be a name without tag: the "
                "Dockerfile appends :TRITON_VERSION-py3"
            )

    @property
    def dockerfile_path(self) -> Path:
        return self.dockerfile if self.dockerfile is not None else self.context / "Dockerfile"

    @property
    def references(self) -> list[str]:
        return [f"{self.repository}:{tag}" for tag in self.tags]

    @property
    def build_args(self) -> dict[str, str]:
        args: dict[str, str] = {}
        if self.base_image is not None:
            args["BASE_IMAGE"] = self.base_image
        if self.triton_version is not None:
            args["TRITON_VERSION"] = self.triton_version
        return {**args, **self.extra_build_args}

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ImageConfig:
        context = Path(args.context)
        return cls(
            repository=args.repository,
            tags=tuple(args.tag) if args.tag else default_tags(context),
            context=context,
            dockerfile=Path(args.file) if args.file else None,
            triton_version=args.triton_version,
            base_image=args.base_image,
            extra_build_args=parse_key_values(args.build_arg, "--build-arg"),
            platform=args.platform or None,
            pull=args.pull,
        )


def add_image_arguments(parser: argparse.ArgumentParser) -> None:
    """--repository and --tag, shared with push so both name the same image."""
    parser.add_argument(
        "--repository",
        default=DEFAULT_REPOSITORY,
        help=f"image (and ECR repository) name (default: {DEFAULT_REPOSITORY})",
    )
    parser.add_argument(
        "--tag",
        action="append",
        help="tag to apply; repeat for several (default: latest and the git commit)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "image",
        help="build the serving image with docker",
        description="Build the image (docker build) with the given build arguments.",
    )
    add_image_arguments(parser)
    parser.add_argument("--context", default=".", help="build context (default: .)")
    parser.add_argument("--file", help="Dockerfile (default: CONTEXT/Dockerfile)")
    parser.add_argument(
        "--triton-version", help="NGC release of the base image, e.g. 24.10 (Dockerfile default)"
    )
    parser.add_argument(
        "--base-image",
        help="base image without tag (default nvcr.io/nvidia/tritonserver; AWS's is "
        "763104351884.dkr.ecr.REGION.amazonaws.com/sagemaker-tritonserver)",
    )
    parser.add_argument(
        "--build-arg", action="append", metavar="NAME=VALUE", help="extra build argument"
    )
    parser.add_argument(
        "--platform",
        default=DEFAULT_PLATFORM,
        help=f"target platform (default: {DEFAULT_PLATFORM}; empty for the docker host's)",
    )
    parser.add_argument("--pull", action="store_true", help="always pull a newer base image")
    parser.set_defaults(run=run)


def build_image(config: ImageConfig, docker: Docker) -> list[str]:
    """Build the image; return the local references it was tagged with."""
    log.info("building %s", ", ".join(config.references))
    docker.build(
        context=config.context,
        dockerfile=config.dockerfile_path,
        references=config.references,
        build_args=config.build_args,
        platform=config.platform,
        pull=config.pull,
    )
    return config.references


def run(args: argparse.Namespace) -> int:
    config = ImageConfig.from_args(args)
    for reference in build_image(config, Docker.locate()):
        print(reference)
    return 0
