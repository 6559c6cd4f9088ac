"""Hostile generated bodies for every payload reader, under a memory and time budget.

Each reader (CSV, JSON Lines, simple JSON, .npy, text and raw bytes, the
binary+json header, and all of them as the formats registry and the adapter
call them, with hostile Content-Types and Accepts) gets inputs built to break
it: declared shapes and sizes that the body does not carry, quotes and escapes
across the pieces numpy reads, numbers numpy and Python read differently,
nesting, bad encodings. Each must end in records that convert to tensors, or
in a 400/413/415 with a message, within its budget (tests/budget.py) and never
otherwise. Where two ways of reading exist (numpy's and Python's, all at once
and a chunk at a time), both must give the same answer. tests/payloads/test_fuzz.py
throws whole requests at a running serve.
"""

from __future__ import annotations

import contextlib
import io
import json
import string
from collections.abc import Callable, Iterator, Sequence
from unittest import mock

import numpy as np
import pytest
from google.protobuf import text_format
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from serve.errors import ServeError
from serve.payloads import json_elements, lines
from serve.payloads.adapter import v2_document
from serve.payloads.batching import Origin, chunks
from serve.payloads.body import Body
from serve.payloads.codecs import binary_codec, csv_codec, json_codec, npy_codec, raw_codec
from serve.payloads.formats import (
    BINARY,
    FORMATS,
    Route,
    answer_candidates,
    feasible,
    request_format,
)
from serve.payloads.limits import PayloadLimits
from serve.payloads.media import MediaType
from serve.payloads.records import tensors_from_records
from serve.payloads.signature import ModelSignature
from serve.payloads.v2 import is_v2_request
from serve.triton.model_config import ModelConfig
from tests.budget import FUZZ, MEBIBYTE, address_space, memory_budget
from tests.payloads.test_fuzz import json_keys, json_scalars


def signature(text: str) -> ModelSignature:
    return ModelSignature.from_config(text_format.Parse(text, ModelConfig()))


OUTPUT = 'output [ { name: "y", data_type: TYPE_FP32, dims: [ 1 ] } ]'
SIGNATURES = {
    "ncf": signature(
        'name: "ncf" max_batch_size: 3 input [ { name: "user_id", data_type: TYPE_INT64, '
        'dims: [ 1 ] }, { name: "item_id", data_type: TYPE_INT64, dims: [ 1 ] } ] ' + OUTPUT
    ),
    "twin": signature(
        'name: "twin" max_batch_size: 4 input [ { name: "A", data_type: TYPE_FP32, dims: [ 2 ] }'
        ', { name: "B", data_type: TYPE_FP32, dims: [ 2 ] } ] ' + OUTPUT
    ),
    "mixed": signature(
        'name: "mixed" max_batch_size: 4 input [ { name: "a", data_type: TYPE_INT32, dims: [ 1 ]'
        ' }, { name: "b", data_type: TYPE_FP64, dims: [ 1 ] } ] ' + OUTPUT
    ),
    "pixels": signature(
        'name: "pixels" max_batch_size: 2 input [ { name: "p", data_type: TYPE_UINT8, '
        "dims: [ 2, 2 ] } ] " + OUTPUT
    ),
    "flags": signature(
        'name: "flags" max_batch_size: 4 input [ { name: "f", data_type: TYPE_BOOL, dims: [ 1 ] '
        "} ] " + OUTPUT
    ),
    "text": signature(
        'name: "text" max_batch_size: 4 input [ { name: "INPUT", data_type: TYPE_STRING, '
        "dims: [ 1 ] } ] " + OUTPUT
    ),
    "single": signature(
        'name: "single" max_batch_size: 0 input [ { name: "x", data_type: TYPE_FP32, '
        "dims: [ 2 ] } ] " + OUTPUT
    ),
    "ragged": signature(
        'name: "ragged" max_batch_size: 4 input [ { name: "x", data_type: TYPE_INT64, '
        "dims: [ -1 ] } ] " + OUTPUT
    ),
}
MODELS = st.sampled_from(sorted(SIGNATURES))
# Small limits, so that bodies of a few hundred bytes reach them too.
LIMITS = PayloadLimits(max_records=60, max_chunks=20)
# What a reader may allocate at the peak: a multiple of the body, and Python's own.
BUDGET_MULTIPLE = 64
BUDGET_FLOOR = 4 * MEBIBYTE

Outcome = tuple[str, object]


@pytest.fixture(autouse=True, scope="module")
def bounded_address_space() -> Iterator[None]:
    with address_space():
        yield


def budget(body: bytes) -> contextlib.AbstractContextManager[None]:
    return memory_budget(BUDGET_MULTIPLE * len(body) + BUDGET_FLOOR)


def outcome(read: Callable[[], object]) -> Outcome:
    """("ok", what `read` gave), or ("refused", status) for a refusal a caller can act on."""
    try:
        return "ok", read()
    except ServeError as exc:
        assert exc.status in (400, 413, 415), (exc.status, exc.message)
        assert exc.message
        return "refused", exc.status


def converted(records: Sequence[object], names: Sequence[int] | None, model: str) -> list:
    """Every chunk's tensors, as the adapter builds them (batching.py); values as their
    repr, so that NaN equals NaN and -0.0 differs from 0.0."""
    model_signature = SIGNATURES[model]
    origin = Origin(names)
    built = []
    for span in chunks(len(records), model_signature, LIMITS):
        chunk = records[span.start : span.stop]
        tensors = tensors_from_records(chunk, model_signature, origin.within(span))
        built.append(
            {name: (t.dtype.str, t.shape, repr(t.tolist())) for name, t in tensors.items()}
        )
    return built


@contextlib.contextmanager
def pieces(size: int) -> Iterator[None]:
    """numpy reads the body `size` bytes at a time: boundaries fall everywhere."""
    with contextlib.ExitStack() as stack:
        for module in (lines, csv_codec, json_elements):
            stack.enter_context(mock.patch.object(module, "PIECE_BYTES", size))
        yield


PIECES = st.sampled_from([3, 7, 64, 1 << 18])

# -- CSV ----------------------------------------------------------------------

CELLS = st.sampled_from(
    [
        "1", "-2", "0.5", "1e3", "-0", "nan", "inf", "-inf", "x", "", " 3 ", "+4", "-", "+",
        "1_000", "1.", ".5", "1e", "nan(2)", "- 5", "99999999999999999999", "-9223372036854775808",
        "255", "256", "true", "false", "True", '"a,b"', '"x\ny"', '""', '"q""q"', 'a"b',
        "user_id", "item_id", "é", "\t", "\x00",
    ]
)  # fmt: skip
CSV_TEXT = st.builds(
    lambda rows, end, tail: end.join(",".join(row) for row in rows) + tail,
    st.lists(st.lists(CELLS, max_size=5), max_size=10),
    st.sampled_from(["\n", "\r\n", "\r", "\n\n"]),
    st.sampled_from(["", "\n", "\r\n", ",\n"]),
)
CSV_BODIES = st.one_of(CSV_TEXT.map(lambda text: text.encode("utf-8")), st.binary(max_size=200))


def read_csv(body: bytes, model: str, header: str | None, charset: str) -> Outcome:
    def read() -> object:
        records, names = csv_codec.decode(body, SIGNATURES[model], header, charset, LIMITS)
        return converted(records, names, model)

    return outcome(read)


@FUZZ
@given(
    body=CSV_BODIES,
    model=MODELS,
    header=st.sampled_from([None, "present", "absent"]),
    charset=st.sampled_from(["utf-8", "latin-1", "utf-16", "ascii"]),
    piece=PIECES,
)
# A fresh run's find: NaN read by both paths compared unequal (NaN != NaN).
@example(body=b"1,nan", model="mixed", header=None, charset="utf-8", piece=3)
def test_csv_reads_as_python_would_within_its_budget(
    body: bytes, model: str, header: str | None, charset: str, piece: int
) -> None:
    with pieces(piece), budget(body):
        read = read_csv(body, model, header, charset)
        # The general path alone: Python reads every cell.
        with mock.patch.object(csv_codec, "_numeric_table", lambda *args: None):
            general = read_csv(body, model, header, charset)
    assert read[0] == general[0], (read, general)
    if read[0] == "ok":
        assert read == general


# -- JSON Lines ---------------------------------------------------------------

# JSON values naming the inputs of the models here, as test_fuzz.py's name its models'.
JSON_VALUES = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["x", "INPUT", "p", "f"]) | json_keys, children, max_size=3
        )
    ),
    max_leaves=12,
)
CORRUPTIONS = st.sampled_from(["", "[", "]", "{", '"', "\\", ",", "NaN", "\xff", "[" * 3000])


def corrupted(text: str, junk: str, at: float) -> str:
    where = int(len(text) * at)
    return text[:where] + junk + text[where:]


JSON_LINES = st.builds(
    lambda values, end, junk, at: corrupted(end.join(json.dumps(v) for v in values), junk, at),
    st.lists(JSON_VALUES, max_size=8),
    st.sampled_from(["\n", "\r\n", "\r", "\n \n"]),
    CORRUPTIONS,
    st.floats(0, 1),
).map(lambda text: text.encode("utf-8", "surrogatepass"))


def reference_lines(body: bytes) -> tuple[list[object], list[int]]:
    """JSON Lines as the whole body read by Python: a line per record, blank ones skipped."""
    records, numbers = [], []
    for number, line in enumerate(body.splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except (ValueError, RecursionError):
                raise json_codec.PayloadError("not JSON") from None
            numbers.append(number)
    if not records:
        raise json_codec.PayloadError("no records")
    return records, numbers


@FUZZ
@given(body=JSON_LINES | st.binary(max_size=200), model=MODELS, piece=PIECES)
def test_json_lines_read_a_chunk_at_a_time_as_whole_within_the_budget(
    body: bytes, model: str, piece: int
) -> None:
    with pieces(piece), budget(body):
        read = outcome(lambda: converted(*json_codec.decode_lines(body, LIMITS), model))
    expected = outcome(lambda: converted(*reference_lines(body), model))
    assert read[0] == expected[0], (read, expected)
    if read[0] == "ok":
        assert read == expected


# -- Simple JSON ----------------------------------------------------------------

JSON_DOCUMENTS = st.builds(
    lambda value, shape, spaces, junk, at: corrupted(
        shape.format(json.dumps(value), s=spaces), junk, at
    ),
    st.lists(JSON_VALUES, max_size=6) | JSON_VALUES,
    st.sampled_from(
        [
            "{}",
            '{{{s}"instances"{s}:{s}{}{s}}}',
            '{{"inputs":{s}{}}}',
            '{{"instances": {}, "parameters": {{"k": ["]", "\\\\"]}}}}',
            '{{"instances": [], "instances": {}}}',
            '{{"inputs": {}, "extra": 1}}',
        ]
    ),
    st.sampled_from(["", " ", "\n\t"]),
    CORRUPTIONS,
    st.floats(0, 1),
).map(lambda text: text.encode("utf-8", "surrogatepass"))


def read_json(body: bytes, model: str, lazy: bool) -> Outcome:
    def read() -> object:
        with mock.patch.object(json_codec, "LAZY_BYTES", 0 if lazy else 1 << 60):
            document = json_codec.read_document(body, LIMITS)
        records, parameters = json_codec.decode(document, SIGNATURES[model])
        return converted(records, None, model), parameters

    return outcome(read)


@FUZZ
@given(body=JSON_DOCUMENTS | st.binary(max_size=200), model=MODELS, piece=PIECES)
def test_simple_json_read_a_chunk_at_a_time_as_whole_within_the_budget(
    body: bytes, model: str, piece: int
) -> None:
    with pieces(piece), budget(body):
        lazily = read_json(body, model, lazy=True)
    whole = read_json(body, model, lazy=False)
    assert lazily[0] == whole[0], (lazily, whole)
    if lazily[0] == "ok":
        assert lazily == whole


# -- .npy -----------------------------------------------------------------------

DESCRS = st.sampled_from(
    ["<f4", "<i8", "|u1", "|b1", ">f8", "<U3", "|S2", "|V0", "<U0", "|O", "<c8", "<f2", "x"]
)
SHAPES = st.one_of(
    st.lists(st.integers(0, 4), max_size=3),
    st.lists(st.integers(-(2**63), 2**63), min_size=1, max_size=3),
    st.lists(st.just(1), min_size=30, max_size=70),
).map(tuple)
HEADERS = (
    st.builds(
        lambda descr, fortran, shape: repr(
            {"descr": descr, "fortran_order": fortran, "shape": shape}
        ),
        DESCRS | st.text(max_size=8),
        st.booleans() | st.integers(),
        SHAPES,
    )
    | st.text(string.printable, max_size=60)
    | st.just("(" * 5000)
)


def npy_file(header: str, version: int, data: bytes) -> bytes:
    encoded = header.encode("utf-8", "surrogatepass") + b"\n"
    length = len(encoded).to_bytes(2 if version == 1 else 4, "little")
    return b"\x93NUMPY" + bytes([version, 0]) + length + encoded + data


def saved(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


NPY_BODIES = st.one_of(
    st.builds(npy_file, HEADERS, st.sampled_from([1, 2, 3]), st.binary(max_size=64)),
    hnp.arrays(
        st.sampled_from(["<f4", "<i8", "|u1", "|b1", ">i2", "<U2"]),
        hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
    ).map(saved),
    st.binary(max_size=100).map(lambda tail: b"\x93NUMPY\x01\x00" + tail),
    st.binary(max_size=100),
)


@FUZZ
@given(body=NPY_BODIES, model=MODELS)
def test_npy_reads_what_the_body_carries_never_what_its_header_declares(
    body: bytes, model: str
) -> None:
    with budget(body):
        outcome(lambda: converted(npy_codec.decode(body, SIGNATURES[model]), None, model))


# -- Text and raw bytes ---------------------------------------------------------


@FUZZ
@given(
    body=st.binary(max_size=300),
    charset=st.sampled_from(["utf-8", "latin-1", "utf-16", "ascii", "cp1252", "utf-32"]),
)
def test_text_and_raw_bodies_are_one_record_each(body: bytes, charset: str) -> None:
    with budget(body):
        for records in (raw_codec.decode_text(body, charset), raw_codec.decode_bytes(body)):
            assert len(records) == 1
            assert outcome(lambda records=records: converted(records, None, "text"))[0] == "ok"


# -- The binary+json header -------------------------------------------------------

BINARY_TYPE = "application/vnd.sagemaker-triton.binary+json"
HEADERS_JSON = st.one_of(
    st.builds(json.dumps, st.fixed_dictionaries({"inputs": st.lists(JSON_VALUES, max_size=3)})),
    st.sampled_from(['{"a": NaN}', '{"n": 1e999}', "[" * 100_000, '{"a": 1', "\xff", "", "{}"]),
)


@FUZZ
@given(
    header=HEADERS_JSON,
    tail=st.binary(max_size=64),
    declared=st.integers(-3, 2**40) | st.text(string.printable, max_size=12),
    case=st.sampled_from(["", "upper"]),
    extra=st.sampled_from(["", ";", ";x=1", " ", ";json-header-size=3"]),
)
def test_the_binary_json_header_is_read_only_as_far_as_it_is_declared_and_carried(
    header: str, tail: bytes, declared: int | str, case: str, extra: str
) -> None:
    data = header.encode("utf-8", "surrogatepass") + tail
    content_type = f"{BINARY_TYPE};json-header-size={declared}{extra}"
    if case == "upper":
        content_type = content_type.upper()
    with budget(data):
        result = outcome(lambda: binary_codec.header_size(content_type, Body(data)))
    if result[0] == "ok":
        assert isinstance(result[1], int) and 0 <= result[1] <= len(data)


# -- The formats registry: every format as the adapter reads it -------------------

# Every request type the registry knows, types it refuses or reads only as v2, and junk.
KNOWN_TYPES = sorted({mime for f in FORMATS for mime in f.request_types})
PARAMETERS = st.sampled_from(
    [
        "",
        "",
        "; charset=latin-1",
        "; charset=utf-16",
        "; charset=nonesuch",
        "; header=present",
        "; header=absent",
        "; format=raw",
        "; format=simple",
        ";;;=",
        '; charset="utf-8"',
    ]
)


def typed(bodies: st.SearchStrategy[bytes], types: list[str]) -> st.SearchStrategy:
    """Bodies of one kind with a type of its format (and parameters), or any type."""
    mime = (
        st.sampled_from(types)
        if types
        else st.sampled_from([*KNOWN_TYPES, "image/png", "application/x-npz", "", "*/*"])
        | st.text(string.printable, max_size=30)
    )
    return st.tuples(st.builds(str.__add__, mime, PARAMETERS), bodies)


TYPED_BODIES = st.one_of(
    typed(CSV_BODIES, ["text/csv", "application/csv"]),
    typed(JSON_LINES, ["application/jsonlines", "application/x-ndjson"]),
    typed(JSON_DOCUMENTS, ["application/json", "application/x-www-form-urlencoded", ""]),
    typed(NPY_BODIES, ["application/x-npy", "tensor/pt"]),
    typed(st.binary(max_size=200), ["text/plain", "application/octet-stream", "image/jpeg"]),
    typed(st.one_of(CSV_BODIES, JSON_DOCUMENTS, NPY_BODIES, st.binary(max_size=200)), []),
)
ACCEPTS = st.sampled_from(
    ["", "*/*", "application/json", "text/csv", "application/x-npy;q=0.5, text/plain", "x/y"]
) | st.text(string.printable, max_size=30)
MODELS_AND_TEXT = st.sampled_from([*sorted(SIGNATURES), "text", "text"])


def read_as_adapter(content_type: str, accept: str, data: bytes, model: str) -> object:
    """What the adapter does with a body before it reaches Triton (adapter._invoke):
    the format by Content-Type, its declared-size check, a v2 request told apart,
    the JSON document, the records converted chunk by chunk, and the answer chosen."""
    model_signature = SIGNATURES[model]
    payload_format, media = request_format(content_type)
    body = Body(data)
    payload_format.check_body(body, media)
    if payload_format is BINARY:
        return binary_codec.header_size(content_type, body)
    document = None
    if payload_format.route is Route.JSON:
        document = json_codec.read_document(data, LIMITS)
        if is_v2_request(document):
            return "v2"
    elif v2_document(payload_format, media, body) is not None:
        return "v2"
    records, _parameters, origin = payload_format.read(
        media, body, document, model_signature, LIMITS
    )
    built = converted(records, origin.lines, model)
    answer = feasible(answer_candidates(accept, payload_format.answer), model_signature)
    return built, answer.name


@FUZZ
@given(typed_body=TYPED_BODIES, accept=ACCEPTS, model=MODELS_AND_TEXT, piece=PIECES)
def test_every_format_reads_through_the_registry_within_its_budget(
    typed_body: tuple[str, bytes], accept: str, model: str, piece: int
) -> None:
    content_type, body = typed_body
    with pieces(piece), budget(body):
        try:
            read_as_adapter(content_type, accept, body, model)
        except ServeError as exc:
            assert exc.status in (400, 406, 413, 415), (exc.status, exc.message)
            assert exc.message


@FUZZ
@given(body=NPY_BODIES)
def test_the_npy_header_is_refused_before_the_body_is_read_as_when_it_is(body: bytes) -> None:
    """formats.py's check_declared for .npy (a spooled body's header, read from disk
    before the body) refuses exactly what reading the whole body refuses for its header."""
    declared = outcome(lambda: npy_codec.check_declared(Body(body), MediaType.parse("")))
    whole = outcome(lambda: npy_codec.read_array(body))
    if declared[0] == "refused":
        assert whole[0] == "refused", (declared, whole)
    elif whole[0] == "refused":
        # What only the whole body shows: more dimensions than numpy takes.
        with pytest.raises(ServeError, match="numpy can read"):
            npy_codec.read_array(body)
