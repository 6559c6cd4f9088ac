"""Target-tracking auto scaling of an endpoint variant (Application Auto Scaling).

Scaling out across instances is how a deployment outgrows one machine: the
policy keeps invocations per instance near a target, between a minimum and
a maximum instance count.
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


def read(aas: Client, endpoint_name: str, variant_name: str) -> ScalingState | None:
    """The variant's scalable target and policies, or None when it does not scale."""
    rid = resource_id(endpoint_name, variant_name)
    targets = aas.describe_scalable_targets(
        ServiceNamespace=NAMESPACE, ResourceIds=[rid], ScalableDimension=DIMENSION
    )["ScalableTargets"]
    if not targets:
        return None
    policies = aas.describe_scaling_policies(
        ServiceNamespace=NAMESPACE, ResourceId=rid, ScalableDimension=DIMENSION
    )["ScalingPolicies"]
    return ScalingState(
        min_instances=targets[0]["MinCapacity"],
        max_instances=targets[0]["MaxCapacity"],
        policies=tuple(
            {key: policy[key] for key in _POLICY_FIELDS if key in policy} for policy in policies
        ),
    )


def attach(aas: Client, endpoint_name: str, variant_name: str, config: ScalingConfig) -> None:
    """Register the variant (or update its bounds) and put the target-tracking policy."""
    rid = resource_id(endpoint_name, variant_name)
    aas.register_scalable_target(
        ServiceNamespace=NAMESPACE,
        ResourceId=rid,
        ScalableDimension=DIMENSION,
        MinCapacity=config.min_instances,
        MaxCapacity=config.max_instances,
    )
    aas.put_scaling_policy(
        PolicyName=config.policy_name(endpoint_name),
        ServiceNamespace=NAMESPACE,
        ResourceId=rid,
        ScalableDimension=DIMENSION,
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": float(config.target_invocations),
            "PredefinedMetricSpecification": {"PredefinedMetricType": METRIC},
            "ScaleInCooldown": config.scale_in_cooldown_s,
            "ScaleOutCooldown": config.scale_out_cooldown_s,
        },
    )
    log.info(
        "auto scaling %s: %d-%d instances, target %g invocations/instance/minute",
        rid,
        config.min_instances,
        config.max_instances,
        config.target_invocations,
    )


def restore(aas: Client, endpoint_name: str, variant_name: str, state: ScalingState) -> None:
    """Put back a target and policies saved by read()."""
    rid = resource_id(endpoint_name, variant_name)
    aas.register_scalable_target(
        ServiceNamespace=NAMESPACE,
        ResourceId=rid,
        ScalableDimension=DIMENSION,
        MinCapacity=state.min_instances,
        MaxCapacity=state.max_instances,
    )
    for policy in state.policies:
        aas.put_scaling_policy(
            ServiceNamespace=NAMESPACE, ResourceId=rid, ScalableDimension=DIMENSION, **policy
        )
    log.info("auto scaling of %s restored", rid)


def detach(aas: Client, endpoint_name: str, variant_name: str) -> None:
    """Delete the variant's scaling policies, then deregister it (AWS's documented order)."""
    rid = resource_id(endpoint_name, variant_name)
    scope = {"ServiceNamespace": NAMESPACE, "ResourceId": rid, "ScalableDimension": DIMENSION}
    for policy in aas.describe_scaling_policies(**scope)["ScalingPolicies"]:
        aas.delete_scaling_policy(PolicyName=policy["PolicyName"], **scope)
    aas.deregister_scalable_target(**scope)
    log.info("auto scaling of %s detached", rid)
