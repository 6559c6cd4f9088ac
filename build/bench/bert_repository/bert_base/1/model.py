"""Triton Python backend model: the BERT-base-sized encoder of encoder.py.

Every request of a dynamic batch (each [n, 128] int64 token ids) goes through
one fp16 forward pass on the instance's device; the pooled vectors come back
as FP32 [n, 768].
"""

import importlib.util
import json
import os

import numpy as np
import torch
import triton_python_backend_utils as pb_utils


def _load_encoder():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "encoder.py")
    spec = importlib.util.spec_from_file_location("bert_bench_encoder", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        torch.set_num_threads(int(params.get("TORCH_NUM_THREADS", "1")))
        if args["model_instance_kind"] == "GPU":
            self.device = torch.device(f"cuda:{args['model_instance_device_id']}")
            dtype = torch.float16
        else:
            self.device = torch.device("cpu")
            dtype = torch.float32
        self.model = _load_encoder().build(self.device, dtype)
        with torch.inference_mode():
            self.model(torch.zeros((8, 128), dtype=torch.long, device=self.device))

    def execute(self, requests):
        ids = [pb_utils.get_input_tensor_by_name(r, "input_ids").as_numpy() for r in requests]
        sizes = [len(part) for part in ids]
        batch = torch.from_numpy(np.concatenate(ids)).to(self.device, non_blocking=True)
        with torch.inference_mode():
            pooled = self.model(batch).float().cpu().numpy()
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("pooled", part)])
            for part in np.split(pooled, np.cumsum(sizes)[:-1])
        ]
