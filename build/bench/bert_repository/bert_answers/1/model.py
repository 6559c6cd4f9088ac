"""Triton Python backend model: bert_base's answers, written from CPU instances.

Each dynamic batch of requests becomes one request to bert_base (a BLS call);
its pooled vectors are split back into one answer per request. Nothing else
happens here: the point is the thread the answers are sent from (config.pbtxt).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

ENCODER = "bert_base"


class TritonPythonModel:
    def execute(self, requests: list[Any]) -> list[Any]:
        ids = [pb_utils.get_input_tensor_by_name(r, "input_ids").as_numpy() for r in requests]
        sizes = [len(part) for part in ids]
        encoded = pb_utils.InferenceRequest(
            model_name=ENCODER,
            inputs=[pb_utils.Tensor("input_ids", np.concatenate(ids))],
            requested_output_names=["pooled"],
        ).exec()
        if encoded.has_error():
            error = pb_utils.TritonError(f"{ENCODER}: {encoded.error().message()}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        pooled = pb_utils.get_output_tensor_by_name(encoded, "pooled").as_numpy()
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("pooled", part)])
            for part in np.split(pooled, np.cumsum(sizes)[:-1])
        ]
