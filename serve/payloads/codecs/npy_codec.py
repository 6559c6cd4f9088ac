"""NumPy's .npy format (application/x-npy), as SageMaker's own containers use it.

A request array is the batch: its first axis is the records (a model with
`max_batch_size: 0` takes the whole array as its one record). For a model
with several record inputs each row is split among them, as with CSV. The
answer is the one answer output as an array (BYTES as unicode text, so no
pickle is needed to read it); a model with several outputs pins one with
SERVE_PAYLOAD_OUTPUTS (see signature.py).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import struct
import tokenize
from collections.abc import Callable, Sequence

import numpy as np

from serve.errors import NotAcceptable, PayloadError
from serve.payloads.body import Body
from serve.payloads.media import MediaType
from serve.payloads.records import LazyRecords
from serve.payloads.signature import ModelSignature
from serve.payloads.v2 import Outputs


def decode(body: bytes, signature: ModelSignature) -> Sequence[object]:
    """The records: the array's rows (the array itself, sliced as it is split), or the
    whole array as one record for a model that does not batch."""
    array = read_array(body)
    if not signature.batched or array.ndim == 0:
        return [array]
    if len(signature.record_inputs) > 1 and array.ndim == 2 and array.dtype.kind not in "biuf":
        return RowLists(array)  # text split among several inputs: Python's str per value
    return array  # type: ignore[return-value]  # an array is a sequence of its rows


@dataclasses.dataclass(frozen=True)
class RowLists(LazyRecords):
    """An array's rows as lists of Python values, made a chunk at a time."""

    array: np.ndarray

    def __len__(self) -> int:
        return len(self.array)

    def _read(self, start: int, stop: int) -> list[object]:
        return self.array[start:stop].tolist()


@dataclasses.dataclass(frozen=True)
class Declared:
    """What a .npy header declares, checked against the bytes the body carries."""

    shape: tuple[int, ...]
    fortran_order: bool
    dtype: np.dtype
    # Where the array's bytes start.
    offset: int

    @property
    def values(self) -> int:
        return math.prod(self.shape)


# numpy's header readers refuse a header past 10,000 bytes (max_header_size); with the
# magic, the version and the length field, the header is within this many bytes.
HEADER_BYTES = 16 * 1024


def declared(head: bytes, size: int) -> Declared:
    """The header at the start of a `size`-byte .npy body (`head`: at least its first
    HEADER_BYTES), checked against the bytes that follow it before anything is
    allocated: a header may declare any shape, and numpy's own reader allocates what
    it declares before it finds the data missing. 400 naming the shape if it lies."""
    if head[:4] == ZIP_MAGIC:
        raise PayloadError("the body is an .npz archive; send one .npy array")
    stream = io.BytesIO(head)
    try:
        version = np.lib.format.read_magic(stream)  # type: ignore[no-untyped-call]
        reader = _HEADER_READERS.get(version)
        if reader is None:
            raise PayloadError(f"the body is not a .npy array: unknown format version {version}")
        shape, fortran_order, dtype = reader(stream)
    except _UNREADABLE as exc:
        raise PayloadError(f"the body is not a .npy array: {_first_line(exc)}") from None
    if dtype.hasobject:
        raise PayloadError(
            "the body is a .npy array of Python objects, which would need pickle to read; "
            "send numbers or text"
        )
    if min(shape, default=1) < 0:
        raise PayloadError(f"the .npy header declares a negative dimension: {list(shape)}")
    header = Declared(tuple(shape), fortran_order, dtype, stream.tell())
    if header.values == 0 or dtype.itemsize == 0:
        raise PayloadError(
            f"the .npy array of shape {list(shape)} holds no values; send at least one record"
        )
    carried = size - header.offset
    if header.values * dtype.itemsize != carried:
        raise PayloadError(
            f"the .npy header declares shape {list(shape)} of {dtype.str} "
            f"({header.values * dtype.itemsize} bytes), but {carried} bytes follow it; send the "
            "array as numpy.save writes it"
        )
    return header


def check_declared(body: Body, media: MediaType) -> None:
    """The header checked before the body is read whole (a spooled one from disk)."""
    declared(body.head(HEADER_BYTES), body.size)


def read_array(body: bytes) -> np.ndarray:
    """The array a .npy body holds, read in place (a view of the body, nothing copied),
    once its header is checked against the bytes it carries (`declared`)."""
    header = declared(body, len(body))
    try:
        flat = np.frombuffer(body, dtype=header.dtype, count=header.values, offset=header.offset)
        if header.fortran_order:
            return flat.reshape(header.shape[::-1]).transpose()
        return flat.reshape(header.shape)
    except ValueError as exc:  # more dimensions than numpy takes
        raise PayloadError(f"the body is not a .npy array numpy can read: {exc}") from None


ZIP_MAGIC = b"PK\x03\x04"
_HEADER_READERS: dict[tuple[int, int], Callable[[io.BytesIO], tuple]] = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}
# Version 3.0 (a UTF-8 header) has no public reader of its own.
_read_header: Callable[..., tuple] | None = getattr(np.lib.format, "_read_array_header", None)
if _read_header is not None:
    _HEADER_READERS[3, 0] = functools.partial(_read_header, version=(3, 0))
# What numpy's header readers raise on a malformed header (the header is a Python
# literal, read with ast.literal_eval, at most 10,000 characters long).
_UNREADABLE = (
    ValueError,
    TypeError,
    SyntaxError,
    RecursionError,
    MemoryError,
    OverflowError,
    UnicodeDecodeError,
    EOFError,
    struct.error,
    # A header of Python 2's days goes through the tokenizer, which has errors of its own.
    tokenize.TokenError,
)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


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
