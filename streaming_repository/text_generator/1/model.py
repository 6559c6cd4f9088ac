"""Text generation with a transformers pipeline, streaming tokens (Triton's Python backend).

The shape of the common bloom-560m example: `pipeline("text-generation")`
over a checkpoint loaded with from_pretrained, here from `generator/` beside
this file (build/examples/make_text_generator.py writes a tiny BLOOM with
random weights there). The model is decoupled: the pipeline runs in a
thread with a TextIteratorStreamer, and each piece of text it yields is sent
as its own response, so callers see tokens as they are made.

Request parameters (`{"inputs": "...", "parameters": {...}}` through serve)
go to the pipeline as generation arguments: `max_new_tokens` is an input,
others such as `do_sample` or `temperature` are request parameters.
"""

import json
import os
import sys
import threading

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

# Local set-up installs transformers here, outside serve's environment (see
# build/examples/make_text_generator.py); the image has it installed.
_PACKAGES = os.path.join(os.path.dirname(__file__), "packages")
if os.path.isdir(_PACKAGES):
    sys.path.insert(0, _PACKAGES)

from transformers import TextIteratorStreamer, pipeline  # noqa: E402

DEFAULT_NEW_TOKENS = 16
GENERATION_ARGUMENTS = {"do_sample", "temperature", "top_k", "top_p", "repetition_penalty"}


class TritonPythonModel:
    def initialize(self, args):
        folder = os.path.join(args["model_repository"], args["model_version"], "generator")
        on_gpu = args["model_instance_kind"] == "GPU"
        device = f"cuda:{args['model_instance_device_id']}" if on_gpu else "cpu"
        torch.set_num_threads(1)
        self.generator = pipeline("text-generation", model=folder, tokenizer=folder, device=device)

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                self._generate(request, sender)
            except Exception as exc:  # the caller gets the reason, not a hang
                error = pb_utils.TritonError(f"generation failed: {exc}")
                sender.send(pb_utils.InferenceResponse(error=error))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None

    def _generate(self, request, sender):
        prompt = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy()
        prompt = prompt.reshape(-1)[0].decode("utf-8")
        limit = pb_utils.get_input_tensor_by_name(request, "max_new_tokens")
        new_tokens = int(limit.as_numpy().reshape(-1)[0]) if limit is not None else None
        parameters = json.loads(request.parameters() or "{}")
        arguments = {k: v for k, v in parameters.items() if k in GENERATION_ARGUMENTS}
        streamer = TextIteratorStreamer(
            self.generator.tokenizer, skip_prompt=True, skip_special_tokens=True
        )
        worker = threading.Thread(
            target=self.generator,
            args=(prompt,),
            kwargs={
                "max_new_tokens": new_tokens or DEFAULT_NEW_TOKENS,
                "streamer": streamer,
                **arguments,
            },
        )
        worker.start()
        for piece in streamer:
            if piece:
                text = np.array([piece.encode("utf-8")], dtype=object)
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("text_output", text)]))
        worker.join()
