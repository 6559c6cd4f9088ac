"""Sentences to all-MiniLM-L6-v2 token ids, padded to the longest in the request.

Runs in the model's own environment (`env.tar.gz`: HF tokenizers, numpy < 2).
"""

import os

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

# sentence-transformers' max_seq_length for this model (sentence_bert_config.json).
MAX_TOKENS = 256


class TritonPythonModel:
    def initialize(self, args):
        folder = os.path.join(args["model_repository"], args["model_version"])
        self.tokenizer = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")

    def execute(self, requests):
        responses = []
        for request in requests:
            texts = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            try:
                sentences = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in texts]
            except UnicodeDecodeError as exc:
                responses.append(_error(f"TEXT must be UTF-8 text: {exc}"))
                continue
            if not sentences:
                responses.append(_error("TEXT holds no sentence"))
                continue
            encodings = self.tokenizer.encode_batch(sentences)
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            responses.append(
                pb_utils.InferenceResponse(
                    [pb_utils.Tensor("input_ids", ids), pb_utils.Tensor("attention_mask", mask)]
                )
            )
        return responses


def _error(message):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))
