"""A causal language model behind the vLLM backend's inputs and outputs (Triton's Python backend).

It takes what the vLLM backend takes (`text_input`, `stream`,
`sampling_parameters` as JSON, `exclude_input_in_output`, the `return_*`
flags) and answers as it answers (`text_output`, and `finish_reason`,
`num_input_tokens`, `num_output_tokens` when asked), so serve maps the OpenAI
and TGI schemas onto it as onto a vLLM model. Generation is transformers'
`generate` over the checkpoint in `generator/` beside this file
(build/examples/make_text_generator.py writes a tiny BLOOM with random weights
there); with `stream`, a TextIteratorStreamer sends each piece of text as its
own response, as vLLM streams; without, one response holds the whole text.
"""

import json
import os
import sys
import threading

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

# Local set-up installs transformers here (build/examples/make_text_generator.py); the image
# has it installed.
_PACKAGES = os.path.join(os.path.dirname(__file__), "packages")
if os.path.isdir(_PACKAGES):
    sys.path.insert(0, _PACKAGES)

from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

DEFAULT_MAX_TOKENS = 16


class _StopStrings(StoppingCriteria):
    """Ends generation once the decoded text holds one of the request's stop strings."""

    def __init__(self, tokenizer, start, stops):
        self.tokenizer, self.start, self.stops = tokenizer, start, stops

    def __call__(self, input_ids, scores, **kwargs):
        text = self.tokenizer.decode(input_ids[0, self.start :], skip_special_tokens=True)
        return any(stop in text for stop in self.stops)


def _value(request, name, default=None):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return default if tensor is None else tensor.as_numpy().reshape(-1)[0]


class TritonPythonModel:
    def initialize(self, args):
        folder = os.path.join(args["model_repository"], args["model_version"], "generator")
        on_gpu = args["model_instance_kind"] == "GPU"
        self.device = f"cuda:{args['model_instance_device_id']}" if on_gpu else "cpu"
        torch.set_num_threads(1)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder).to(self.device).eval()

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
        prompt = _value(request, "text_input").decode("utf-8")
        stream = bool(_value(request, "stream", False))
        prepend = not bool(_value(request, "exclude_input_in_output", stream))
        sampling = json.loads(_value(request, "sampling_parameters", b"{}").decode() or "{}")
        wanted = {
            name: bool(_value(request, f"return_{name}", False))
            for name in ("finish_reason", "num_input_tokens", "num_output_tokens")
        }
        ids = self.tokenizer(prompt, return_tensors="pt").input_ids.to(self.device)
        limit = int(sampling.get("max_tokens", DEFAULT_MAX_TOKENS))
        temperature = float(sampling.get("temperature", 1.0))
        arguments = {
            "max_new_tokens": limit,
            "do_sample": temperature > 0,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if temperature > 0:
            arguments["temperature"] = temperature
            arguments["top_p"] = float(sampling.get("top_p", 1.0))
            arguments["top_k"] = int(sampling.get("top_k", 0)) if sampling.get("top_k") else 0
        if sampling.get("seed") is not None:
            torch.manual_seed(int(sampling["seed"]))
        stops = sampling.get("stop") or []
        if stops:
            arguments["stopping_criteria"] = StoppingCriteriaList(
                [_StopStrings(self.tokenizer, ids.shape[1], stops)]
            )
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        produced = {}

        def run():
            with torch.no_grad():
                produced["ids"] = self.model.generate(ids, streamer=streamer, **arguments)

        worker = threading.Thread(target=run)
        worker.start()
        text = ""
        stopped = False
        for piece in streamer:
            cut = _cut(text + piece, stops)
            piece = cut[len(text) :] if cut is not None else piece
            text += piece
            if stream and piece:
                sender.send(self._response([piece], wanted, None, None, 0))
            if cut is not None:
                stopped = True
                break
        worker.join()
        made = int(produced["ids"].shape[1] - ids.shape[1])
        reason = "length" if made >= limit and not stopped else "stop"
        final = "" if stream else (prompt if prepend else "") + text
        sender.send(self._response([final], wanted, reason, ids.shape[1], made))

    def _response(self, texts, wanted, reason, prompt_tokens, made):
        out = [_tensor("text_output", [t.encode() for t in texts], object)]
        if wanted["finish_reason"]:
            out.append(_tensor("finish_reason", [str(reason).encode()], object))
        if wanted["num_input_tokens"] and prompt_tokens is not None:
            out.append(_tensor("num_input_tokens", [prompt_tokens], np.uint32))
        if wanted["num_output_tokens"]:
            # The vLLM backend counts each response's own tokens; here the streamed pieces
            # count 0 and the last response all of them (a piece may hold several tokens).
            out.append(_tensor("num_output_tokens", [made], np.uint32))
        return pb_utils.InferenceResponse(out)


def _cut(text, stops):
    """The text before the first stop string in it, or None when it holds none."""
    found = [text.find(stop) for stop in stops if stop in text]
    return text[: min(found)] if found else None


def _tensor(name, values, dtype):
    return pb_utils.Tensor(name, np.array(values, dtype=dtype))
