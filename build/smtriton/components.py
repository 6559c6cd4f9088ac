"""Inference components: models that share an endpoint's instances, each with its own share.

AWS's current way to host Triton (and the only way to scale to zero): the
endpoint's configuration names no model; it carries the execution role and
what belongs to the instances (type, count, managed instance scaling,
routing). Each component then names the image, its model data and
environment, what one copy needs (CPU cores, accelerators, memory: SageMaker
places copies by it and gives each container that share, CPU and memory as
cgroup limits, accelerators as visible devices), how many copies run, and the
startup and download timeouts. Invocations name the component
(InvokeEndpoint's InferenceComponentName).

Copies scale like instances do (smtriton/autoscaling.py), on invocations per
copy. Scaling to zero takes what AWS documents ("Scale an endpoint to zero
instances"): MinInstanceCount 0 in the variant's ManagedInstanceScaling, a
scalable target with minimum 0, and, since target tracking cannot leave zero
(it divides by the copies there are), a step scaling policy that adds one
copy, set off by a CloudWatch alarm on NoCapacityInvocationFailures, the
metric SageMaker counts when a request finds no copy. AWS's example alarm is
GreaterThanThreshold 1, which needs two such requests in a minute; this one
is GreaterThanOrEqualToThreshold 1, so the first wakes the component.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from smtriton import autoscaling, endpoints
from smtriton.autoscaling import Scalable
from smtriton.aws import Client, client, open_session
from smtriton.endpoints import TAG_KEY, ResourceNames
from smtriton.errors import ConfigError, SmtritonError
from smtriton.progress import Progress, poll

if TYPE_CHECKING:
    from smtriton.deploy import DeployConfig

log = logging.getLogger(__name__)

COMPONENT_NAME_PATTERN = re.compile(r"^[a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?$")
COPY_METRIC = "SageMakerInferenceComponentInvocationsPerCopy"
NO_CAPACITY_METRIC = "NoCapacityInvocationFailures"
# SageMaker's least: a quarter of a core, 128 MB.
MIN_CPUS = 0.25
MIN_MEMORY_MB = 128
DEFAULT_MEMORY_MB = 1024
# Least outstanding requests suits copies of unequal speed (AWS's recommendation for
# inference components); SageMaker's default is RANDOM.
ROUTING = {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"}
BUSY_STATES = frozenset({"Creating", "Updating", "Deleting"})


class ComponentFailed(SmtritonError):
    """SageMaker could not start the component's copies (or rolled an update back)."""


@dataclasses.dataclass(frozen=True)
class Resources:
    """What one copy needs; SageMaker places copies on instances by it."""

    memory_mb: int = DEFAULT_MEMORY_MB
    cpus: float | None = None
    accelerators: int | None = None
    max_memory_mb: int | None = None

    def __post_init__(self) -> None:
        if self.memory_mb < MIN_MEMORY_MB:
            raise ConfigError(f"--memory must be at least {MIN_MEMORY_MB} MB")
        if self.max_memory_mb is not None and self.max_memory_mb < self.memory_mb:
            raise ConfigError("--max-memory is below --memory")
        if self.cpus is not None and self.cpus < MIN_CPUS:
            raise ConfigError(f"--cpus must be at least {MIN_CPUS}")
        if self.accelerators is not None and self.accelerators < 1:
            raise ConfigError("--accelerators must be at least 1 (leave it out for none)")

    def request(self) -> dict[str, Any]:
        requirements: dict[str, Any] = {"MinMemoryRequiredInMb": self.memory_mb}
        if self.max_memory_mb is not None:
            requirements["MaxMemoryRequiredInMb"] = self.max_memory_mb
        if self.cpus is not None:
            requirements["NumberOfCpuCoresRequired"] = float(self.cpus)
        if self.accelerators is not None:
            requirements["NumberOfAcceleratorDevicesRequired"] = float(self.accelerators)
        return requirements


@dataclasses.dataclass(frozen=True)
class CopyScaling:
    """Target tracking on invocations per copy, between a minimum (0: to zero) and a maximum."""

    min_copies: int
    max_copies: int
    target_invocations: float
    """Invocations per copy per minute to hold."""
    scale_in_cooldown_s: int = 300
    scale_out_cooldown_s: int = 60

    def __post_init__(self) -> None:
        if self.min_copies < 0:
            raise ConfigError("--min-copies cannot be negative")
        if self.max_copies < max(1, self.min_copies):
            raise ConfigError(
                f"--max-copies ({self.max_copies}) must be at least 1 and --min-copies "
                f"({self.min_copies})"
            )
        if self.target_invocations <= 0:
            raise ConfigError("--target-invocations must be positive")
        if self.scale_in_cooldown_s < 0 or self.scale_out_cooldown_s < 0:
            raise ConfigError("cooldowns cannot be negative")

    @property
    def to_zero(self) -> bool:
        return self.min_copies == 0


@dataclasses.dataclass(frozen=True)
class ComponentConfig:
    """One inference component: its name, a copy's resources, copies, and their scaling."""

    name: str
    resources: Resources = Resources()
    copies: int | None = None
    """None: one for a new component; an update keeps the count (auto scaling's, say)."""
    scaling: CopyScaling | None = None

    def __post_init__(self) -> None:
        endpoints.check_name("inference component", self.name, COMPONENT_NAME_PATTERN)
        if self.copies is not None and self.copies < 0:
            raise ConfigError("--copies cannot be negative")
        if (
            self.scaling is not None
            and self.copies is not None
            and not (self.scaling.min_copies <= self.copies <= self.scaling.max_copies)
        ):
            raise ConfigError(
                f"--copies ({self.copies}) must lie between --min-copies and --max-copies"
            )

    @property
    def scalable(self) -> Scalable:
        return Scalable.component(self.name)

    @property
    def alarm_name(self) -> str:
        return f"{self.name}-no-capacity"


def managed_scaling(
    component: ComponentConfig, instance_count: int, bounds: tuple[int, int] | None
) -> dict[str, Any] | None:
    """The variant's ManagedInstanceScaling: on with --max-instances or scaling to zero."""
    to_zero = component.scaling is not None and component.scaling.to_zero
    if bounds is None and not to_zero:
        return None
    low, high = bounds if bounds is not None else (instance_count, instance_count)
    return {
        "Status": "ENABLED",
        "MinInstanceCount": 0 if to_zero else low,
        "MaxInstanceCount": max(high, 1),
    }


def describe(sagemaker: Client, name: str) -> dict[str, Any] | None:
    """The component's description, or None when there is none."""
    try:
        return sagemaker.describe_inference_component(InferenceComponentName=name)
    except ClientError as error:
        if endpoints.is_not_found(error):
            return None
        raise


def list_on(sagemaker: Client, endpoint_name: str) -> list[str]:
    """Names of the components an endpoint hosts."""
    names: list[str] = []
    kwargs: dict[str, Any] = {"EndpointNameEquals": endpoint_name}
    while True:
        page = sagemaker.list_inference_components(**kwargs)
        names += [c["InferenceComponentName"] for c in page.get("InferenceComponents", [])]
        if not page.get("NextToken"):
            return names
        kwargs["NextToken"] = page["NextToken"]


def hosts_components(sagemaker: Client, description: dict[str, Any]) -> bool:
    """Whether an endpoint is made for inference components (its variants name no model)."""
    config = sagemaker.describe_endpoint_config(
        EndpointConfigName=description["EndpointConfigName"]
    )
    return all("ModelName" not in variant for variant in config["ProductionVariants"])


def wait(
    sagemaker: Client,
    name: str,
    *,
    matches: dict[str, Any] | None,
    timeout_s: float,
    poll_s: float,
) -> dict[str, Any]:
    """Poll until the component is InService as asked; raise with SageMaker's reason if not.

    `matches`: the image, artifact and copies asked for; an update that
    SageMaker rolled back comes back InService without them.
    """
    seen_change = False

    def check() -> tuple[str, dict[str, Any] | None]:
        nonlocal seen_change
        description = describe(sagemaker, name)
        if description is None:
            raise ComponentFailed(f"inference component {name} disappeared")
        status = description["InferenceComponentStatus"]
        reason = description.get("FailureReason") or "SageMaker gave no reason"
        if status == "Failed":
            raise ComponentFailed(
                f"inference component {name} is Failed: {reason} (container logs: CloudWatch "
                f"log group /aws/sagemaker/InferenceComponents/{name})"
            )
        if status != "InService":
            seen_change = True
            return status, None
        if matches is None or _matches(description, matches):
            return status, description
        if seen_change:
            raise ComponentFailed(
                f"update of inference component {name} failed and SageMaker kept the copies "
                f"that were serving: {reason}"
            )
        return status, None

    return poll(
        Progress(f"inference component {name}"),
        check,
        timeout_s=timeout_s,
        poll_s=poll_s,
        still_waiting="SageMaker carries on: check it with `aws sagemaker "
        f"describe-inference-component --inference-component-name {name}`",
    )


def _matches(description: dict[str, Any], asked: dict[str, Any]) -> bool:
    container = description.get("Specification", {}).get("Container", {})
    image = container.get("DeployedImage", {}).get("SpecifiedImage")
    copies = description.get("RuntimeConfig", {}).get("DesiredCopyCount")
    return (
        ("model" not in asked or description["Specification"].get("ModelName") == asked["model"])
        and ("image" not in asked or image == asked["image"])
        and ("artifact" not in asked or container.get("ArtifactUrl") == asked["artifact"])
        and ("copies" not in asked or copies == asked["copies"])
    )


def attach_scaling(aas: Client, cloudwatch: Client, component: ComponentConfig) -> None:
    """Copy auto scaling; with a minimum of 0, the step policy and alarm that wake it."""
    scaling = component.scaling
    if scaling is None:
        return
    target = component.scalable
    autoscaling.track(
        aas,
        target,
        bounds=(scaling.min_copies, scaling.max_copies),
        policy_name=f"{component.name}-invocations-per-copy",
        metric=COPY_METRIC,
        value=scaling.target_invocations,
        cooldowns=(scaling.scale_in_cooldown_s, scaling.scale_out_cooldown_s),
    )
    log.info(
        "auto scaling %s: %d-%d copies, target %g invocations/copy/minute",
        target.resource_id,
        scaling.min_copies,
        scaling.max_copies,
        scaling.target_invocations,
    )
    wake_policy = f"{component.name}-scale-out-from-zero"
    if not scaling.to_zero:
        _remove_wake_up(aas, cloudwatch, component)
        return
    arn = aas.put_scaling_policy(
        PolicyName=wake_policy,
        **target.scope,
        PolicyType="StepScaling",
        StepScalingPolicyConfiguration={
            "AdjustmentType": "ChangeInCapacity",
            "MetricAggregationType": "Maximum",
            "Cooldown": scaling.scale_out_cooldown_s,
            "StepAdjustments": [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}],
        },
    )["PolicyARN"]
    cloudwatch.put_metric_alarm(
        AlarmName=component.alarm_name,
        AlarmDescription=f"{component.name} was invoked with no copies: start one",
        AlarmActions=[arn],
        Namespace="AWS/SageMaker",
        MetricName=NO_CAPACITY_METRIC,
        Dimensions=[{"Name": "InferenceComponentName", "Value": component.name}],
        Statistic="Sum",
        Period=60,
        EvaluationPeriods=1,
        DatapointsToAlarm=1,
        Threshold=1,
        ComparisonOperator="GreaterThanOrEqualToThreshold",
        TreatMissingData="notBreaching",
    )
    log.info(
        "scale to zero: %s starts a copy when invoked with none (alarm %s on %s)",
        component.name,
        component.alarm_name,
        NO_CAPACITY_METRIC,
    )


def _remove_wake_up(aas: Client, cloudwatch: Client, component: ComponentConfig) -> None:
    scope = component.scalable.scope
    policies = aas.describe_scaling_policies(**scope)["ScalingPolicies"]
    for policy in policies:
        if policy["PolicyType"] == "StepScaling":
            aas.delete_scaling_policy(PolicyName=policy["PolicyName"], **scope)
    cloudwatch.delete_alarms(AlarmNames=[component.alarm_name])


def remove(
    sagemaker: Client,
    aas: Client,
    cloudwatch: Client,
    name: str,
    *,
    timeout_s: float,
    poll_s: float,
) -> list[str]:
    """Delete a component with its scaling and alarm, and wait until it is gone.

    SageMaker deletes an endpoint only once its components are gone, so this
    waits whatever the caller asked for the endpoint itself.
    """
    deleted: list[str] = []
    target = Scalable.component(name)
    if autoscaling.read(aas, target) is not None:
        autoscaling.detach(aas, target)
        deleted.append(f"scalable-target/{target.resource_id}")
    alarm = f"{name}-no-capacity"
    if cloudwatch.describe_alarms(AlarmNames=[alarm])["MetricAlarms"]:
        cloudwatch.delete_alarms(AlarmNames=[alarm])
        deleted.append(f"alarm/{alarm}")
    description = describe(sagemaker, name)
    if description is None:
        return deleted
    model = description.get("Specification", {}).get("ModelName")
    sagemaker.delete_inference_component(InferenceComponentName=name)

    def check() -> tuple[str, bool | None]:
        description = describe(sagemaker, name)
        if description is None:
            return "gone", True
        return description["InferenceComponentStatus"], None

    poll(
        Progress(f"inference component {name}"),
        check,
        timeout_s=timeout_s,
        poll_s=poll_s,
        still_waiting="SageMaker carries on deleting it; delete the endpoint once it is gone",
    )
    deleted.append(f"inference-component/{name}")
    if model and _made_for(name, model):
        endpoints.delete_quietly(sagemaker.delete_model, f"model {model}", ModelName=model)
        deleted.append(f"model/{model}")
    return deleted


# --- deploy ---------------------------------------------------------------------------------------


def deploy(config: DeployConfig) -> dict[str, Any] | None:
    """Create the endpoint when missing, then create or update the component; its description.

    Returns None with --no-wait once SageMaker accepted the component (the
    endpoint itself is waited for: SageMaker places components only on an
    endpoint in service).
    """
    component = config.component
    assert component is not None
    session = open_session(config.aws)
    sagemaker = client(session, "sagemaker")
    aas = client(session, "application-autoscaling")
    cloudwatch = client(session, "cloudwatch")
    if config.rollout is not None:
        config.rollout.check_alarms(cloudwatch)
    existing = endpoints.describe_endpoint(sagemaker, config.endpoint_name)
    current = describe(sagemaker, component.name)
    _check_component(config, current)
    if existing is None:
        _create_endpoint(config, sagemaker)
    else:
        _check_endpoint(config, sagemaker, existing)
    # A component's container takes a model.tar.gz (ArtifactUrl) only; uncompressed model
    # data comes through a model of its own, which the component names.
    model = ResourceNames.new(component.name).model if config.uncompressed else None
    if model is not None:
        sagemaker.create_model(**config.model_request(model))
        log.info("created model %s (the uncompressed model data)", model)
    try:
        description = _place(config, sagemaker, current, model)
    except Exception:
        if model is not None:
            endpoints.delete_quietly(sagemaker.delete_model, f"model {model}", ModelName=model)
        raise
    if description is None:
        return None
    replaced = (current or {}).get("Specification", {}).get("ModelName")
    if replaced and replaced != model and _made_for(component.name, replaced):
        endpoints.delete_quietly(sagemaker.delete_model, f"model {replaced}", ModelName=replaced)
    attach_scaling(aas, cloudwatch, component)
    return description


def _place(
    config: DeployConfig, sagemaker: Client, current: dict[str, Any] | None, model: str | None
) -> dict[str, Any] | None:
    """Create or update the component; its description once InService (None: --no-wait)."""
    component = config.component
    assert component is not None
    request: dict[str, Any] = {
        "InferenceComponentName": component.name,
        "Specification": specification(config, model),
    }
    asked: dict[str, Any] = {"model": model} if model else {"image": config.image}
    if config.model_data and not model:
        asked["artifact"] = config.model_data
    if current is None:
        copies = 1 if component.copies is None else component.copies
        sagemaker.create_inference_component(
            **request,
            EndpointName=config.endpoint_name,
            VariantName=config.variant_name,
            RuntimeConfig={"CopyCount": copies},
            Tags=[{"Key": TAG_KEY, "Value": config.endpoint_name}],
        )
        asked["copies"] = copies
        log.info("creating inference component %s on %s", component.name, config.endpoint_name)
    else:
        if component.copies is not None:
            request["RuntimeConfig"] = {"CopyCount": component.copies}
            asked["copies"] = component.copies
        if config.rollout is not None:
            request["DeploymentConfig"] = config.rollout.component_request()
        sagemaker.update_inference_component(**request)
        log.info("updating inference component %s", component.name)
    if not config.wait:
        return None
    return wait(
        sagemaker,
        component.name,
        matches=asked,
        timeout_s=config.wait_timeout_s,
        poll_s=config.poll_interval_s,
    )


def _made_for(component: str, model: str) -> bool:
    """Whether `model` is one deploy made for `component` (so deploy may delete it)."""
    return bool(ResourceNames.suffix_pattern(component).match(model))


def specification(config: DeployConfig, model: str | None = None) -> dict[str, Any]:
    """The component's Specification: container (or `model`), a copy's resources, startup limits."""
    assert config.component is not None
    spec: dict[str, Any]
    if model is not None:
        spec = {"ModelName": model}
    else:
        container: dict[str, Any] = {
            "Image": config.image,
            "Environment": config.container_environment,
        }
        if config.model_data:
            container["ArtifactUrl"] = config.model_data
        spec = {"Container": container}
    return {
        **spec,
        "ComputeResourceRequirements": config.component.resources.request(),
        "StartupParameters": {
            "ContainerStartupHealthCheckTimeoutInSeconds": config.startup_timeout_s,
            "ModelDataDownloadTimeoutInSeconds": config.download_timeout_s,
        },
    }


def _check_component(config: DeployConfig, current: dict[str, Any] | None) -> None:
    assert config.component is not None
    if current is None:
        return
    name = config.component.name
    if current["EndpointName"] != config.endpoint_name:
        raise ConfigError(
            f"inference component {name} is on endpoint {current['EndpointName']}; component "
            "names are unique in a region: choose another --inference-component"
        )
    endpoints.check_updatable(
        f"inference component {name}",
        current,
        "InferenceComponentStatus",
        BUSY_STATES,
        f"smtriton delete --endpoint-name {config.endpoint_name} --inference-component {name}",
    )


def _create_endpoint(config: DeployConfig, sagemaker: Client) -> None:
    """An endpoint for components: the role and the instances, no model."""
    assert config.component is not None
    name = config.endpoint_name
    names = ResourceNames.new(name)
    variant: dict[str, Any] = {
        "VariantName": config.variant_name,
        "InstanceType": config.instance,
        "InitialInstanceCount": config.instances,
        "RoutingConfig": ROUTING,
    }
    managed = managed_scaling(config.component, config.instances, config.instance_bounds)
    if managed is not None:
        variant["ManagedInstanceScaling"] = managed
    variant.update(config.ami_request)
    sagemaker.create_endpoint_config(
        EndpointConfigName=names.endpoint_config,
        ExecutionRoleArn=config.role_arn,
        ProductionVariants=[variant],
        Tags=[{"Key": TAG_KEY, "Value": name}],
    )
    log.info("created endpoint configuration %s (for inference components)", names.endpoint_config)
    try:
        sagemaker.create_endpoint(
            EndpointName=name,
            EndpointConfigName=names.endpoint_config,
            Tags=[{"Key": TAG_KEY, "Value": name}],
        )
    except Exception:
        sagemaker.delete_endpoint_config(EndpointConfigName=names.endpoint_config)
        raise
    log.info("creating endpoint %s", name)
    try:
        endpoints.wait_for_endpoint(
            sagemaker,
            name,
            expected_config=names.endpoint_config,
            timeout_s=config.wait_timeout_s,
            poll_s=config.poll_interval_s,
        )
    except endpoints.EndpointFailed as error:
        raise SmtritonError(
            f"{error}; remove it with `smtriton delete --endpoint-name {name}`"
        ) from None


def _check_endpoint(config: DeployConfig, sagemaker: Client, description: dict[str, Any]) -> None:
    """An existing endpoint takes the component only if it is made for components, as asked."""
    assert config.component is not None
    name = config.endpoint_name
    status = description["EndpointStatus"]
    if status != "InService":
        raise SmtritonError(
            f"endpoint {name} is {status}: a component can be placed on an endpoint in service "
            "only; wait until it settles, or delete it"
        )
    endpoint_config = sagemaker.describe_endpoint_config(
        EndpointConfigName=description["EndpointConfigName"]
    )
    variant = next(
        (
            v
            for v in endpoint_config["ProductionVariants"]
            if v["VariantName"] == config.variant_name
        ),
        None,
    )
    if variant is None or "ModelName" in variant:
        raise ConfigError(
            f"endpoint {name} serves a model of its own (deployed without "
            "--inference-component): components need an endpoint made for them; use another "
            f"--endpoint-name, or `smtriton delete --endpoint-name {name}` first"
        )
    if config.instance_type is not None and variant["InstanceType"] != config.instance_type:
        raise ConfigError(
            f"endpoint {name} runs {variant['InstanceType']}, not {config.instance_type}: an "
            "endpoint's instances are chosen when it is created; drop --instance-type, or "
            "deploy to another endpoint"
        )
    if config.ami_version is not None and variant.get("InferenceAmiVersion") != config.ami_version:
        raise ConfigError(
            f"endpoint {name} runs {variant.get('InferenceAmiVersion', 'the default AMI')}, not "
            f"{config.ami_version}: an endpoint's AMI is chosen when it is created; drop "
            "--inference-ami-version, or deploy to another endpoint"
        )
    to_zero = config.component.scaling is not None and config.component.scaling.to_zero
    managed = variant.get("ManagedInstanceScaling") or {}
    if to_zero and managed.get("MinInstanceCount") != 0:
        raise ConfigError(
            f"endpoint {name} was created to keep at least one instance (ManagedInstanceScaling "
            "MinInstanceCount is not 0), so its components cannot scale to zero; create the "
            "endpoint with its first component at --min-copies 0"
        )
