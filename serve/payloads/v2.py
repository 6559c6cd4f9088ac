"""KServe v2 on the wire: recognising v2 bodies, building Triton requests, reading answers.

Adapted requests go to Triton with every tensor in binary (Triton's binary
tensor extension): exact values, no float formatting, and BYTES inputs that
are not UTF-8 (images) pass unchanged. Answers are asked for in binary too
and read into numpy arrays; a v2 answer in JSON (a native request relayed
for another Accept) is read as well.

A v2 JSON request is sent on asking for binary outputs, and its JSON answer
written here (`binary_outputs_request`, `json_from_binary`): Triton 2.51 writes
JSON answers on the model instance's own thread, after each batch, about
107 us for 768 floats, while the next batch waits; orjson writes the same
answer in about a fifth of that, in the payload service's processes
(docs/benchmarks.md, v2 JSON on the GPU). It also writes FP16 and BF16
outputs, which Triton refuses to write as JSON.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from serve.errors import BadGateway
from serve.payloads.signature import NUMPY_TYPES, TensorSpec

HEADER_LENGTH = "Inference-Header-Content-Length"
# Where a v2 request chooses how its outputs travel: the caller's choice is kept.
_REQUEST_CHOICE = "binary_data_output"
_OUTPUT_CHOICES = frozenset({"binary_data", "shared_memory_region"})


@dataclasses.dataclass(frozen=True)
class Outputs:
    """A model's answer: its output tensors in answer order, and who answered."""

    model_name: str
    model_version: str
    tensors: dict[str, np.ndarray]
    datatypes: dict[str, str]


def is_v2_request(body: object) -> bool:
    """True for a KServe v2 inference request: `{"inputs": [{"name": ...}, ...]}`."""
    if not isinstance(body, dict):
        return False
    inputs = body.get("inputs")
    return isinstance(inputs, list) and all(
        isinstance(item, dict) and "name" in item for item in inputs
    )


def looks_like_v2_request(body: object) -> bool:
    """A JSON object whose `inputs` is a list of objects: v2's shape, valid or not."""
    if not isinstance(body, dict):
        return False
    inputs = body.get("inputs")
    return isinstance(inputs, list) and bool(inputs) and all(isinstance(i, dict) for i in inputs)


def binary_request(
    tensors: Mapping[str, np.ndarray],
    specs: Mapping[str, TensorSpec],
    parameters: Mapping[str, object],
    outputs: tuple[TensorSpec, ...],
) -> tuple[bytes, dict[str, str]]:
    """A Triton infer request with binary tensors; returns the body and its headers."""
    inputs = []
    blobs = []
    for name, array in tensors.items():
        datatype = specs[name].datatype
        blob = encode_tensor(array, datatype)
        blobs.append(blob)
        inputs.append(
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": datatype,
                "parameters": {"binary_data_size": len(blob)},
            }
        )
    header: dict[str, object] = {
        "inputs": inputs,
        "outputs": [{"name": s.name, "parameters": {"binary_data": True}} for s in outputs],
    }
    if parameters:
        header["parameters"] = dict(parameters)
    head = json.dumps(header, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
    return head + b"".join(blobs), headers


def encode_tensor(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for item in array.reshape(-1):
            parts.append(struct.pack("<I", len(item)))
            parts.append(item)
        return b"".join(parts)
    if datatype == "BF16":
        # The upper half of each float32: bfloat16, rounded towards zero.
        return (array.astype("<f4").view("<u4") >> 16).astype("<u2").tobytes()
    return np.ascontiguousarray(array, dtype=NUMPY_TYPES[datatype].newbyteorder("<")).tobytes()


def decode_tensor(blob: bytes | memoryview, datatype: str, shape: list[int]) -> np.ndarray:
    if datatype == "BYTES":
        items = []
        offset = 0
        view = memoryview(blob)
        while offset < len(view):
            (length,) = struct.unpack_from("<I", view, offset)
            offset += 4
            items.append(bytes(view[offset : offset + length]))
            offset += length
        array = np.empty(len(items), dtype=object)
        array[:] = items
        return array.reshape(shape)
    if datatype == "BF16":
        halves = np.frombuffer(blob, dtype="<u2").astype("<u4") << 16
        return halves.view("<f4").reshape(shape)
    return np.frombuffer(blob, dtype=NUMPY_TYPES[datatype].newbyteorder("<")).reshape(shape)


def read_answer(body: bytes, headers: Mapping[str, str], wanted: tuple[str, ...] = ()) -> Outputs:
    """Triton's infer answer (JSON, or JSON header plus binary outputs) as arrays."""
    head, parts = _answer_parts(body, headers)
    tensors: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    for output, blob in parts:
        name, datatype, shape = output["name"], output["datatype"], output["shape"]
        if blob is not None:
            tensors[name] = decode_tensor(blob, datatype, shape)
        elif datatype == "BYTES":
            array = np.empty(len(output["data"]), dtype=object)
            array[:] = [str(item).encode() for item in output["data"]]
            tensors[name] = array.reshape(shape)
        else:
            tensors[name] = np.asarray(output["data"], dtype=NUMPY_TYPES[datatype]).reshape(shape)
        datatypes[name] = datatype
    if wanted:
        tensors = {name: tensors[name] for name in wanted if name in tensors}
    return Outputs(
        model_name=str(head.get("model_name", "")),
        model_version=str(head.get("model_version", "")),
        tensors=tensors,
        datatypes=datatypes,
    )


def _answer_parts(
    body: bytes, headers: Mapping[str, str]
) -> tuple[dict[str, Any], list[tuple[dict[str, Any], bytes | None]]]:
    """Triton's answer split by its framing: the JSON head, and each output with its
    binary data (None for an output written in the head as JSON)."""
    size = headers.get(HEADER_LENGTH.lower())
    head_bytes = body[: int(size)] if size else body
    try:
        head = json.loads(head_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadGateway(f"Triton's answer is not v2 JSON: {exc}") from exc
    parts: list[tuple[dict[str, Any], bytes | None]] = []
    offset = len(head_bytes)
    for output in head.get("outputs", []):
        binary_size = (output.get("parameters") or {}).get("binary_data_size")
        blob = None
        if binary_size is not None:
            blob = body[offset : offset + binary_size]
            offset += binary_size
        parts.append((output, blob))
    return head, parts


def json_answer(outputs: Outputs) -> bytes:
    """The answer as Triton's own v2 JSON (what a native request would have received)."""
    document = {
        "model_name": outputs.model_name,
        "model_version": outputs.model_version,
        "outputs": [
            {
                "name": name,
                "datatype": outputs.datatypes[name],
                "shape": list(array.shape),
                "data": _json_data(array, outputs.datatypes[name]),
            }
            for name, array in outputs.tensors.items()
        ],
    }
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)


def binary_outputs_request(document: object) -> bytes | None:
    """A v2 JSON request asking for every output in binary; None where the caller chose.

    The caller chose when the request sets binary_data_output, or an output sets
    binary_data or a shared-memory region; those requests go to Triton as sent.
    """
    if not isinstance(document, dict):
        return None
    parameters = document.get("parameters", {})
    outputs = document.get("outputs", [])
    if not isinstance(parameters, dict) or _REQUEST_CHOICE in parameters:
        return None
    if not isinstance(outputs, list) or any(_chooses(output) for output in outputs):
        return None
    try:
        return orjson.dumps({**document, "parameters": {**parameters, _REQUEST_CHOICE: True}})
    except orjson.JSONEncodeError:
        return None  # Triton reads it as sent, and says what is wrong with it


def _chooses(output: object) -> bool:
    parameters = output.get("parameters") if isinstance(output, dict) else None
    return isinstance(parameters, dict) and not _OUTPUT_CHOICES.isdisjoint(parameters)


def json_from_binary(body: bytes, headers: Mapping[str, str]) -> bytes:
    """Triton's answer to `binary_outputs_request`, as the v2 JSON it would have written.

    Its header keeps every field in Triton's order (id, parameters, each
    output's own); only the binary outputs' sizes become their data.
    """
    if not headers.get(HEADER_LENGTH.lower()):
        return body
    head, parts = _answer_parts(body, headers)
    for output, blob in parts:
        if blob is None:
            continue
        parameters = output["parameters"]
        del parameters["binary_data_size"]
        if not parameters:
            del output["parameters"]
        datatype = output["datatype"]
        output["data"] = _json_data(decode_tensor(blob, datatype, [-1]), datatype)
    return orjson.dumps(head, option=orjson.OPT_SERIALIZE_NUMPY)


def _json_data(array: np.ndarray, datatype: str) -> object:
    """A tensor's values as orjson writes them: numbers straight from the array."""
    flat = array.reshape(-1)
    if datatype == "BYTES":
        return [item.decode("utf-8", errors="replace") for item in flat]
    return flat if flat.flags.c_contiguous else np.ascontiguousarray(flat)
