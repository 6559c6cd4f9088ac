"""NumPy's .npy format (application/x-npy), as SageMaker's own containers use it.

A request array is the batch: its first axis is the records (a model with
`max_batch_size: 0` takes the whole array as its one record). For a model
with several record inputs each row is split among them, as with CSV. The
answer is the one answer output as an array (BYTES as unicode text, so no
pickle is needed to read it); a model with several outputs pins one with
SERVE_PAYLOAD_OUTPUTS (see signature.py).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from serve.errors import NotAcceptable, PayloadError
from serve.payloads.signature import ModelSignature
from serve.payloads.v2 import Outputs


def decode(body: bytes, signature: ModelSignature) -> Sequence[object]:
    """The records: the array's rows (the array itself, sliced as it is split), or the
    whole array as one record for a model that does not batch."""
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise PayloadError(f"the body is not a .npy array: {exc}") from exc
    if not isinstance(array, np.ndarray):
        raise PayloadError("the body is an .npz archive; send one .npy array")
    if not signature.batched or array.ndim == 0:
        return [array]
    if len(signature.record_inputs) > 1 and array.ndim == 2 and array.dtype.kind not in "biuf":
        return array.tolist()
    return array  # type: ignore[return-value]  # an array is a sequence of its rows


def check(signature: ModelSignature) -> None:
    if len(signature.answer_outputs) != 1:
        names = ", ".join(spec.name for spec in signature.answer_outputs)
        raise NotAcceptable(
            f"application/x-npy carries one array, and model {signature.name!r} answers with "
            f"{names}; accept application/json or text/csv, or pin one output with the "
            "SERVE_PAYLOAD_OUTPUTS parameter"
        )


def encode(outputs: Outputs, signature: ModelSignature) -> bytes:
    (array,) = outputs.tensors.values()
    if array.dtype == object:
        array = np.asarray([item.decode("utf-8", errors="replace") for item in array.reshape(-1)])
        array = array.reshape(next(iter(outputs.tensors.values())).shape)
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
