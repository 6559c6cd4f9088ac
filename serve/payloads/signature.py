"""What a model takes and gives, read with Triton's model-config schema.

The adapters need each input's name, data type and dims, the batch limit and
whether the model is decoupled. Triton serves the complete configuration
(auto-completed fields included) at `/v2/models/NAME/config`; it is parsed
into Triton's own `ModelConfig` protobuf, so nothing is guessed from text.

A model can pin how payloads map onto it with parameters in its config.pbtxt:

    parameters { key: "SERVE_PAYLOAD_INPUTS" value: { string_value: "item_id,user_id" } }
    parameters { key: "SERVE_PAYLOAD_OUTPUTS" value: { string_value: "score" } }

`SERVE_PAYLOAD_INPUTS` names the inputs a record fills, in order (default:
the required inputs in config order); `SERVE_PAYLOAD_OUTPUTS` the outputs
answers carry, in order (default: every output in config order but the one
that sets the answer's custom attributes, serve/sagemaker/custom_attributes.py).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2

from serve.errors import ModelMisconfigured
from serve.sagemaker.custom_attributes import OUTPUT as CUSTOM_ATTRIBUTES
from serve.triton.model_config import ModelConfig, instance_count

INPUTS_PARAMETER = "SERVE_PAYLOAD_INPUTS"
OUTPUTS_PARAMETER = "SERVE_PAYLOAD_OUTPUTS"

# v2 datatype -> numpy dtype. BYTES travel as object arrays of bytes; BF16 has
# no numpy type and travels as float32 here (see v2.py).
NUMPY_TYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BF16": np.dtype(np.float32),
    "BYTES": np.dtype(object),
}


def v2_datatype(config_type: int) -> str:
    """Triton's config enum (TYPE_STRING) as the v2 protocol names it (BYTES)."""
    name = model_config_pb2.DataType.Name(config_type).removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    # Per-record dims (the batch dimension excluded); -1 is any size.
    dims: tuple[int, ...]
    optional: bool = False

    @property
    def dtype(self) -> np.dtype:
        return NUMPY_TYPES[self.datatype]

    @property
    def is_bytes(self) -> bool:
        return self.datatype == "BYTES"

    @property
    def fixed_size(self) -> int | None:
        """Values per record, or None when a dim is variable."""
        if any(d < 0 for d in self.dims):
            return None
        return math.prod(self.dims)

    def describe(self) -> str:
        dims = ", ".join(str(d) for d in self.dims)
        return f"{self.name} ({self.datatype}, dims [{dims}])"


@dataclasses.dataclass(frozen=True)
class ModelSignature:
    name: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    decoupled: bool
    # The inputs a record fills, in order: pinned, or the required ones.
    record_inputs: tuple[TensorSpec, ...]
    # The outputs answers carry, in order: pinned, or all of them but custom_attributes.
    answer_outputs: tuple[TensorSpec, ...]
    # Execution instances Triton runs (its config lists each group's GPUs): how many
    # requests the model works on at once.
    instances: int = 1
    # The output that sets the answer's X-Amzn-SageMaker-Custom-Attributes, if declared.
    custom_attributes: TensorSpec | None = None

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    @property
    def asked_outputs(self) -> tuple[TensorSpec, ...]:
        """What a request asks Triton for: the answer's outputs and the custom attributes."""
        extra = (self.custom_attributes,) if self.custom_attributes is not None else ()
        return self.answer_outputs + extra

    def input(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.inputs if spec.name == name), None)

    def describe_inputs(self) -> str:
        return ", ".join(spec.describe() for spec in self.record_inputs) or "none"

    @classmethod
    def from_config(cls, config: ModelConfig) -> ModelSignature:
        inputs = tuple(_spec(tensor, tensor.optional) for tensor in config.input)
        outputs = tuple(_spec(tensor, False) for tensor in config.output)
        pinned_inputs = _pinned(config, INPUTS_PARAMETER, inputs)
        pinned_outputs = _pinned(config, OUTPUTS_PARAMETER, outputs)
        return cls(
            name=config.name,
            max_batch_size=config.max_batch_size,
            inputs=inputs,
            outputs=outputs,
            decoupled=config.model_transaction_policy.decoupled,
            record_inputs=pinned_inputs or tuple(s for s in inputs if not s.optional),
            answer_outputs=pinned_outputs
            or tuple(s for s in outputs if s.name != CUSTOM_ATTRIBUTES),
            instances=instance_count(config, gpu_count=1),
            custom_attributes=next((s for s in outputs if s.name == CUSTOM_ATTRIBUTES), None),
        )

    @classmethod
    def from_triton_json(cls, text: bytes | str) -> ModelSignature:
        """From Triton's `/v2/models/NAME/config` answer."""
        config = json_format.Parse(text, ModelConfig(), ignore_unknown_fields=True)
        return cls.from_config(config)


def _spec(tensor: model_config_pb2.ModelInput, optional: bool) -> TensorSpec:
    return TensorSpec(tensor.name, v2_datatype(tensor.data_type), tuple(tensor.dims), optional)


def _pinned(config: ModelConfig, key: str, specs: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
    if key not in config.parameters:
        return ()
    by_name = {spec.name: spec for spec in specs}
    names = [n.strip() for n in config.parameters[key].string_value.split(",") if n.strip()]
    unknown = [name for name in names if name not in by_name]
    if unknown or not names:
        # The model's configuration is wrong, not the request: a server-side error.
        raise ModelMisconfigured(
            f"model {config.name!r}: parameter {key} in its config.pbtxt names "
            f"{', '.join(unknown) or 'nothing'}; "
            f"it takes a comma-separated list of: {', '.join(by_name)}"
        )
    return tuple(by_name[name] for name in names)
