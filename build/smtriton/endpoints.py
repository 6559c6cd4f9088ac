"""SageMaker endpoint bookkeeping shared by deploy and delete.

Endpoints change state asynchronously (Creating takes minutes for a GPU
host, longer with a large model), so waiting is a bounded poll that reports
each status change (smtriton/progress.py), and a failure surfaces SageMaker's
FailureReason.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from smtriton.aws import Client
from smtriton.errors import ConfigError, SmtritonError
from smtriton.progress import Progress, poll

log = logging.getLogger(__name__)

ENDPOINT_NAME_PATTERN = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
FAILED_STATES = frozenset({"Failed", "OutOfService", "UpdateRollbackFailed"})
MAX_NAME_LENGTH = 63
TAG_KEY = "smtriton:endpoint"


class EndpointFailed(SmtritonError):
    """SageMaker gave up on the endpoint (or rolled an update back)."""


@dataclass(frozen=True)
class ResourceNames:
    """Model and endpoint-config names for one deployment of an endpoint.

    Each deploy makes new ones (SageMaker never edits a config in place), so
    the names carry a UTC timestamp and a random suffix; deploy recognises
    its own earlier ones by that shape when it cleans up after an update.
    """

    model: str
    endpoint_config: str

    @staticmethod
    def suffix_pattern(endpoint_name: str) -> re.Pattern[str]:
        prefix = re.escape(_name_prefix(endpoint_name))
        return re.compile(rf"^{prefix}-\d{{8}}-\d{{6}}-[0-9a-f]{{4}}$")

    @classmethod
    def new(cls, endpoint_name: str) -> ResourceNames:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        name = f"{_name_prefix(endpoint_name)}-{stamp}-{secrets.token_hex(2)}"
        return cls(model=name, endpoint_config=name)


def _name_prefix(endpoint_name: str) -> str:
    # 63 characters at most, with "-YYYYmmdd-HHMMSS-xxxx" (21) appended.
    return endpoint_name[: MAX_NAME_LENGTH - 21].rstrip("-")


def check_name(what: str, name: str, pattern: re.Pattern[str] = ENDPOINT_NAME_PATTERN) -> str:
    """A SageMaker resource name: up to 63 letters, digits and '-', as SageMaker takes them."""
    if not pattern.match(name):
        raise ConfigError(
            f"invalid {what} name {name!r}: up to 63 letters, digits and '-', starting and "
            "ending with a letter or digit"
        )
    return name


def check_updatable(
    what: str, description: dict[str, Any], status_key: str, busy: frozenset[str], delete: str
) -> None:
    """Refuse to update what SageMaker is still changing, or what failed (`delete` first)."""
    status = description[status_key]
    if status in busy:
        raise SmtritonError(f"{what} is {status}: wait until it settles, then deploy again")
    if status != "InService":
        reason = description.get("FailureReason", "no reason given")
        raise SmtritonError(
            f"{what} is {status} ({reason}) and cannot be updated: run `{delete}` first"
        )


def delete_quietly(delete: Callable[..., Any], what: str, **kwargs: str) -> bool:
    """Best-effort removal of something made for a deployment that did not need it.

    True when it was deleted; a resource already gone is no failure, any other
    error is logged rather than hiding the failure being cleaned up after.
    """
    try:
        delete(**kwargs)
    except ClientError as error:
        if not is_not_found(error):
            log.warning("could not delete %s: %s", what, error)
        return False
    log.info("deleted %s", what)
    return True


def is_not_found(error: ClientError) -> bool:
    """SageMaker reports a missing resource as a ValidationException 'Could not find ...'."""
    details = error.response.get("Error", {})
    return details.get("Code") == "ValidationException" and "Could not find" in details.get(
        "Message", ""
    )


def describe_endpoint(sagemaker: Client, name: str) -> dict[str, Any] | None:
    """The endpoint's description, or None when there is no such endpoint."""
    try:
        return sagemaker.describe_endpoint(EndpointName=name)
    except ClientError as error:
        if is_not_found(error):
            return None
        raise


def failure_text(name: str, description: dict[str, Any]) -> str:
    reason = description.get("FailureReason") or "SageMaker gave no reason"
    return f"{reason} (container logs: CloudWatch log group /aws/sagemaker/Endpoints/{name})"


def wait_for_endpoint(
    sagemaker: Client,
    name: str,
    *,
    expected_config: str,
    timeout_s: float,
    poll_s: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Poll until the endpoint serves EXPECTED_CONFIG; raise with the reason if it cannot.

    An update that fails is rolled back: the endpoint is InService again but
    on its old configuration, which is a failure of this deploy.
    """
    seen_change = False

    def check() -> tuple[str, dict[str, Any] | None]:
        nonlocal seen_change
        description = sagemaker.describe_endpoint(EndpointName=name)
        status = description["EndpointStatus"]
        current_config = description.get("EndpointConfigName")
        if status in FAILED_STATES:
            raise EndpointFailed(f"endpoint {name} is {status}: {failure_text(name, description)}")
        if status != "InService":
            seen_change = True
            return status, None
        if current_config == expected_config:
            return status, description
        if seen_change:
            raise EndpointFailed(
                f"update of endpoint {name} failed and SageMaker rolled it back to "
                f"{current_config}: {failure_text(name, description)}"
            )
        return status, None

    return poll(
        Progress(f"endpoint {name}", clock=clock),
        check,
        timeout_s=timeout_s,
        poll_s=poll_s,
        still_waiting="SageMaker carries on: check it with `aws sagemaker describe-endpoint "
        f"--endpoint-name {name}`",
        sleep=sleep,
    )


def wait_until_deleted(
    sagemaker: Client,
    name: str,
    *,
    timeout_s: float,
    poll_s: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    def check() -> tuple[str, bool | None]:
        description = describe_endpoint(sagemaker, name)
        if description is None:
            return "gone", True
        return description["EndpointStatus"], None

    poll(
        Progress(f"endpoint {name}", clock=clock),
        check,
        timeout_s=timeout_s,
        poll_s=poll_s,
        still_waiting="SageMaker carries on deleting it",
        sleep=sleep,
    )


def delete_config_and_models(sagemaker: Client, config_name: str) -> list[str]:
    """Delete an endpoint configuration and the models its variants name.

    Returns what was deleted; resources already gone are skipped, so a
    second run of delete finishes what a first one started.
    """
    deleted: list[str] = []
    try:
        config = sagemaker.describe_endpoint_config(EndpointConfigName=config_name)
    except ClientError as error:
        if not is_not_found(error):
            raise
        return deleted
    sagemaker.delete_endpoint_config(EndpointConfigName=config_name)
    deleted.append(f"endpoint-config/{config_name}")
    # An endpoint for inference components names no model.
    names = (v["ModelName"] for v in config["ProductionVariants"] if "ModelName" in v)
    for model in dict.fromkeys(names):
        try:
            sagemaker.delete_model(ModelName=model)
            deleted.append(f"model/{model}")
        except ClientError as error:
            if not is_not_found(error):
                raise
    return deleted
