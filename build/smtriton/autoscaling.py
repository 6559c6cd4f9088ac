"""Target-tracking auto scaling (Application Auto Scaling) of what SageMaker scales.

Two things scale: an endpoint variant's instances, and an inference
component's copies (smtriton/components.py). Scaling out across instances is
how a deployment outgrows one machine: the policy keeps invocations per
instance (or per copy) near a target, between a minimum and a maximum.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from smtriton.aws import Client
from smtriton.errors import ConfigError

log = logging.getLogger(__name__)

NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
METRIC = "SageMakerVariantInvocationsPerInstance"
COPY_DIMENSION = "sagemaker:inference-component:DesiredCopyCount"
# What put_scaling_policy accepts back from describe_scaling_policies.
_POLICY_FIELDS = (
    "PolicyName",
    "PolicyType",
    "TargetTrackingScalingPolicyConfiguration",
    "StepScalingPolicyConfiguration",
)


def resource_id(endpoint_name: str, variant_name: str) -> str:
    return f"endpoint/{endpoint_name}/variant/{variant_name}"


@dataclass(frozen=True)
class Scalable:
    """One thing Application Auto Scaling scales: its resource id and dimension."""

    resource_id: str
    dimension: str

    @classmethod
    def variant(cls, endpoint_name: str, variant_name: str) -> Scalable:
        return cls(resource_id(endpoint_name, variant_name), DIMENSION)

    @classmethod
    def component(cls, name: str) -> Scalable:
        return cls(f"inference-component/{name}", COPY_DIMENSION)

    @property
    def scope(self) -> dict[str, str]:
        return {
            "ServiceNamespace": NAMESPACE,
            "ResourceId": self.resource_id,
            "ScalableDimension": self.dimension,
        }


@dataclass(frozen=True)
class ScalingConfig:
    """A target-tracking policy on invocations per instance."""

    min_instances: int
    max_instances: int
    target_invocations: float
    """Invocations per instance per minute to hold; measure one instance's capacity first."""
    scale_in_cooldown_s: int = 300
    scale_out_cooldown_s: int = 60

    def __post_init__(self) -> None:
        if self.min_instances < 1:
            raise ConfigError("--min-instances must be at least 1")
        if self.max_instances < self.min_instances:
            raise ConfigError(
                f"--max-instances ({self.max_instances}) is below --min-instances "
                f"({self.min_instances})"
            )
        if self.target_invocations <= 0:
            raise ConfigError("--target-invocations must be positive")
        if self.scale_in_cooldown_s < 0 or self.scale_out_cooldown_s < 0:
            raise ConfigError("cooldowns cannot be negative")

    def policy_name(self, endpoint_name: str) -> str:
        return f"{endpoint_name}-invocations-per-instance"


@dataclass(frozen=True)
class ScalingState:
    """What is registered now, kept so it can be put back after a detach."""

    min_instances: int
    max_instances: int
    policies: tuple[dict[str, Any], ...]


def read(aas: Client, target: Scalable) -> ScalingState | None:
    """The scalable target and its policies, or None when it does not scale."""
    targets = aas.describe_scalable_targets(
        ServiceNamespace=NAMESPACE,
        ResourceIds=[target.resource_id],
        ScalableDimension=target.dimension,
    )["ScalableTargets"]
    if not targets:
        return None
    policies = aas.describe_scaling_policies(**target.scope)["ScalingPolicies"]
    return ScalingState(
        min_instances=targets[0]["MinCapacity"],
        max_instances=targets[0]["MaxCapacity"],
        policies=tuple(
            {key: policy[key] for key in _POLICY_FIELDS if key in policy} for policy in policies
        ),
    )


def track(
    aas: Client,
    target: Scalable,
    *,
    bounds: tuple[int, int],
    policy_name: str,
    metric: str,
    value: float,
    cooldowns: tuple[int, int],
) -> None:
    """Register `target` between `bounds` and put a target-tracking policy on `metric`.

    `cooldowns` are (scale in, scale out) seconds.
    """
    aas.register_scalable_target(**target.scope, MinCapacity=bounds[0], MaxCapacity=bounds[1])
    aas.put_scaling_policy(
        PolicyName=policy_name,
        **target.scope,
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": float(value),
            "PredefinedMetricSpecification": {"PredefinedMetricType": metric},
            "ScaleInCooldown": cooldowns[0],
            "ScaleOutCooldown": cooldowns[1],
        },
    )


def attach(aas: Client, endpoint_name: str, variant_name: str, config: ScalingConfig) -> None:
    """Register the variant (or update its bounds) and put the target-tracking policy."""
    target = Scalable.variant(endpoint_name, variant_name)
    track(
        aas,
        target,
        bounds=(config.min_instances, config.max_instances),
        policy_name=config.policy_name(endpoint_name),
        metric=METRIC,
        value=config.target_invocations,
        cooldowns=(config.scale_in_cooldown_s, config.scale_out_cooldown_s),
    )
    log.info(
        "auto scaling %s: %d-%d instances, target %g invocations/instance/minute",
        target.resource_id,
        config.min_instances,
        config.max_instances,
        config.target_invocations,
    )


def restore(aas: Client, target: Scalable, state: ScalingState) -> None:
    """Put back a target and policies saved by read()."""
    aas.register_scalable_target(
        **target.scope, MinCapacity=state.min_instances, MaxCapacity=state.max_instances
    )
    for policy in state.policies:
        aas.put_scaling_policy(**target.scope, **policy)
    log.info("auto scaling of %s restored", target.resource_id)


def detach(aas: Client, target: Scalable) -> None:
    """Delete the target's scaling policies, then deregister it (AWS's documented order)."""
    for policy in aas.describe_scaling_policies(**target.scope)["ScalingPolicies"]:
        aas.delete_scaling_policy(PolicyName=policy["PolicyName"], **target.scope)
    aas.deregister_scalable_target(**target.scope)
    log.info("auto scaling of %s detached", target.resource_id)
