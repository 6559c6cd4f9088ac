"""JSON in the shapes people send, JSON Lines, and the simple JSON answer.

Request bodies (`application/json` that is not KServe v2):

- `{"instances": [record, ...]}` (TensorFlow Serving's, SageMaker's row form);
- `{"inputs": [record, ...]}`, or `{"inputs": {"name": [value per record], ...}}`
  (columns), or `{"inputs": "text"}` for a model with one BYTES input;
- a bare array: `[record, ...]`, or one record of plain values (`[42, 7]`);
- one object naming the inputs (`{"user_id": 42, "item_id": 7}`).

Records are described in records.py. Where a record takes exactly one value
(one record input of one element), a flat list is one record per value, so
`["a", "b"]` is two texts and `[3, 5]` two ids. `"parameters": {...}` beside
`inputs` or `instances` become request parameters (or fill inputs they name).

`application/jsonlines`: one record per line (SageMaker Batch Transform's
SplitType=Line); the answer has one line per record.

The simple answer is `{"predictions": [value per record]}`, each value the
record's output (a number for an output of one element, a list otherwise,
text for BYTES) or, for a model with several outputs, an object naming them.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
from collections.abc import Mapping, Sequence

import numpy as np

from serve.errors import PayloadError
from serve.payloads import batching
from serve.payloads.json_elements import InvalidJson, JsonElements, lazy_document, parse_json
from serve.payloads.limits import PayloadLimits
from serve.payloads.lines import JSON_BLANK, Lines, find_lines
from serve.payloads.records import SCALARS, LazyRecords
from serve.payloads.signature import ModelSignature
from serve.payloads.v2 import Outputs

# Bodies from this size have their records array read a chunk at a time (read_document).
LAZY_BYTES = 256 * 1024
SHAPES = (
    '{"instances": [record, ...]}, {"inputs": [record, ...]}, {"inputs": {"name": [...]}}, '
    '{"inputs": "text"}, a bare array of records, or KServe v2 {"inputs": [{"name": ...}]}'
)


def parse(body: bytes) -> object:
    """The body's JSON; orjson reads it in a third of json's time (on a v2 request of
    128 ids, 2.7 against 8.6 us), and json what orjson refuses: NaN, integers past
    64 bits, and the error message for a body that is not JSON."""
    try:
        return parse_json(body)
    except InvalidJson as exc:
        raise PayloadError(exc.describe("the request body")) from None


def decode(
    document: object, signature: ModelSignature
) -> tuple[Sequence[object], dict[str, object]]:
    """Records and request parameters from a simple-shape JSON document."""
    parameters: dict[str, object] = {}
    if isinstance(document, dict):
        if "instances" in document or "inputs" in document:
            raw_parameters = document.get("parameters", {})
            if not isinstance(raw_parameters, dict):
                raise PayloadError('"parameters" must be an object of names and values')
            parameters = raw_parameters
            extra = set(document) - {"instances", "inputs", "parameters"}
            if extra:
                raise PayloadError(
                    f"unexpected field(s) {', '.join(sorted(map(repr, extra)))} beside "
                    f"inputs/instances; send one of: {SHAPES}"
                )
            if "instances" in document:
                return _instances(document["instances"]), parameters
            return _inputs(document["inputs"], signature), parameters
        if document and all(isinstance(k, str) and signature.input(k) for k in document):
            return [document], parameters
        raise PayloadError(
            f"the JSON object has no inputs or instances for model {signature.name!r} "
            f"(inputs: {signature.describe_inputs()}); send one of: {SHAPES}"
        )
    if isinstance(document, list | JsonElements):
        return _records(document, signature), parameters
    if isinstance(document, str) and _single_value(signature):
        return [document], parameters
    raise PayloadError(f"a JSON {type(document).__name__} is not a request; send one of: {SHAPES}")


def read_document(body: bytes, limits: PayloadLimits | None = None) -> object:
    """The body's JSON; a large simple-shape body's records array is read a chunk at a
    time (json_elements.py), the rest as `parse` reads it."""
    if len(body) >= LAZY_BYTES:
        document = lazy_document(body, limits or PayloadLimits())
        if document is not None:
            return document
    return parse(body)


def decode_lines(
    body: bytes, limits: PayloadLimits | None = None
) -> tuple[Sequence[object], Sequence[int]]:
    """The records, and the line of the body each is on (blank lines are not records).

    Lines are found with numpy and parsed only as their chunk is converted
    (`JsonLines`): the body is never Python objects all at once.
    """
    lines = find_lines(body, JSON_BLANK, limits or PayloadLimits())
    if not lines:
        raise PayloadError("the JSON Lines body holds no records")
    return JsonLines(lines), lines.numbers


@dataclasses.dataclass(frozen=True)
class JsonLines(LazyRecords):
    """JSON Lines records, each parsed when its chunk is asked for."""

    lines: Lines

    def __len__(self) -> int:
        return len(self.lines)

    def _read(self, start: int, stop: int) -> list[object]:
        records = []
        for index in range(start, stop):
            try:
                records.append(parse_json(self.lines[index]))
            except InvalidJson as exc:
                number = self.lines.numbers[index]
                raise PayloadError(exc.describe(f"line {number}")) from None
        return records


def _instances(value: object) -> Sequence[object]:
    if not isinstance(value, list | JsonElements):
        raise PayloadError(f'"instances" must be a list of records; got {_kind(value)}')
    if not value:
        raise PayloadError('"instances" is empty; send at least one record')
    return value if isinstance(value, JsonElements) else list(value)


def _inputs(value: object, signature: ModelSignature) -> Sequence[object]:
    if isinstance(value, dict):
        return _columns(value, signature)
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list | JsonElements):
        raise PayloadError(f'"inputs" must be a list of records or a text; got {_kind(value)}')
    return _records(value, signature)


def _kind(value: object) -> str:
    return "null" if value is None else f"a {type(value).__name__}"


def _records(items: list[object] | JsonElements, signature: ModelSignature) -> Sequence[object]:
    """A JSON array: records, or one record of plain values."""
    if not items:
        raise PayloadError("the JSON array is empty; send at least one record")
    if isinstance(items, JsonElements):
        return [list(items)] if items.scalars and not _single_value(signature) else items
    if all(isinstance(item, SCALARS) for item in items) and not _single_value(signature):
        return [items]
    return list(items)


def _columns(columns: Mapping[str, object], signature: ModelSignature) -> Sequence[object]:
    lengths = {}
    for name, values in columns.items():
        if signature.input(name) is None:
            raise PayloadError(
                f"{name!r} is not an input of model {signature.name!r}; its inputs are: "
                f"{', '.join(s.describe() for s in signature.inputs)}"
            )
        if not isinstance(values, list):
            raise PayloadError(f'"inputs" columns hold a list per input; {name!r} does not')
        lengths[name] = len(values)
    if not lengths or len(set(lengths.values())) != 1:
        raise PayloadError(f"the input columns differ in length: {lengths}")
    return Columns(columns, next(iter(lengths.values())))  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class Columns(LazyRecords):
    """`{"inputs": {"name": [value per record], ...}}` as records (an object each), made
    only as their chunk is asked for: a dict per record costs 30 times its values."""

    columns: Mapping[str, list[object]]
    size: int

    def __len__(self) -> int:
        return self.size

    def _read(self, start: int, stop: int) -> list[object]:
        return [
            {name: values[index] for name, values in self.columns.items()}
            for index in range(start, stop)
        ]


def _single_value(signature: ModelSignature) -> bool:
    """True when a record is one value (one record input of one element)."""
    specs = signature.record_inputs
    return len(specs) == 1 and specs[0].fixed_size == 1


# -- answers ---------------------------------------------------------------


def record_values(outputs: Outputs, signature: ModelSignature) -> list[object]:
    """Each record's answer as JSON values: one output's value, or an object of them."""
    per_output = {name: _split(array, signature) for name, array in outputs.tensors.items()}
    if not per_output:
        return []
    count = len(next(iter(per_output.values())))
    if len(per_output) == 1:
        return next(iter(per_output.values()))
    return [{name: values[i] for name, values in per_output.items()} for i in range(count)]


def _split(array: np.ndarray, signature: ModelSignature) -> list[object]:
    if signature.batched and array.ndim > 0 and array.dtype != object:
        # Numbers: one tolist() for the batch; a record of one value is that value.
        flat = array.reshape(len(array), -1)
        return flat[:, 0].tolist() if flat.shape[1] == 1 else array.tolist()
    rows = list(array) if signature.batched and array.ndim > 0 else [array]
    return [json_value(np.asarray(row, dtype=array.dtype)) for row in rows]


def json_value(array: np.ndarray) -> object:
    """One record's value: a scalar for one element, nested lists otherwise."""
    if array.dtype == object:
        items = [_text(item) for item in array.reshape(-1)]
        if array.size == 1:
            return items[0]
        return np.asarray(items, dtype=object).reshape(array.shape).tolist()
    if array.size == 1:
        return array.reshape(-1)[0].item()
    return array.tolist()


def _text(item: object) -> object:
    if isinstance(item, bytes):
        try:
            return item.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(item).decode()}
    return item


def encode(outputs: Outputs, signature: ModelSignature) -> bytes:
    """`{"predictions": [...]}` as json.dumps writes it, a block of records at a time."""
    answer = io.BytesIO()
    answer.write(b'{"predictions": [')
    separator = b""
    for block in batching.blocks(outputs, signature):
        values = json.dumps(record_values(block, signature))[1:-1]
        if values:
            answer.write(separator + values.encode())
            separator = b", "
    answer.write(b"]}")
    return answer.getvalue()  # the buffer itself, not a copy


def encode_lines(outputs: Outputs, signature: ModelSignature) -> bytes:
    answer = io.BytesIO()
    for block in batching.blocks(outputs, signature):
        lines = "".join(json.dumps(value) + "\n" for value in record_values(block, signature))
        answer.write(lines.encode())
    return answer.getvalue() or b"\n"
