"""The ways an endpoint hosts the image besides real time: asynchronous and serverless.

Each is one object holding everything about it: what it checks before AWS
is called, what it adds to the endpoint configuration and to the
container's environment, and what it cannot be combined with. deploy.py
asks each for its part. (Inference components, which change the whole way
an endpoint is made, are smtriton/components.py.)
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any

from smtriton.errors import ConfigError
from smtriton.s3 import parse_s3_uri

log = logging.getLogger(__name__)

SNS_TOPIC_PATTERN = re.compile(r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}$")
# What SageMaker allows (the API's ranges).
MAX_ASYNC_CONCURRENCY = 1000
ASYNC_VARIABLE = "SERVE_ASYNC_INFERENCE"


@dataclasses.dataclass(frozen=True)
class AsyncOutput:
    """An asynchronous endpoint: answers go to S3 (and SNS), requests wait in SageMaker's queue.

    SageMaker reads each request's body from S3, POSTs it to /invocations
    (bodies up to 1 GB, an hour to answer) and writes the answer to
    `output`; it tells the container nothing of this, so the model's
    environment says it (SERVE_ASYNC_INFERENCE=true: serve then takes bodies
    up to 1 GB).
    """

    output: str
    """S3OutputPath: where answers go, as INFERENCE_ID.out."""
    failure: str | None = None
    """S3FailurePath: where the container's errors go (SageMaker's default: beside the answers)."""
    success_topic: str | None = None
    error_topic: str | None = None
    max_concurrency: int | None = None
    """Requests one instance works on at once (MaxConcurrentInvocationsPerInstance)."""

    def __post_init__(self) -> None:
        for uri in (self.output, self.failure):
            if uri is not None:
                parse_s3_uri(uri)
        for option, topic in (
            ("--async-success-topic", self.success_topic),
            ("--async-error-topic", self.error_topic),
        ):
            if topic is not None and not SNS_TOPIC_PATTERN.match(topic):
                raise ConfigError(
                    f"{option} {topic!r} is not an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)"
                )
        if self.max_concurrency is not None and not (
            1 <= self.max_concurrency <= MAX_ASYNC_CONCURRENCY
        ):
            raise ConfigError(
                f"--async-max-concurrency must be between 1 and {MAX_ASYNC_CONCURRENCY}"
            )

    def request(self) -> dict[str, Any]:
        """The endpoint configuration's AsyncInferenceConfig."""
        output: dict[str, Any] = {"S3OutputPath": self.output}
        if self.failure is not None:
            output["S3FailurePath"] = self.failure
        notifications = {
            key: topic
            for key, topic in (
                ("SuccessTopic", self.success_topic),
                ("ErrorTopic", self.error_topic),
            )
            if topic is not None
        }
        if notifications:
            output["NotificationConfig"] = notifications
        config: dict[str, Any] = {"OutputConfig": output}
        if self.max_concurrency is not None:
            config["ClientConfig"] = {"MaxConcurrentInvocationsPerInstance": self.max_concurrency}
        return config

    @staticmethod
    def environment() -> dict[str, str]:
        return {ASYNC_VARIABLE: "true"}


# AWS's serverless limits ("Deploy models with Amazon SageMaker Serverless Inference"):
# memory in 1 GB steps from 1 GB to 6 GB, up to 200 concurrent invocations, an image
# of at most 10 GB, CPUs only (no GPUs, no multi-model, no VPC, one variant).
SERVERLESS_MEMORY_MB = (1024, 2048, 3072, 4096, 5120, 6144)
MAX_SERVERLESS_CONCURRENCY = 200
DEFAULT_SERVERLESS_CONCURRENCY = 5
SERVERLESS_IMAGE_BYTES = 10 * 1024**3


@dataclasses.dataclass(frozen=True)
class Serverless:
    """A serverless endpoint: SageMaker picks CPUs by memory and scales to zero by itself.

    No GPUs: the image runs its models on the CPU (serve moves KIND_GPU
    instance groups there). Cold starts load the image and the model, so
    it suits small models and uneven traffic.
    """

    memory_mb: int
    max_concurrency: int = DEFAULT_SERVERLESS_CONCURRENCY

    def __post_init__(self) -> None:
        if self.memory_mb not in SERVERLESS_MEMORY_MB:
            raise ConfigError(
                f"--serverless memory {self.memory_mb} MB is not one SageMaker offers: "
                f"{', '.join(map(str, SERVERLESS_MEMORY_MB))}"
            )
        if not 1 <= self.max_concurrency <= MAX_SERVERLESS_CONCURRENCY:
            raise ConfigError(
                f"--serverless concurrency must be between 1 and {MAX_SERVERLESS_CONCURRENCY}"
            )

    @classmethod
    def parse(cls, text: str) -> Serverless:
        """MEMORY_MB or MEMORY_MB,MAX_CONCURRENCY, as --serverless takes it."""
        memory, _, concurrency = text.partition(",")
        try:
            return cls(
                int(memory),
                int(concurrency) if concurrency else DEFAULT_SERVERLESS_CONCURRENCY,
            )
        except ValueError:
            raise ConfigError(
                f"--serverless {text!r} is not MEMORY_MB[,MAX_CONCURRENCY], e.g. 4096,10"
            ) from None

    def variant(self, variant_name: str, model_name: str) -> dict[str, Any]:
        """The endpoint configuration's variant: no instances, no startup limits to set."""
        return {
            "VariantName": variant_name,
            "ModelName": model_name,
            "ServerlessConfig": {
                "MemorySizeInMB": self.memory_mb,
                "MaxConcurrency": self.max_concurrency,
            },
        }

    @staticmethod
    def check_image(size: int | None, image: str) -> None:
        """Refuse an image SageMaker would refuse for serverless, before it is asked."""
        if size is None:
            log.warning(
                "cannot read the size of %s from ECR: SageMaker refuses serverless images "
                "over 10 GB",
                image,
            )
            return
        if size > SERVERLESS_IMAGE_BYTES:
            raise ConfigError(
                f"{image} is {size / 1024**3:.1f} GB in ECR; serverless endpoints take images "
                "up to 10 GB: build a smaller one (make image MODEL_LIBRARIES=false leaves out "
                "torch and the other model libraries, though NVIDIA's base alone is several "
                "GB), or deploy to instances (drop --serverless)"
            )
        log.info("%s is %.1f GB in ECR: within serverless's 10 GB", image, size / 1024**3)
