"""An example Python-based Triton backend: OUTPUT = scale * INPUT + offset.

Triton uses this file for every model whose config.pbtxt says
`backend: "affine"`; those model folders hold only config.pbtxt and an empty
version folder. The image copies container/backends/ to
/opt/tritonserver/backends/, and Triton runs this file with the Python
backend's stub from /opt/tritonserver/backends/python/ (see
container/EXTENDING.md). `scale` and `offset` are model parameters, so one
backend serves many models.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


def _float_parameter(config: dict, name: str, default: float) -> float:
    raw = config.get("parameters", {}).get(name, {}).get("string_value")
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"parameter {name!r} must be a number, got {raw!r}") from None


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        """Give models that declare no tensors one FP32 INPUT and OUTPUT of any length."""
        config = auto_complete_model_config.as_dict()
        if not config["input"]:
            auto_complete_model_config.add_input(
                {"name": "INPUT", "data_type": "TYPE_FP32", "dims": [-1]}
            )
        if not config["output"]:
            auto_complete_model_config.add_output(
                {"name": "OUTPUT", "data_type": "TYPE_FP32", "dims": [-1]}
            )
        return auto_complete_model_config

    def initialize(self, args):
        config = json.loads(args["model_config"])
        if len(config["input"]) != 1 or len(config["output"]) != 1:
            raise ValueError("the affine backend takes exactly one input and one output")
        self.scale = _float_parameter(config, "scale", 1.0)
        self.offset = _float_parameter(config, "offset", 0.0)
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.output_dtype = pb_utils.triton_string_to_numpy(config["output"][0]["data_type"])

    def execute(self, requests):
        responses = []
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
            result = values.astype(np.float64) * self.scale + self.offset
            output = pb_utils.Tensor(self.output_name, result.astype(self.output_dtype))
            responses.append(pb_utils.InferenceResponse(output_tensors=[output]))
        return responses
