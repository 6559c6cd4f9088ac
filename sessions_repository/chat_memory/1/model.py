"""A chat-memory model: each session's messages are kept between its requests.

The reply to each message names the turn and what the session said before, so a
caller can see the state is its own; `open_sessions` counts the sessions it holds
state for, so a caller can see closed and expired ones let go. Triton's sequence
batcher sets START on a session's first request, END on its last (the close,
whose `text` is empty) and CORRID to the session's correlation id; the history
is dropped at END.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        # Correlation id -> the session's messages so far.
        self.histories = {}

    def execute(self, requests):
        responses = []
        for request in requests:
            start = _flag(request, "START")
            end = _flag(request, "END")
            corrid = int(_value(request, "CORRID"))
            message = _value(request, "text").decode("utf-8", "replace")
            if start:
                self.histories[corrid] = []
            history = self.histories.get(corrid)
            if history is None:
                error = pb_utils.TritonError(f"no state for sequence {corrid}")
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            if message:
                history.append(message)
            reply = json.dumps({"turn": len(history), "remembered": history})
            if end:
                del self.histories[corrid]
            responses.append(
                pb_utils.InferenceResponse(
                    [
                        pb_utils.Tensor("reply", np.array([[reply.encode()]], dtype=object)),
                        pb_utils.Tensor("turn", _int32(len(history))),
                        pb_utils.Tensor("open_sessions", _int32(len(self.histories))),
                    ]
                )
            )
        return responses

    def finalize(self):
        self.histories.clear()


def _value(request, name):
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0]


def _flag(request, name):
    return bool(_value(request, name))


def _int32(value):
    return np.array([[value]], dtype=np.int32)
