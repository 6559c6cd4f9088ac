"""Triton Python backend model: the BERT-base-sized encoder of encoder.py.

Every request of a dynamic batch (each [n, 128] int64 token ids) goes through
one forward pass on the instance's device (fp16 on a GPU, float32 on the
CPU); the pooled vectors come back as FP32 [n, 768].

On a GPU the forward pass is replayed from CUDA graphs captured at start-up
for the batch sizes the CUDA_GRAPH_BATCH_SIZES parameter lists (see
encoder.GraphedEncoder); an empty list runs it eagerly. Token ids go in and
pooled vectors come out through pinned host buffers: one asynchronous copy
each way and a single wait per batch. CPU threads are left to OMP_NUM_THREADS,
which `serve` shares out among instances.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils


def _load_encoder() -> ModuleType:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "encoder.py")
    spec = importlib.util.spec_from_file_location("bert_bench_encoder", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        encoder = _load_encoder()
        max_batch = config["max_batch_size"]
        sequence = config["input"][0]["dims"][0]
        on_gpu = args["model_instance_kind"] == "GPU"
        if on_gpu:
            self.device = torch.device(f"cuda:{args['model_instance_device_id']}")
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        model = encoder.build(self.device, torch.float16 if on_gpu else torch.float32)
        buckets = [int(size) for size in params.get("CUDA_GRAPH_BATCH_SIZES", "").split()]
        if on_gpu and buckets:
            graphed = encoder.GraphedEncoder(model, buckets, sequence)
            if graphed.max_batch < max_batch:
                raise pb_utils.TritonModelException(
                    f"CUDA_GRAPH_BATCH_SIZES must reach max_batch_size {max_batch}; "
                    f"its largest is {graphed.max_batch}"
                )
            self.forward: Callable[[torch.Tensor], torch.Tensor] = graphed
        else:
            self.forward = lambda ids: model(ids.to(self.device, non_blocking=True)).float()
            with torch.inference_mode():
                self.forward(torch.zeros((8, sequence), dtype=torch.long))
        # Pinned (page-locked) memory lets both copies run asynchronously.
        self.host_ids = torch.empty((max_batch, sequence), dtype=torch.long, pin_memory=on_gpu)
        self.host_pooled = torch.empty((max_batch, encoder.HIDDEN), pin_memory=on_gpu)

    def execute(self, requests: list[Any]) -> list[Any]:
        ids = [pb_utils.get_input_tensor_by_name(r, "input_ids").as_numpy() for r in requests]
        sizes = [len(part) for part in ids]
        rows = sum(sizes)
        np.concatenate(ids, out=self.host_ids[:rows].numpy())
        with torch.inference_mode():
            pooled = self.host_pooled[:rows]
            pooled.copy_(self.forward(self.host_ids[:rows]), non_blocking=True)
            if self.device.type == "cuda":
                torch.cuda.current_stream(self.device).synchronize()
        # A copy: the next batch overwrites the pinned buffer.
        result = pooled.numpy().copy()
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("pooled", part)])
            for part in np.split(result, np.cumsum(sizes)[:-1])
        ]
