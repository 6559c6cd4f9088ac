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
