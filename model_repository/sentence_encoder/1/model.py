"""all-MiniLM-L6-v2 in plain PyTorch: token ids to normalised sentence embeddings.

The weights are the model's own `model.safetensors` (read here without the
safetensors package: an 8-byte header length, a JSON header, raw tensors),
the architecture is BERT as `config.json` describes it. The pooling is
sentence-transformers': the mean of the token vectors under the attention
mask, then L2 normalisation.
"""

import json
import math
import os

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64}


def load_safetensors(path):
    with open(path, "rb") as stream:
        header_size = int.from_bytes(stream.read(8), "little")
        header = json.loads(stream.read(header_size))
        data = bytearray(stream.read())
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        tensor = torch.frombuffer(data, dtype=_DTYPES[info["dtype"]], count=-1, offset=start)
        count = (end - start) // tensor.element_size()
        tensors[name] = tensor[:count].reshape(info["shape"]).clone()
    return tensors


class MiniLM:
    def __init__(self, weights, config, device):
        self.w = {name: tensor.to(device) for name, tensor in weights.items()}
        self.layers = config["num_hidden_layers"]
        self.heads = config["num_attention_heads"]
        self.eps = config["layer_norm_eps"]
        self.device = device

    def _linear(self, x, name):
        return torch.nn.functional.linear(x, self.w[f"{name}.weight"], self.w[f"{name}.bias"])

    def _norm(self, x, name):
        return torch.nn.functional.layer_norm(
            x, x.shape[-1:], self.w[f"{name}.weight"], self.w[f"{name}.bias"], self.eps
        )

    @torch.inference_mode()
    def __call__(self, ids, mask):
        batch, length = ids.shape
        positions = torch.arange(length, device=self.device)
        x = (
            self.w["embeddings.word_embeddings.weight"][ids]
            + self.w["embeddings.position_embeddings.weight"][positions]
            + self.w["embeddings.token_type_embeddings.weight"][0]
        )
        x = self._norm(x, "embeddings.LayerNorm")
        keep = mask[:, None, None, :].bool()
        width = x.shape[-1] // self.heads
        for i in range(self.layers):
            prefix = f"encoder.layer.{i}"

            def heads(t):
                return t.view(batch, length, self.heads, width).transpose(1, 2)

            q = heads(self._linear(x, f"{prefix}.attention.self.query"))
            k = heads(self._linear(x, f"{prefix}.attention.self.key"))
            v = heads(self._linear(x, f"{prefix}.attention.self.value"))
            context = torch.nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask=keep, scale=1 / math.sqrt(width)
            )
            context = context.transpose(1, 2).reshape(batch, length, -1)
            x = self._norm(
                x + self._linear(context, f"{prefix}.attention.output.dense"),
                f"{prefix}.attention.output.LayerNorm",
            )
            hidden = torch.nn.functional.gelu(self._linear(x, f"{prefix}.intermediate.dense"))
            x = self._norm(
                x + self._linear(hidden, f"{prefix}.output.dense"), f"{prefix}.output.LayerNorm"
            )
        weights = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=1)


class TritonPythonModel:
    def initialize(self, args):
        folder = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(folder, "config.json")) as stream:
            config = json.load(stream)
        if args["model_instance_kind"] == "GPU":
            device = torch.device(f"cuda:{args['model_instance_device_id']}")
        else:
            device = torch.device("cpu")
        weights = load_safetensors(os.path.join(folder, "model.safetensors"))
        self.model = MiniLM(weights, config, device)

    def execute(self, requests):
        responses = []
        for request in requests:
            ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy()
            mask = pb_utils.get_input_tensor_by_name(request, "attention_mask").as_numpy()
            embeddings = self.model(
                torch.from_numpy(ids).to(self.model.device),
                torch.from_numpy(mask).to(self.model.device),
            )
            output = embeddings.float().cpu().numpy().astype(np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("EMBEDDING", output)]))
        return responses
