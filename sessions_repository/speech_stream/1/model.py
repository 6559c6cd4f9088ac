"""A speech-like streaming model: it answers each chunk of audio (16-bit PCM) as it arrives.

Stand-in for a streaming recogniser: each chunk gets a partial "transcript" (the
chunk's number, its samples and loudness), and the end of the stream a final one
that sums up the whole stream, which only a model holding each stream's state
can write. Triton's sequence batcher sets START on a stream's first chunk, END on
its last (an empty chunk when the caller closes) and CORRID to the stream's id.
A chunk of exactly one sample of -32768 is refused with an error, so that clients
(and the tests) can see how a model error ends a stream.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

REFUSED = -32768


class TritonPythonModel:
    def initialize(self, args):
        # Correlation id -> (chunks, samples) heard so far.
        self.streams = {}

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            corrid = int(_value(request, "CORRID"))
            audio = pb_utils.get_input_tensor_by_name(request, "audio").as_numpy().reshape(-1)
            if _value(request, "START"):
                self.streams[corrid] = (0, 0)
            state = self.streams.get(corrid)
            if state is None or (audio.size == 1 and audio[0] == REFUSED):
                reason = "no state for this stream" if state is None else "refused chunk"
                sender.send(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(reason)),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                )
                continue
            chunks, samples = state
            if audio.size:
                chunks, samples = chunks + 1, samples + int(audio.size)
                rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))
                partial = {"chunk": chunks, "samples": int(audio.size), "rms": round(rms, 1)}
                sender.send(_response(partial))
            self.streams[corrid] = (chunks, samples)
            if _value(request, "END"):
                del self.streams[corrid]
                sender.send(_response({"final": True, "chunks": chunks, "samples": samples}))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None

    def finalize(self):
        self.streams.clear()


def _value(request, name):
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0]


def _response(fields):
    text = np.array([[json.dumps(fields).encode()]], dtype=object)
    return pb_utils.InferenceResponse([pb_utils.Tensor("transcript", text)])
