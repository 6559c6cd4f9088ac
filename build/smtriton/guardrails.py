"""How an update reaches production: deployment guardrails, and the GPU driver's AMI.

An endpoint update is a blue/green deployment: SageMaker starts the new
fleet, shifts traffic to it (all at once, a canary first, or in linear
steps), bakes each step for a while, and rolls back to the old fleet if a
CloudWatch alarm named for the purpose goes off. An inference component is
updated by rolling batches of copies instead, with the same alarms. AWS
documents both as "deployment guardrails" (real-time and asynchronous
endpoints only: not serverless).

`--rollout` names the way:

- `all-at-once`, `canary:SIZE`, `linear:SIZE` (an endpoint; SIZE is a share
  of the capacity, `10%`, or a number of instances, `1`);
- `rolling:SIZE` (an inference component; SIZE in copies, or `25%`).

InferenceAmiVersion picks the host's GPU driver, which SageMaker otherwise
chooses by instance family (470 on ml.g4dn, g5, p3, p4d). The valid names
come from botocore's model of the API, so a newer boto3 knows newer AMIs.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import botocore.session

from smtriton.aws import Client
from smtriton.errors import ConfigError

ROLLOUT_PATTERN = re.compile(
    r"^(?P<kind>all-at-once|canary|linear|rolling)(?::(?P<size>\d+)(?P<percent>%?))?$"
)
BAKE_RANGE = (0, 3600)
ROLLOUT_TIME_RANGE = (600, 28800)
DEFAULT_BAKE_S = 300


def ami_versions() -> tuple[str, ...]:
    """InferenceAmiVersion's values, as this botocore knows them."""
    model = botocore.session.get_session().get_service_model("sagemaker")
    return tuple(model.shape_for("ProductionVariantInferenceAmiVersion").enum)


def check_ami_version(version: str) -> str:
    known = ami_versions()
    if version not in known:
        raise ConfigError(
            f"--inference-ami-version {version!r} is not one SageMaker offers: "
            f"{', '.join(known)} (upgrade boto3 for newer ones)"
        )
    return version


@dataclasses.dataclass(frozen=True)
class Rollout:
    """A deployment configuration for an update, and the alarms that roll it back."""

    kind: str = "all-at-once"
    size: int | None = None
    percent: bool = False
    bake_s: int = DEFAULT_BAKE_S
    """WaitIntervalInSeconds: how long each step is watched before the next."""
    alarms: tuple[str, ...] = ()
    termination_wait_s: int | None = None
    max_time_s: int | None = None

    def __post_init__(self) -> None:
        if self.kind in {"canary", "linear", "rolling"} and self.size is None:
            raise ConfigError(
                f"--rollout {self.kind} needs a size: {self.kind}:10% or {self.kind}:1"
            )
        if self.kind == "all-at-once" and self.size is not None:
            raise ConfigError("--rollout all-at-once takes no size")
        if self.size is not None and not (1 <= self.size <= (100 if self.percent else 10**6)):
            raise ConfigError("--rollout's size must be at least 1 (a share: 1% to 100%)")
        if not BAKE_RANGE[0] <= self.bake_s <= BAKE_RANGE[1]:
            raise ConfigError(f"--bake must be between {BAKE_RANGE[0]} and {BAKE_RANGE[1]} seconds")
        if self.termination_wait_s is not None and not (
            BAKE_RANGE[0] <= self.termination_wait_s <= BAKE_RANGE[1]
        ):
            raise ConfigError("--termination-wait must be between 0 and 3600 seconds")
        if self.max_time_s is not None and not (
            ROLLOUT_TIME_RANGE[0] <= self.max_time_s <= ROLLOUT_TIME_RANGE[1]
        ):
            raise ConfigError(
                f"--max-rollout-time must be between {ROLLOUT_TIME_RANGE[0]} and "
                f"{ROLLOUT_TIME_RANGE[1]} seconds"
            )

    @classmethod
    def parse(
        cls,
        text: str | None,
        *,
        bake_s: int,
        alarms: tuple[str, ...],
        termination_wait_s: int | None = None,
        max_time_s: int | None = None,
    ) -> Rollout | None:
        """--rollout's value with its options; None when nothing was asked."""
        if text is None and not alarms:
            return None
        match = ROLLOUT_PATTERN.match(text or "all-at-once")
        if match is None:
            raise ConfigError(
                f"--rollout {text!r} is not all-at-once, canary:SIZE, linear:SIZE or "
                "rolling:SIZE (SIZE: 10% or a count)"
            )
        return cls(
            kind=match["kind"],
            size=int(match["size"]) if match["size"] else None,
            percent=bool(match["percent"]),
            bake_s=bake_s,
            alarms=alarms,
            termination_wait_s=termination_wait_s,
            max_time_s=max_time_s,
        )

    @property
    def rolling(self) -> bool:
        return self.kind == "rolling"

    def _size(self, unit: str) -> dict[str, Any]:
        return {"Type": "CAPACITY_PERCENT" if self.percent else unit, "Value": self.size}

    def _rollback(self) -> dict[str, Any]:
        if not self.alarms:
            return {}
        return {"AutoRollbackConfiguration": {"Alarms": [{"AlarmName": a} for a in self.alarms]}}

    def endpoint_request(self) -> dict[str, Any]:
        """UpdateEndpoint's DeploymentConfig: blue/green with the traffic shifting asked for."""
        if self.rolling:
            raise ConfigError(
                "--rollout rolling is for inference components; an endpoint takes "
                "all-at-once, canary:SIZE or linear:SIZE"
            )
        routing: dict[str, Any] = {
            "Type": {"all-at-once": "ALL_AT_ONCE", "canary": "CANARY", "linear": "LINEAR"}[
                self.kind
            ],
            "WaitIntervalInSeconds": self.bake_s,
        }
        if self.kind == "canary":
            routing["CanarySize"] = self._size("INSTANCE_COUNT")
        elif self.kind == "linear":
            routing["LinearStepSize"] = self._size("INSTANCE_COUNT")
        policy: dict[str, Any] = {"TrafficRoutingConfiguration": routing}
        if self.termination_wait_s is not None:
            policy["TerminationWaitInSeconds"] = self.termination_wait_s
        if self.max_time_s is not None:
            policy["MaximumExecutionTimeoutInSeconds"] = self.max_time_s
        return {"BlueGreenUpdatePolicy": policy, **self._rollback()}

    def component_request(self) -> dict[str, Any]:
        """UpdateInferenceComponent's DeploymentConfig: a rolling update of the copies."""
        if not self.rolling:
            raise ConfigError(
                "an inference component is updated by rolling batches of copies: --rollout "
                "rolling:SIZE (copies, or a share such as 25%)"
            )
        policy: dict[str, Any] = {
            "MaximumBatchSize": self._size("COPY_COUNT"),
            "WaitIntervalInSeconds": self.bake_s,
        }
        if self.max_time_s is not None:
            policy["MaximumExecutionTimeoutInSeconds"] = self.max_time_s
        return {"RollingUpdatePolicy": policy, **self._rollback()}

    def check_alarms(self, cloudwatch: Client) -> None:
        """Alarms that do not exist would never roll anything back: refuse them first."""
        if not self.alarms:
            return
        found = {
            alarm["AlarmName"]
            for alarm in cloudwatch.describe_alarms(AlarmNames=list(self.alarms))["MetricAlarms"]
        }
        missing = [alarm for alarm in self.alarms if alarm not in found]
        if missing:
            raise ConfigError(
                f"--rollback-alarm {', '.join(missing)}: no such CloudWatch alarm in this "
                "region; create it first (on the endpoint's ModelLatency or Invocation5XXErrors, "
                "say)"
            )
