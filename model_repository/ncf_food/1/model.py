"""Neural Collaborative Filtering recommender for Triton's Python backend.

Scores (user, item) pairs with the TorchScript NeuMF model stored beside this
file (`ncf.pt`, written by build/examples/train_ncf.py). Every request in a
dynamic batch is scored in one forward pass. Ids outside the trained range
are answered with an INVALID_ARG error naming the bad id, rather than an
index error from deep inside torch.
"""

import json
import os

import numpy as np
import torch
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        torch.set_num_threads(int(params.get("TORCH_NUM_THREADS", "1")))
        if args["model_instance_kind"] == "GPU":
            self.device = torch.device(f"cuda:{args['model_instance_device_id']}")
        else:
            self.device = torch.device("cpu")
        weights = os.path.join(args["model_repository"], args["model_version"], "ncf.pt")
        self.model = torch.jit.load(weights, map_location=self.device).eval()
        self.limits = {"user_id": self.model.num_users, "item_id": self.model.num_items}

    def execute(self, requests):
        responses = [None] * len(requests)
        valid, users, items = [], [], []
        for index, request in enumerate(requests):
            ids = {
                name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                for name in self.limits
            }
            problem = self._out_of_range(ids)
            if problem:
                error = pb_utils.TritonError(problem, pb_utils.TritonError.INVALID_ARG)
                responses[index] = pb_utils.InferenceResponse(error=error)
                continue
            valid.append(index)
            users.append(ids["user_id"])
            items.append(ids["item_id"])
        if valid:
            sizes = [len(u) for u in users]
            with torch.inference_mode():
                scores = self.model(
                    torch.from_numpy(np.concatenate(users)).to(self.device),
                    torch.from_numpy(np.concatenate(items)).to(self.device),
                )
            scores = scores.float().cpu().numpy()
            for index, part in zip(valid, np.split(scores, np.cumsum(sizes)[:-1])):
                responses[index] = pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("score", part.astype(np.float32))]
                )
        return responses

    def _out_of_range(self, ids):
        for name, limit in self.limits.items():
            bad = ids[name][(ids[name] < 0) | (ids[name] >= limit)]
            if bad.size:
                return f"{name} {int(bad[0])} is outside the trained range 0..{limit - 1}"
        return None
