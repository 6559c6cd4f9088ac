"""Text and raw bytes for models with one BYTES input (text/plain, octet-stream, image/*).

The whole body is one record: the text (decoded with the request's charset)
or the bytes as sent, so an image reaches the model exactly as uploaded.
`text/plain` answers are the one BYTES output's text, one line per record.
"""

from __future__ import annotations

from serve.errors import NotAcceptable, UnsupportedMediaType
from serve.payloads.signature import ModelSignature
from serve.payloads.v2 import Outputs


def check_model(signature: ModelSignature, content_type: str) -> None:
    specs = signature.record_inputs
    if len(specs) != 1 or not specs[0].is_bytes:
        raise UnsupportedMediaType(
            f"{content_type} is for models with one BYTES input; model {signature.name!r} "
            f"takes {signature.describe_inputs()}: send application/json, text/csv or "
            "application/x-npy"
        )


def decode_text(body: bytes, charset: str) -> list[object]:
    return [body.decode(charset, errors="replace")]


def decode_bytes(body: bytes) -> list[object]:
    return [body]


def check_answer(signature: ModelSignature) -> None:
    outputs = signature.answer_outputs
    if len(outputs) != 1 or not outputs[0].is_bytes:
        raise NotAcceptable(
            f"text/plain answers carry one BYTES output; model {signature.name!r} answers "
            f"with {', '.join(s.describe() for s in outputs)}"
        )


def encode_text(outputs: Outputs, signature: ModelSignature) -> bytes:
    (array,) = outputs.tensors.values()
    return b"\n".join(item for item in array.reshape(-1)) + b"\n"
