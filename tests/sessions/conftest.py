"""`serve` on the sessions examples (sessions_repository/) and a few test-only models.

- `chat_memory`, `speech_stream`: the examples, as users get them;
- `stateless`: an echo model without sequence_batching (sessions must refuse it);
- `flood`, `slow_stream`, `broken_stream`: decoupled sequence models for the
  bidirectional stream tests (tests/sessions/test_bidirectional.py);
- `unrouted+stream`: slow_stream under a name nginx does not route;
- `corrid_memory`: a stateful model that answers with its sequence's correlation id,
  and `corrid_ensemble`, an ensemble around it (tests/sessions/test_isolation.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, ServeProcess, free_port, serve_env
from tests.payloads.conftest import ECHO_PY, write_model

SESSIONS_EXAMPLES = REPO_ROOT / "sessions_repository"

SEQUENCE_BATCHING = """
sequence_batching {
  max_sequence_idle_microseconds: 3600000000
  oldest { max_candidate_sequences: 4096 }
  control_input [
    { name: "START", control [ { kind: CONTROL_SEQUENCE_START, int32_false_true: [ 0, 1 ] } ] },
    { name: "END", control [ { kind: CONTROL_SEQUENCE_END, int32_false_true: [ 0, 1 ] } ] },
    { name: "CORRID", control [ { kind: CONTROL_SEQUENCE_CORRID, data_type: TYPE_UINT64 } ] }
  ]
}
"""

# Answers each chunk with `copies` responses of 64 KiB, 200 a second: more than a client
# that stops reading can leave unread before the stream's send timeout ends it.
FLOOD_PY = """
import time
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            text = pb_utils.get_input_tensor_by_name(request, "text").as_numpy().reshape(-1)[0]
            copies = int(text or b"0")
            block = np.array([[b"x" * 65536]], dtype=object)
            for sent in range(copies):
                if request.is_cancelled():
                    print(f"flood: cancelled after {sent}", flush=True)
                    break
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("text_out", block)]))
                time.sleep(0.005)
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""

# Answers each chunk after `seconds` (the chunk's text), checking for cancellation.
SLOW_PY = """
import time
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            end = bool(pb_utils.get_input_tensor_by_name(request, "END").as_numpy().reshape(-1)[0])
            text = pb_utils.get_input_tensor_by_name(request, "text").as_numpy().reshape(-1)[0]
            deadline = time.monotonic() + float(text or b"0")
            while time.monotonic() < deadline:
                if request.is_cancelled():
                    print("slow_stream: cancelled", flush=True)
                    break
                time.sleep(0.05)
            else:
                out = np.array([[b"done " + text]], dtype=object)
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("text_out", out)]))
            if end:
                print("slow_stream: END", flush=True)
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""

# Remembers each sequence's messages and answers with them and the sequence's correlation
# id: what a model that shows its CORRID gives away to whoever reads its answers.
CORRID_MEMORY_PY = """
import json
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        self.histories = {}

    def execute(self, requests):
        responses = []
        for request in requests:
            def value(name):
                return pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0]
            corrid = int(value("CORRID"))
            if value("START"):
                self.histories[corrid] = []
            history = self.histories.get(corrid)
            if history is None:
                error = pb_utils.TritonError(f"no state for sequence {corrid}")
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            text = value("text").decode()
            if text:
                history.append(text)
            if value("END"):
                del self.histories[corrid]
            reply = json.dumps({"corrid": corrid, "remembered": history}).encode()
            out = np.array([[reply]], dtype=object)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("reply", out)]))
        return responses
"""

CORRID_MEMORY_CONFIG = (
    """
max_batch_size: 8
input [ { name: "text", data_type: TYPE_STRING, dims: [ 1 ] } ]
output [ { name: "reply", data_type: TYPE_STRING, dims: [ 1 ] } ]
"""
    + SEQUENCE_BATCHING
)

# An ensemble whose one step is corrid_memory: its requests reach the step's sequences.
CORRID_ENSEMBLE_CONFIG = """
name: "corrid_ensemble"
platform: "ensemble"
max_batch_size: 8
input [ { name: "text", data_type: TYPE_STRING, dims: [ 1 ] } ]
output [ { name: "reply", data_type: TYPE_STRING, dims: [ 1 ] } ]
ensemble_scheduling {
  step [
    {
      model_name: "corrid_memory"
      model_version: -1
      input_map { key: "text" value: "text" }
      output_map { key: "reply" value: "reply" }
    }
  ]
}
"""

TEXT_STREAM_CONFIG = (
    """
max_batch_size: 8
model_transaction_policy { decoupled: true }
input [ { name: "text", data_type: TYPE_STRING, dims: [ 1 ] } ]
output [ { name: "text_out", data_type: TYPE_STRING, dims: [ 1 ] } ]
"""
    + SEQUENCE_BATCHING
)


def start_sessions_server(root: Path, **env: str) -> ServeProcess:
    """`serve` on the examples (chat_memory by default) and the test models."""
    opt_ml = root / "opt_ml"
    repository = opt_ml / "model"
    repository.mkdir(parents=True)
    for name in ("chat_memory", "speech_stream"):
        (repository / name).symlink_to(SESSIONS_EXAMPLES / name)
    write_model(
        repository,
        "stateless",
        """
        max_batch_size: 8
        input [ { name: "INPUT", data_type: TYPE_STRING, dims: [ 1 ] } ]
        output [ { name: "OUTPUT", data_type: TYPE_STRING, dims: [ 1 ] } ]
        """,
        ECHO_PY,
    )
    write_model(repository, "flood", TEXT_STREAM_CONFIG, FLOOD_PY)
    write_model(repository, "slow_stream", TEXT_STREAM_CONFIG, SLOW_PY)
    # A name nginx does not route (target_model names only [A-Za-z0-9_.~-]).
    write_model(repository, "unrouted+stream", TEXT_STREAM_CONFIG, SLOW_PY)
    write_model(repository, "corrid_memory", CORRID_MEMORY_CONFIG, CORRID_MEMORY_PY)
    (repository / "corrid_ensemble" / "1").mkdir(parents=True)
    (repository / "corrid_ensemble" / "config.pbtxt").write_text(CORRID_ENSEMBLE_CONFIG)
    settings = {"SAGEMAKER_TRITON_DEFAULT_MODEL_NAME": "chat_memory", **env}
    port = free_port()
    return ServeProcess(serve_env(opt_ml, port, **settings), port, root)


@pytest.fixture(scope="module")
def sessions_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    server = start_sessions_server(
        tmp_path_factory.mktemp("sessions"),
        SERVE_SESSION_TTL_SECONDS="600",
        SERVE_STREAM_SEND_TIMEOUT="2",
    )
    try:
        yield server.wait_ready()
    finally:
        server.stop()
