"""Text-generation models for the language-model schema tests, small and deterministic.

- `chat_vllm`: decoupled, the vLLM backend's inputs and additional outputs. Its
  "tokens" are the words of the prompt it got, each sent with a leading space
  as its own response (one in all when `stream` is false, as vLLM does),
  up to `max_tokens`; a seed rotates the words; a stop sequence ends the text
  before it. The prompt `parameters?` is answered with what reached the model
  (inputs and sampling parameters) as JSON; `refuse` fails before the first
  response, `fail later` after two. A chat template in `1/tokenizer/`.
- `ensemble_like`: TensorRT-LLM's ensemble inputs, batched, not decoupled (one
  answer, through infer), and no `exclude_input_in_output`: it echoes the
  prompt before its text, as TensorRT-LLM does, and serve strips it.
- `plain`: one BYTES input named otherwise: it fits no mapping.
- `no_template`: vLLM's inputs, no chat template.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ServeProcess, free_port, serve_env
from tests.payloads.conftest import write_model

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if loop.first and message['role'] == 'assistant' %}"
    "{{ raise_exception('Conversations start with the user or the system') }}{% endif %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
BOS = "<s>"

VLLM_CONFIG = """
    max_batch_size: 0
    model_transaction_policy { decoupled: true }
    input [
      { name: "text_input", data_type: TYPE_STRING, dims: [ 1 ] },
      { name: "stream", data_type: TYPE_BOOL, dims: [ 1 ], optional: true },
      { name: "sampling_parameters", data_type: TYPE_STRING, dims: [ 1 ], optional: true },
      { name: "exclude_input_in_output", data_type: TYPE_BOOL, dims: [ 1 ], optional: true },
      { name: "return_finish_reason", data_type: TYPE_BOOL, dims: [ 1 ], optional: true },
      { name: "return_logprobs", data_type: TYPE_BOOL, dims: [ 1 ], optional: true },
      { name: "return_num_input_tokens", data_type: TYPE_BOOL, dims: [ 1 ], optional: true },
      { name: "return_num_output_tokens", data_type: TYPE_BOOL, dims: [ 1 ], optional: true }
    ]
    output [
      { name: "text_output", data_type: TYPE_STRING, dims: [ -1 ] },
      { name: "finish_reason", data_type: TYPE_STRING, dims: [ -1 ] },
      { name: "logprobs", data_type: TYPE_STRING, dims: [ -1 ] },
      { name: "num_input_tokens", data_type: TYPE_UINT32, dims: [ 1 ] },
      { name: "num_output_tokens", data_type: TYPE_UINT32, dims: [ -1 ] }
    ]
    """

VLLM_PY = """
import json
import time
import numpy as np
import triton_python_backend_utils as pb_utils

FLAGS = ("stream", "exclude_input_in_output", "return_finish_reason", "return_logprobs",
         "return_num_input_tokens", "return_num_output_tokens")


def _value(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy().reshape(-1)[0]


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                self._generate(request, sender)
            except Exception as exc:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None

    def _generate(self, request, sender):
        prompt = _value(request, "text_input").decode()
        flags = {name: bool(_value(request, name)) for name in FLAGS
                 if _value(request, name) is not None}
        raw = _value(request, "sampling_parameters")
        sampling = json.loads(raw.decode()) if raw is not None else {}
        if prompt.endswith("parameters?"):
            shown = {"flags": flags, "sampling": sampling,
                     "parameters": json.loads(request.parameters() or "{}")}
            self._send(sender, [json.dumps(shown)], flags, 1, "stop", None)
            return
        if prompt.endswith("refuse"):
            raise ValueError("the prompt was refused")
        words = prompt.split()
        seed = sampling.get("seed")
        if seed is not None and words:
            shift = seed % len(words)
            words = words[shift:] + words[:shift]
        limit = int(sampling.get("max_tokens", 16))
        stops = sampling.get("stop") or []
        tokens, text, reason = [], "", "stop"
        for word in words:
            if len(tokens) == limit:
                reason = "length"
                break
            piece = " " + word
            joined = text + piece
            hits = [joined.find(s) for s in stops if s in joined]
            if hits:
                piece = joined[: min(hits)][len(text):]
                if piece:
                    tokens.append(piece)
                reason = "stop"
                break
            tokens.append(piece)
            text = joined
        count = len(words)
        if not flags.get("stream"):
            self._send(sender, ["".join(tokens)], flags, len(tokens), reason, count,
                       sampling, tokens)
            return
        for number, token in enumerate(tokens):
            if prompt.endswith("fail later") and number == 2:
                raise ValueError("the model failed after two tokens")
            time.sleep(0.01)
            last = number == len(tokens) - 1
            self._send(sender, [token], flags, 1, reason if last else None, count,
                       sampling, [token])
        if not tokens:
            self._send(sender, [""], flags, 0, reason, count, sampling, [])

    def _send(self, sender, texts, flags, produced, reason, prompt_tokens,
              sampling=None, tokens=()):
        out = [pb_utils.Tensor("text_output", np.array([t.encode() for t in texts], dtype=object))]
        if flags.get("return_finish_reason"):
            out.append(pb_utils.Tensor("finish_reason", np.array([str(reason).encode()],
                                                                 dtype=object)))
        if flags.get("return_num_input_tokens") and prompt_tokens is not None:
            out.append(pb_utils.Tensor("num_input_tokens",
                                       np.array([prompt_tokens], dtype=np.uint32)))
        if flags.get("return_num_output_tokens"):
            out.append(pb_utils.Tensor("num_output_tokens", np.array([produced], dtype=np.uint32)))
        if flags.get("return_logprobs") and sampling is not None:
            top = int(sampling.get("logprobs") or 0)
            steps = []
            for number, token in enumerate(tokens):
                step = {str(100 + number): {"logprob": -0.5, "rank": 2, "decoded_token": token}}
                for k in range(top):
                    step[str(900 + k)] = {"logprob": -0.1 * (k + 1), "rank": 1 if k == 0 else k + 2,
                                          "decoded_token": f" alt{k}"}
                steps.append(step)
            out.append(pb_utils.Tensor("logprobs", np.array([json.dumps(steps).encode()],
                                                            dtype=object)))
        sender.send(pb_utils.InferenceResponse(out))
"""

ENSEMBLE_CONFIG = """
    max_batch_size: 4
    input [
      { name: "text_input", data_type: TYPE_STRING, dims: [ -1 ] },
      { name: "max_tokens", data_type: TYPE_INT32, dims: [ -1 ] },
      { name: "temperature", data_type: TYPE_FP32, dims: [ 1 ], optional: true },
      { name: "top_p", data_type: TYPE_FP32, dims: [ 1 ], optional: true },
      { name: "top_k", data_type: TYPE_UINT32, dims: [ 1 ], optional: true },
      { name: "random_seed", data_type: TYPE_UINT64, dims: [ 1 ], optional: true },
      { name: "stop_words", data_type: TYPE_STRING, dims: [ -1 ], optional: true },
      { name: "stream", data_type: TYPE_BOOL, dims: [ 1 ], optional: true }
    ]
    output [ { name: "text_output", data_type: TYPE_STRING, dims: [ -1 ] } ]
    """

ENSEMBLE_PY = """
import json
import numpy as np
import triton_python_backend_utils as pb_utils

NAMES = ("text_input", "max_tokens", "temperature", "top_p", "top_k", "random_seed",
         "stop_words", "stream")


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            seen = {}
            for name in NAMES:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:
                    array = tensor.as_numpy()
                    seen[name] = {"shape": list(array.shape), "values": [
                        v.decode() if isinstance(v, bytes) else v.item()
                        for v in array.reshape(-1)]}
            prompt = seen["text_input"]["values"][0]
            count = seen["max_tokens"]["values"][0]
            if prompt.endswith("parameters?"):
                text = prompt + json.dumps(seen)
            else:
                text = prompt + "".join(f" t{i}" for i in range(count))
            out = np.array([[text.encode()]], dtype=object)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("text_output", out)]))
        return responses
"""

PLAIN_CONFIG = """
    max_batch_size: 0
    input [ { name: "prompt", data_type: TYPE_STRING, dims: [ 1 ] } ]
    output [ { name: "text_output", data_type: TYPE_STRING, dims: [ 1 ] } ]
    """

PLAIN_PY = """
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "text_output", pb_utils.get_input_tensor_by_name(r, "prompt").as_numpy())])
            for r in requests]
"""

CHAT_TURNS_CONFIG = """
    max_batch_size: 8
    input [
      { name: "text_input", data_type: TYPE_STRING, dims: [ 1 ] },
      { name: "sampling_parameters", data_type: TYPE_STRING, dims: [ 1 ], optional: true }
    ]
    output [ { name: "text_output", data_type: TYPE_STRING, dims: [ 1 ] } ]
    sequence_batching {
      max_sequence_idle_microseconds: 3600000000
      oldest { max_candidate_sequences: 64 }
      control_input [
        { name: "START", control [ { kind: CONTROL_SEQUENCE_START, int32_false_true: [ 0, 1 ] } ] },
        { name: "END", control [ { kind: CONTROL_SEQUENCE_END, int32_false_true: [ 0, 1 ] } ] },
        { name: "CORRID", control [ { kind: CONTROL_SEQUENCE_CORRID, data_type: TYPE_UINT64 } ] }
      ]
    }
    """

# A stateful chat model: it counts each session's turns (Triton's sequence batcher hands it
# START, END and the session's CORRID) and answers with the turn and the prompt's last line.
CHAT_TURNS_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils


def _value(request, name):
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0]


class TritonPythonModel:
    def initialize(self, args):
        self.turns = {}

    def execute(self, requests):
        responses = []
        for request in requests:
            corrid = int(_value(request, "CORRID"))
            if _value(request, "START"):
                self.turns[corrid] = 0
            prompt = _value(request, "text_input").decode()
            self.turns[corrid] = self.turns.get(corrid, 0) + (1 if prompt else 0)
            last = prompt.strip().splitlines()[-2] if prompt.strip() else ""
            text = f"turn {self.turns[corrid]} of {len(self.turns)} open: {last}"
            if _value(request, "END"):
                del self.turns[corrid]
            out = np.array([[text.encode()]], dtype=object)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("text_output", out)]))
        return responses
"""

TEXT_MODELS = "chat_vllm,ensemble_like,plain,no_template,chat_turns"


def write_tokenizer_config(folder: Path, template: str = CHAT_TEMPLATE) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    config = {"bos_token": {"content": BOS}, "eos_token": "</s>", "chat_template": template}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def write_text_models(repository: Path) -> None:
    write_model(repository, "chat_vllm", VLLM_CONFIG, VLLM_PY)
    write_tokenizer_config(repository / "chat_vllm" / "1" / "tokenizer")
    write_model(repository, "ensemble_like", ENSEMBLE_CONFIG, ENSEMBLE_PY)
    write_tokenizer_config(repository / "ensemble_like")
    write_model(repository, "plain", PLAIN_CONFIG, PLAIN_PY)
    write_model(repository, "no_template", VLLM_CONFIG, VLLM_PY)
    write_model(repository, "chat_turns", CHAT_TURNS_CONFIG, CHAT_TURNS_PY)
    write_tokenizer_config(repository / "chat_turns")


def rendered(messages: list[dict[str, str]]) -> str:
    """What CHAT_TEMPLATE renders for `messages` (the prompt the model gets)."""
    lines = "".join(f"<|{m['role']}|>{m['content']}\n" for m in messages)
    return f"{BOS}{lines}<|assistant|>"


def echoed(prompt: str, limit: int = 16, seed: int | None = None) -> str:
    """chat_vllm's text for `prompt`: its words, each after a space."""
    words = prompt.split()
    if seed is not None and words:
        shift = seed % len(words)
        words = words[shift:] + words[:shift]
    return "".join(" " + word for word in words[:limit])


def start_text_server(root: Path, **env: str) -> ServeProcess:
    opt_ml = root / "opt_ml"
    repository = opt_ml / "model"
    repository.mkdir(parents=True)
    write_text_models(repository)
    port = free_port()
    settings = {
        "SAGEMAKER_TRITON_DEFAULT_MODEL_NAME": "chat_vllm",
        "SERVE_TEXT_GENERATION_MODELS": TEXT_MODELS,
        **env,
    }
    return ServeProcess(serve_env(opt_ml, port, **settings), port, root)


def serving_text(tmp_path_factory: pytest.TempPathFactory, writers: str) -> Iterator[ServeProcess]:
    """A module's text server with `writers` writer processes (SERVE_V2_JSON_WRITERS)."""
    server = start_text_server(tmp_path_factory.mktemp("llm"), SERVE_V2_JSON_WRITERS=writers)
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def text_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """With two writers, which answer the schemas' requests where a host has 4 CPUs or
    more (serve/payloads/writers.py); test_schemas.py runs without them too."""
    yield from serving_text(tmp_path_factory, "2")
