"""The stand-in's SageMaker control plane: what moto 5.2 lacks, added to moto's own.

- UpdateEndpoint, and endpoint states over time: CreateEndpoint/UpdateEndpoint
  leave the endpoint Creating/Updating and each DescribeEndpoint moves it one
  step on, as SageMaker does over minutes. Where a real container answers for
  the endpoint (fake_containers.py), it becomes InService only once that
  container answers /ping, and Failed (or, for an update, RollingBack to the
  old configuration) with the container's last output when it exits first;
- endpoint failures on demand: a model whose container environment holds
  FAKE_SAGEMAKER_FAILURE_REASON fails to start (create: Failed; update:
  RollingBack, then InService on the old configuration), with that reason;
- today's instance types: moto 5.2 checks endpoint configurations against an
  old list (no ml.g5, smtriton deploy's default); the newer families
  (NEWER_FAMILIES) are taken too, and anything else is still moto's to refuse;
- endpoint configurations for inference components: ExecutionRoleArn kept,
  and variants that name no model (SageMaker requires the role then);
- inference components (Create/Describe/Update/UpdateRuntimeConfig/Delete/
  List), with copies: a component with copies runs its container, one with
  none answers no invocation; DeleteEndpoint is refused while components
  remain (the stand-in's wording: SageMaker's own is not documented);
- scale-out from zero as AWS documents it: an invocation of a component with
  no copies counts one NoCapacityInvocationFailures for it; a CloudWatch
  alarm on that metric whose threshold the last minute's count crosses fires
  its actions, and a step scaling policy among them adds copies (bounded by
  the scalable target), the way Application Auto Scaling would;
- deployment guardrails' auto-rollback: an update whose DeploymentConfig names
  a CloudWatch alarm that is in ALARM rolls back (an endpoint: RollingBack,
  then InService on its old configuration; a component: InService on its old
  copies), with the alarm named in FailureReason;
- Application Auto Scaling's `sagemaker:inference-component:DesiredCopyCount`
  dimension, which moto's enumeration lacks;
- transform jobs that run (fake_transform.py).
"""

from __future__ import annotations

import dataclasses
import enum
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import moto.applicationautoscaling.models as aas_models
import moto.applicationautoscaling.responses as aas_responses
from moto.applicationautoscaling.models import applicationautoscaling_backends
from moto.cloudwatch.models import cloudwatch_backends
from moto.core.responses import ActionResult, EmptyResult
from moto.sagemaker import models as sagemaker_models
from moto.sagemaker.exceptions import ValidationError
from moto.sagemaker.responses import SageMakerResponse

from tests.build.fake_containers import CONTAINERS, ContainerSpec

FAILURE_VARIABLE = "FAKE_SAGEMAKER_FAILURE_REASON"
ACCOUNT = "123456789012"
COPY_DIMENSION = "sagemaker:inference-component:DesiredCopyCount"
NO_CAPACITY_METRIC = "NoCapacityInvocationFailures"
# The step after Deleting: the component no longer exists.
GONE = "gone"

Backend = Any


def backend_of(region: str) -> Backend:
    return sagemaker_models.sagemaker_backends[ACCOUNT][region]


def _now() -> datetime:
    return datetime.now(timezone.utc)


# --- endpoints ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Step:
    """A state an endpoint (or component) takes at a later describe."""

    status: str
    config: str | None = None
    reason: str | None = None
    gate: str | None = None
    """A container owner that must answer /ping before this step is taken."""


def _model_container(backend: Backend, model_name: str) -> dict[str, Any]:
    model = backend._models[model_name]
    return model.primary_container or (model.containers or [{}])[0]


def _failure_reason(backend: Backend, config_name: str) -> str | None:
    config = backend.endpoint_configs[config_name]
    for variant in config.production_variants:
        if "ModelName" not in variant:
            continue
        container = _model_container(backend, variant["ModelName"])
        reason = container.get("Environment", {}).get(FAILURE_VARIABLE)
        if reason:
            return reason
    return None


def endpoint_spec(backend: Backend, config_name: str) -> ContainerSpec | None:
    """The container an endpoint configuration runs (None: it hosts inference components)."""
    config = backend.endpoint_configs[config_name]
    variant = config.production_variants[0]
    if "ModelName" not in variant:
        return None
    return ContainerSpec.of(_model_container(backend, variant["ModelName"]))


def _steps(resource: Any) -> list[Step]:
    return resource.__dict__.setdefault("fake_steps", [])


def _owner(kind: str, name: str, pending: bool = False) -> str:
    return f"{kind}/{name}{'#next' if pending else ''}"


def _advance(resource: Any, apply: Callable[[Step], None], fail: Callable[[str], None]) -> None:
    """Take the next pending step of `resource`, unless its container is still starting."""
    steps = _steps(resource)
    if not steps:
        return
    step = steps[0]
    if step.gate is not None:
        container = CONTAINERS.of(step.gate)
        state = container.state() if container is not None else "ready"
        if state == "starting":
            return
        if state == "failed":
            reason = container.failure() if container is not None else "the container failed"
            CONTAINERS.release(step.gate)
            steps.clear()
            fail(reason)
            return
    steps.pop(0)
    apply(step)


_original_create_endpoint = sagemaker_models.SageMakerModelBackend.create_endpoint
_original_describe_endpoint = sagemaker_models.SageMakerModelBackend.describe_endpoint
_original_delete_endpoint = sagemaker_models.SageMakerModelBackend.delete_endpoint
_original_validate_variants = sagemaker_models.SageMakerModelBackend.validate_production_variants


def create_endpoint(self: Backend, endpoint_name: str, endpoint_config_name: str, tags: Any) -> Any:
    endpoint = _original_create_endpoint(self, endpoint_name, endpoint_config_name, tags)
    reason = _failure_reason(self, endpoint_config_name)
    endpoint.endpoint_status = "Creating"
    if reason:
        _steps(endpoint)[:] = [Step("Creating"), Step("Failed", endpoint_config_name, reason)]
        return endpoint
    spec = endpoint_spec(self, endpoint_config_name)
    owner = _owner("endpoint", endpoint_name)
    gate = owner if spec is not None and CONTAINERS.acquire(owner, spec) is not None else None
    _steps(endpoint)[:] = [Step("Creating"), Step("InService", gate=gate)]
    return endpoint


def describe_endpoint(self: Backend, endpoint_name: str) -> dict[str, Any]:
    endpoint = self.endpoints.get(endpoint_name)
    if endpoint is not None:

        def apply(step: Step) -> None:
            endpoint.endpoint_status = step.status
            endpoint.failure_reason = step.reason
            if step.config:
                endpoint.endpoint_config_name = step.config
            if step.gate is not None and step.gate.endswith("#next"):
                # The new containers serve now; the old ones go.
                container = CONTAINERS.of(step.gate)
                if container is not None:
                    CONTAINERS.acquire(_owner("endpoint", endpoint_name), container.spec)
                CONTAINERS.release(step.gate)

        def fail(reason: str) -> None:
            previous = endpoint.__dict__.get("fake_previous_config")
            if previous is None:
                endpoint.endpoint_status, endpoint.failure_reason = "Failed", reason
                return
            endpoint.endpoint_status, endpoint.failure_reason = "RollingBack", reason
            _steps(endpoint)[:] = [Step("InService", previous, reason)]

        _advance(endpoint, apply, fail)
    return _original_describe_endpoint(self, endpoint_name)


def update_endpoint(self: Backend, endpoint_name: str, endpoint_config_name: str) -> Any:
    endpoint = self.endpoints.get(endpoint_name)
    if endpoint is None:
        arn = sagemaker_models.FakeEndpoint.arn_formatter(
            endpoint_name, self.account_id, self.region_name
        )
        raise ValidationError(message=f"Could not find endpoint '{arn}'.")
    if endpoint_config_name not in self.endpoint_configs:
        raise ValidationError(
            message=f"Could not find endpoint configuration '{endpoint_config_name}'."
        )
    if endpoint.endpoint_status != "InService":
        raise ValidationError(message=f"Cannot update in-progress endpoint '{endpoint_name}'.")
    old_config = endpoint.endpoint_config_name
    endpoint.__dict__["fake_previous_config"] = old_config
    reason = _failure_reason(self, endpoint_config_name)
    endpoint.endpoint_status = "Updating"
    if reason:
        _steps(endpoint)[:] = [
            Step("Updating"),
            Step("RollingBack", reason=reason),
            Step("InService", old_config, reason),
        ]
        return endpoint
    config = self.endpoint_configs[endpoint_config_name]
    endpoint.production_variants = endpoint._process_production_variants(config.production_variants)
    spec = endpoint_spec(self, endpoint_config_name)
    pending = _owner("endpoint", endpoint_name, pending=True)
    gate = pending if spec is not None and CONTAINERS.acquire(pending, spec) is not None else None
    _steps(endpoint)[:] = [Step("Updating"), Step("InService", endpoint_config_name, gate=gate)]
    return endpoint


def alarm_going_off(region: str, deployment: dict[str, Any] | None) -> str | None:
    """Why a deployment rolls back: an auto-rollback alarm of it in ALARM, if any."""
    alarms = ((deployment or {}).get("AutoRollbackConfiguration") or {}).get("Alarms") or []
    cloudwatch = cloudwatch_backends[ACCOUNT][region]
    for alarm in alarms:
        found = cloudwatch.alarms.get(alarm.get("AlarmName"))
        if found is not None and found.state_value == "ALARM":
            return (
                f"Alarm {found.name} went into ALARM during the deployment; SageMaker rolled "
                "the deployment back."
            )
    return None


def update_endpoint_response(self: SageMakerResponse) -> Any:
    name = self._get_param("EndpointName")
    endpoint = self.sagemaker_backend.update_endpoint(
        endpoint_name=name, endpoint_config_name=self._get_param("EndpointConfigName")
    )
    # DescribeEndpoint shows the last deployment configuration.
    deployment = self._get_param("DeploymentConfig")
    if deployment:
        endpoint.__dict__["last_deployment_config"] = deployment
    reason = alarm_going_off(self.region, deployment)
    if reason:
        CONTAINERS.release(_owner("endpoint", name, pending=True))
        previous = endpoint.__dict__["fake_previous_config"]
        _steps(endpoint)[:] = [
            Step("Updating"),
            Step("RollingBack", reason=reason),
            Step("InService", previous, reason),
        ]
    return ActionResult({"EndpointArn": endpoint.arn})


def delete_endpoint(self: Backend, endpoint_name: str) -> None:
    hosted = sorted(c.name for c in components(self).values() if c.endpoint_name == endpoint_name)
    if hosted:
        raise ValidationError(
            message=f"Cannot delete endpoint {endpoint_name}: it hosts inference components "
            f"({', '.join(hosted)}); delete them first."
        )
    _original_delete_endpoint(self, endpoint_name)
    CONTAINERS.release(_owner("endpoint", endpoint_name))
    CONTAINERS.release(_owner("endpoint", endpoint_name, pending=True))


# Instance families SageMaker offers that moto 5.2's list lacks; moto's own check stays
# for every other family, so a made-up type is still refused.
NEWER_FAMILIES = frozenset(
    {"g5", "g6", "g6e", "p4d", "p4de", "p5", "p5e", "inf2", "trn1", "c7i", "m7i", "r7i"}
)
_original_validate_instance_type = sagemaker_models.FakeEndpointConfig.validate_instance_type


def validate_instance_type(self: Any, instance_type: str) -> None:
    family = instance_type.split(".")[1] if instance_type.count(".") == 2 else ""
    size = instance_type.rsplit(".", 1)[-1]
    known_size = size in {"large", "medium"} or size.endswith("xlarge")
    if family not in NEWER_FAMILIES or not known_size:
        _original_validate_instance_type(self, instance_type)


def validate_production_variants(self: Backend, production_variants: list[dict[str, Any]]) -> None:
    """Variants of an inference-component endpoint name no model: only the others are checked."""
    _original_validate_variants(self, [v for v in production_variants if "ModelName" in v])


def create_endpoint_config_response(self: SageMakerResponse) -> Any:
    variants = self._get_param("ProductionVariants")
    role = self._get_param("ExecutionRoleArn")
    if any("ModelName" not in variant for variant in variants) and not role:
        raise ValidationError(
            message="ExecutionRoleArn is required when a production variant names no model "
            "(an endpoint for inference components)."
        )
    config = self.sagemaker_backend.create_endpoint_config(
        endpoint_config_name=self._get_param("EndpointConfigName"),
        async_inference_config=self._get_param("AsyncInferenceConfig"),
        production_variants=variants,
        data_capture_config=self._get_param("DataCaptureConfig"),
        tags=self._get_param("Tags"),
        kms_key_id=self._get_param("KmsKeyId"),
    )
    config.execution_role_arn = role
    return ActionResult({"EndpointConfigArn": config.endpoint_config_arn})


_original_config_response = sagemaker_models.FakeEndpointConfig.response_object


def endpoint_config_response_object(self: Any) -> dict[str, Any]:
    response = _original_config_response.fget(self)  # type: ignore[attr-defined]
    role = self.__dict__.get("execution_role_arn")
    if role:
        response["ExecutionRoleArn"] = role
    return response


# --- inference components -----------------------------------------------------------------------


@dataclasses.dataclass
class Component:
    name: str
    arn: str
    endpoint_name: str
    endpoint_arn: str
    variant_name: str
    specification: dict[str, Any]
    copies: int
    status: str = "Creating"
    failure_reason: str | None = None
    created: datetime = dataclasses.field(default_factory=_now)
    modified: datetime = dataclasses.field(default_factory=_now)
    last_deployment_config: dict[str, Any] | None = None
    previous: tuple[dict[str, Any], int] | None = None
    """Specification and copies an update replaces, for its rollback."""
    fake_steps: list[Step] = dataclasses.field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        summary: dict[str, Any] = {
            key: value for key, value in self.specification.items() if key != "Container"
        }
        container = self.specification.get("Container")
        if container:
            summary["Container"] = {
                "DeployedImage": {
                    "SpecifiedImage": container.get("Image", ""),
                    "ResolvedImage": container.get("Image", ""),
                    "ResolutionTime": self.modified,
                },
                **{k: v for k, v in container.items() if k in ("ArtifactUrl", "Environment")},
            }
        described: dict[str, Any] = {
            "InferenceComponentName": self.name,
            "InferenceComponentArn": self.arn,
            "EndpointName": self.endpoint_name,
            "EndpointArn": self.endpoint_arn,
            "VariantName": self.variant_name,
            "Specification": summary,
            "RuntimeConfig": {
                "DesiredCopyCount": self.copies,
                "CurrentCopyCount": self.copies if self.status == "InService" else 0,
            },
            "CreationTime": self.created,
            "LastModifiedTime": self.modified,
            "InferenceComponentStatus": self.status,
        }
        if self.failure_reason:
            described["FailureReason"] = self.failure_reason
        if self.last_deployment_config:
            described["LastDeploymentConfig"] = self.last_deployment_config
        return described

    def summary(self) -> dict[str, Any]:
        return {
            "InferenceComponentName": self.name,
            "InferenceComponentArn": self.arn,
            "EndpointName": self.endpoint_name,
            "EndpointArn": self.endpoint_arn,
            "VariantName": self.variant_name,
            "InferenceComponentStatus": self.status,
            "CreationTime": self.created,
            "LastModifiedTime": self.modified,
        }


def components(backend: Backend) -> dict[str, Component]:
    return backend.__dict__.setdefault("fake_components", {})


def _component_arn(backend: Backend, name: str) -> str:
    return f"arn:aws:sagemaker:{backend.region_name}:{ACCOUNT}:inference-component/{name}"


def _not_found(backend: Backend, name: str) -> ValidationError:
    return ValidationError(
        message=f"Could not find inference component '{_component_arn(backend, name)}'."
    )


def component_spec(backend: Backend, specification: dict[str, Any]) -> ContainerSpec | None:
    """The container a component's copies run: its own, or its model's."""
    resources = specification.get("ComputeResourceRequirements")
    container = specification.get("Container")
    if container:
        return ContainerSpec.of(container, resources=resources)
    model = specification.get("ModelName")
    if model and model in backend._models:
        return ContainerSpec.of(_model_container(backend, model), resources=resources)
    return None


def _component_failure(backend: Backend, specification: dict[str, Any]) -> str | None:
    container = specification.get("Container") or {}
    reason = (container.get("Environment") or {}).get(FAILURE_VARIABLE)
    model = specification.get("ModelName")
    if not reason and model in backend._models:
        reason = _model_container(backend, model).get("Environment", {}).get(FAILURE_VARIABLE)
    return reason


def _start_copies(backend: Backend, component: Component, first: str, pending: bool) -> None:
    """Steps from `first` to InService, gated on the component's container when it has copies."""
    reason = _component_failure(backend, component.specification)
    if reason:
        component.fake_steps[:] = [Step(first), Step("Failed", reason=reason)]
        return
    owner = _owner("component", component.name, pending)
    spec = component_spec(backend, component.specification)
    gate = None
    if component.copies > 0 and spec is not None and CONTAINERS.acquire(owner, spec) is not None:
        gate = owner
    if component.copies == 0:
        CONTAINERS.release(_owner("component", component.name))
    component.fake_steps[:] = [Step(first), Step("InService", gate=gate)]


def create_inference_component(self: SageMakerResponse) -> Any:
    backend = self.sagemaker_backend
    name = self._get_param("InferenceComponentName")
    endpoint_name = self._get_param("EndpointName")
    if name in components(backend):
        raise ValidationError(message=f"Inference component {name} already exists.")
    endpoint = backend.endpoints.get(endpoint_name)
    if endpoint is None:
        raise ValidationError(message=f"Could not find endpoint '{endpoint_name}'.")
    config = backend.endpoint_configs[endpoint.endpoint_config_name]
    variant_name = self._get_param("VariantName") or config.production_variants[0]["VariantName"]
    variant = next(
        (v for v in config.production_variants if v["VariantName"] == variant_name), None
    )
    if variant is None:
        raise ValidationError(message=f"Endpoint {endpoint_name} has no variant {variant_name}.")
    if "ModelName" in variant:
        raise ValidationError(
            message=f"Inference components cannot be deployed to endpoint {endpoint_name}: its "
            "endpoint configuration names a model. Create the endpoint with an endpoint "
            "configuration whose variants name no model and that has ExecutionRoleArn."
        )
    specification = self._get_param("Specification") or {}
    if not specification.get("Container") and not specification.get("ModelName"):
        raise ValidationError(message="Specification needs Container or ModelName.")
    component = Component(
        name=name,
        arn=_component_arn(backend, name),
        endpoint_name=endpoint_name,
        endpoint_arn=endpoint.arn,
        variant_name=variant_name,
        specification=specification,
        copies=int((self._get_param("RuntimeConfig") or {}).get("CopyCount", 1)),
    )
    components(backend)[name] = component
    _start_copies(backend, component, "Creating", pending=False)
    return ActionResult({"InferenceComponentArn": component.arn})


def _advance_component(backend: Backend, component: Component) -> None:
    def apply(step: Step) -> None:
        component.status, component.failure_reason = step.status, step.reason
        component.modified = _now()
        if step.gate is not None and step.gate.endswith("#next"):
            container = CONTAINERS.of(step.gate)
            if container is not None:
                CONTAINERS.acquire(_owner("component", component.name), container.spec)
            CONTAINERS.release(step.gate)
        if step.status == GONE:
            del components(backend)[component.name]

    def fail(reason: str) -> None:
        component.failure_reason = reason
        if component.previous is None:
            component.status = "Failed"
            return
        # A failed update: SageMaker keeps (rolls back to) the copies that served.
        component.specification, component.copies = component.previous
        component.status = "InService"

    _advance(component, apply, fail)


def describe_inference_component(self: SageMakerResponse) -> Any:
    backend = self.sagemaker_backend
    name = self._get_param("InferenceComponentName")
    component = components(backend).get(name)
    if component is None:
        raise _not_found(backend, name)
    _advance_component(backend, component)
    if name not in components(backend):
        raise _not_found(backend, name)
    return ActionResult(component.describe())


def _updatable(backend: Backend, name: str) -> Component:
    component = components(backend).get(name)
    if component is None:
        raise _not_found(backend, name)
    if component.status != "InService":
        raise ValidationError(
            message=f"Cannot update inference component {name} while it is {component.status}."
        )
    return component


def update_inference_component(self: SageMakerResponse) -> Any:
    backend = self.sagemaker_backend
    component = _updatable(backend, self._get_param("InferenceComponentName"))
    component.previous = (component.specification, component.copies)
    specification = self._get_param("Specification")
    if specification:
        component.specification = specification
    runtime = self._get_param("RuntimeConfig")
    if runtime:
        component.copies = int(runtime["CopyCount"])
    component.last_deployment_config = self._get_param("DeploymentConfig")
    component.status, component.failure_reason = "Updating", None
    reason = alarm_going_off(self.region, component.last_deployment_config)
    if reason:
        # The copies that served stay: the update's are stopped as they come.
        component.specification, component.copies = component.previous
        component.fake_steps[:] = [Step("Updating"), Step("InService", reason=reason)]
        return ActionResult({"InferenceComponentArn": component.arn})
    _start_copies(backend, component, "Updating", pending=True)
    return ActionResult({"InferenceComponentArn": component.arn})


def set_copies(backend: Backend, component: Component, copies: int) -> None:
    """Copies changed by UpdateInferenceComponentRuntimeConfig or by auto scaling."""
    component.previous = (component.specification, component.copies)
    component.copies = copies
    component.status, component.failure_reason = "Updating", None
    _start_copies(backend, component, "Updating", pending=False)


def update_inference_component_runtime_config(self: SageMakerResponse) -> Any:
    backend = self.sagemaker_backend
    component = _updatable(backend, self._get_param("InferenceComponentName"))
    set_copies(backend, component, int(self._get_param("DesiredRuntimeConfig")["CopyCount"]))
    return ActionResult({"InferenceComponentArn": component.arn})


def delete_inference_component(self: SageMakerResponse) -> Any:
    backend = self.sagemaker_backend
    name = self._get_param("InferenceComponentName")
    component = components(backend).get(name)
    if component is None:
        raise _not_found(backend, name)
    component.status = "Deleting"
    component.fake_steps[:] = [Step("Deleting"), Step(GONE)]
    CONTAINERS.release(_owner("component", name))
    CONTAINERS.release(_owner("component", name, pending=True))
    return EmptyResult()


def list_inference_components(self: SageMakerResponse) -> Any:
    backend = self.sagemaker_backend
    endpoint = self._get_param("EndpointNameEquals")
    status = self._get_param("StatusEquals")
    found = [
        c.summary()
        for c in sorted(components(backend).values(), key=lambda c: c.created)
        if (endpoint is None or c.endpoint_name == endpoint)
        and (status is None or c.status == status)
    ]
    return ActionResult({"InferenceComponents": found})


# --- scale-out from zero ---------------------------------------------------------------------

# Failed invocations of components with no copies: component -> their times.
_no_capacity: dict[str, list[float]] = {}
_no_capacity_lock = threading.Lock()
_COMPARE = {
    "GreaterThanOrEqualToThreshold": lambda value, threshold: value >= threshold,
    "GreaterThanThreshold": lambda value, threshold: value > threshold,
}


def count_no_capacity(region: str, component: Component) -> None:
    """One NoCapacityInvocationFailures, and the alarms and step policies it sets off."""
    now = time.monotonic()
    with _no_capacity_lock:
        times = _no_capacity.setdefault(component.name, [])
        times.append(now)
        cloudwatch = cloudwatch_backends[ACCOUNT][region]
        for alarm in list(cloudwatch.alarms.values()):
            dimensions = {d.name: d.value for d in alarm.dimensions}
            if (
                alarm.metric_name != NO_CAPACITY_METRIC
                or alarm.namespace != "AWS/SageMaker"
                or dimensions.get("InferenceComponentName") != component.name
            ):
                continue
            window = [t for t in times if now - t <= int(alarm.period or 60)]
            compare = _COMPARE.get(alarm.comparison_operator)
            if compare is None or not compare(len(window), float(alarm.threshold)):
                continue
            alarm.state_value = "ALARM"
            for action in alarm.alarm_actions or []:
                _run_step_policy(region, component, action)
            times.clear()


def _run_step_policy(region: str, component: Component, policy_arn: str) -> None:
    autoscaling = applicationautoscaling_backends[ACCOUNT][region]
    policy = next((p for p in autoscaling.policies.values() if p.policy_arn == policy_arn), None)
    if policy is None or policy.policy_type != "StepScaling":
        return
    resource = f"inference-component/{component.name}"
    target = autoscaling.targets.get(COPY_DIMENSION, {}).get(resource)
    if target is None or policy.resource_id != resource:
        return
    configuration = policy.step_scaling_policy_configuration or {}
    if configuration.get("AdjustmentType") != "ChangeInCapacity":
        return
    adjustment = sum(
        int(step["ScalingAdjustment"])
        for step in configuration.get("StepAdjustments", [])
        if float(step.get("MetricIntervalLowerBound", float("-inf"))) <= 0
        and float(step.get("MetricIntervalUpperBound", float("inf"))) > 0
    )
    copies = max(target.min_capacity, min(target.max_capacity, component.copies + adjustment))
    if copies != component.copies and component.status != "Deleting":
        set_copies(backend_of(region), component, copies)


# --- Application Auto Scaling ------------------------------------------------------------------

ScalableDimensions = enum.Enum(  # type: ignore[misc]
    "ScalableDimensionValueSet",
    {
        **{member.name: member.value for member in aas_models.ScalableDimensionValueSet},
        "SAGEMAKER_INFERENCE_COMPONENT_DESIRED_COPY_COUNT": COPY_DIMENSION,
    },
)


def install() -> None:
    """Put every addition in place, in moto's classes and modules."""
    sagemaker_models.FakeEndpointConfig.validate_instance_type = validate_instance_type
    sagemaker_models.FakeEndpointConfig.response_object = property(endpoint_config_response_object)
    backend_class = sagemaker_models.SageMakerModelBackend
    backend_class.create_endpoint = create_endpoint
    backend_class.describe_endpoint = describe_endpoint
    backend_class.update_endpoint = update_endpoint
    backend_class.delete_endpoint = delete_endpoint
    backend_class.validate_production_variants = validate_production_variants
    SageMakerResponse.update_endpoint = update_endpoint_response
    SageMakerResponse.create_endpoint_config = create_endpoint_config_response
    SageMakerResponse.create_inference_component = create_inference_component
    SageMakerResponse.describe_inference_component = describe_inference_component
    SageMakerResponse.update_inference_component = update_inference_component
    SageMakerResponse.update_inference_component_runtime_config = (
        update_inference_component_runtime_config
    )
    SageMakerResponse.delete_inference_component = delete_inference_component
    SageMakerResponse.list_inference_components = list_inference_components
    aas_models.ScalableDimensionValueSet = ScalableDimensions
    aas_responses.ScalableDimensionValueSet = ScalableDimensions
