"""CSV: one record per line in, one answer line per record out.

Each line holds a record's values in the order of the record inputs (see
records.py). A header line is optional: it is recognised when none of its
cells reads as a number (for models without BYTES record inputs), or said with `header=present`
(RFC 7111; `header=absent` turns recognition off). A header that names the
inputs one column each puts the columns in that order. Multi-record bodies
are what SageMaker Batch Transform sends with SplitType=Line; the answer has
one line per record, each output's values flattened in answer order.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import functools
import io
import warnings
from collections.abc import Sequence

import numpy as np

from serve.errors import PayloadError
from serve.payloads import batching
from serve.payloads.limits import PayloadLimits
from serve.payloads.lines import CSV_BLANK, PIECE_BYTES, Lines, byte_set, find_lines
from serve.payloads.records import LazyRecords, tensors_from_records
from serve.payloads.signature import ModelSignature, TensorSpec
from serve.payloads.v2 import Outputs

COMMA = ord(",")
NEWLINE = ord("\n")
# Each cell of a number holds a digit, or is NaN or infinity.
_SIGNIFICANT = byte_set(b"0123456789nNiI")
_SIGNS = byte_set(b"+-")
_SPACES = byte_set(b" \t")
# Charsets whose bytes are read as they are: ASCII's bytes mean ASCII in each. Others
# (UTF-16, say) are turned into UTF-8 first.
_ASCII_COMPATIBLE = {"utf-8", "ascii", "iso8859-1", "cp1252"}


def decode(
    body: bytes,
    signature: ModelSignature,
    header: str | None = None,
    charset: str = "utf-8",
    limits: PayloadLimits | None = None,
) -> tuple[Sequence[object], Sequence[int]]:
    """The records, and the line of the body each starts on (for errors that name it).

    Numbers for a model of fixed-size numeric inputs are read into one array
    with numpy (no Python object per value); anything else (quoted fields, text,
    booleans, a number numpy does not read as Python would) is read record by
    record as its chunk is converted (`Rows`), so a body never exists as Python
    objects all at once.
    """
    data = body if codecs.lookup(charset).name in _ASCII_COMPATIBLE else _utf8(body, charset)
    quoted = b'"' in data
    lines = find_lines(data, CSV_BLANK, limits or PayloadLimits(), quoted)
    if not lines:
        raise PayloadError("the CSV body holds no records")
    text = _text_decoder(charset)
    first = [cell.strip() for cell in _cells(lines, 0, quoted, text)]
    names = None
    if header == "present" or (header != "absent" and _looks_like_header(first, signature)):
        lines = lines[1:]
        if not lines:
            raise PayloadError("the CSV body holds a header and no records")
        inputs = [spec.name for spec in signature.record_inputs]
        if sorted(first) == sorted(inputs) and all(s.fixed_size == 1 for s in signature.inputs):
            names = first
    numbers = lines.numbers
    rows = Rows(lines, signature, names, quoted, text)
    if not quoted:
        table = _numeric_table(lines, signature, names, rows)
        if table is not None:
            return table, numbers  # type: ignore[return-value]  # an array: a sequence of rows
    return rows, numbers


def _utf8(body: bytes, charset: str) -> bytes:
    return body.decode(charset, errors="replace").encode("utf-8", errors="surrogatepass")


def _text_decoder(charset: str) -> str:
    """The charset a record's bytes are decoded with (UTF-8 once transcoded)."""
    name = codecs.lookup(charset).name
    return name if name in _ASCII_COMPATIBLE else "utf-8"


@dataclasses.dataclass(frozen=True)
class Rows(LazyRecords):
    """CSV records read only as they are asked for: a chunk's records at a time.

    Each record is its cells (text, or numbers where every record input is
    numeric: records.py names a cell that is neither), or, under a header that
    names the inputs, an object of them.
    """

    lines: Lines
    signature: ModelSignature
    names: list[str] | None
    quoted: bool
    charset: str

    def __len__(self) -> int:
        return len(self.lines)

    def _read(self, start: int, stop: int) -> list[object]:
        rows = [_cells(self.lines, i, self.quoted, self.charset) for i in range(start, stop)]
        if self.names is not None:
            return [dict(zip(self.names, row, strict=False)) for row in rows]
        return _numbers(rows, self.signature)


def _cells(lines: Lines, index: int, quoted: bool, charset: str) -> list[str]:
    """The cells of record `index`."""
    text = lines[index].decode(charset, errors="replace")
    if text.endswith("\r"):
        text = text[:-1]
    if not quoted or '"' not in text:
        return text.split(",")
    try:
        return next(csv.reader(io.StringIO(text, newline="")), [])
    except csv.Error as exc:
        raise PayloadError(f"line {lines.numbers[index]} is not valid CSV: {exc}") from exc


def _numbers(rows: list[list[str]], signature: ModelSignature) -> list[object]:
    """Rows of numbers where every record input is numeric (text otherwise, for errors)."""
    kinds = {spec.dtype.kind for spec in signature.record_inputs}
    if not kinds or not kinds <= {"i", "u", "f"}:
        return rows  # type: ignore[return-value]
    parse = float if "f" in kinds else int
    try:
        return [[parse(cell) for cell in row] for row in rows]
    except ValueError:
        return rows  # type: ignore[return-value]  # records.py names the bad cell


def _numeric_table(
    lines: Lines, signature: ModelSignature, names: list[str] | None, rows: Rows
) -> np.ndarray | None:
    """Every record's numbers as one array (a row per record), read with numpy a piece of
    the body at a time; None when a record is not plain numbers of the expected count,
    or a model input is not numbers of a fixed size (the general path reads those).

    A piece numpy cannot read is read at once as the general path would read it
    (`rows`), which names the record that is wrong: a bad cell at the end of a large
    body costs one piece read in Python, not the whole body.
    """
    specs = signature.record_inputs
    if not signature.batched or not specs:
        return None
    if any(s.is_bytes or s.fixed_size is None or s.dtype.kind not in "iuf" for s in specs):
        return None
    columns = sum(spec.fixed_size or 0 for spec in specs)
    dtype = _parse_type(specs)
    table = np.empty((len(lines), columns), dtype=dtype)
    per_piece = max(1, len(lines) * PIECE_BYTES // max(1, len(lines.data)))
    for start in range(0, len(lines), per_piece):
        part = _parse_numbers(lines[start : start + per_piece], columns, dtype)
        if part is None:
            _check_rows(rows, range(start, min(start + per_piece, len(lines))), signature)
            return None
        table[start : start + len(part)] = part
    if names is not None:
        table = table[:, [names.index(spec.name) for spec in specs]]
    return table


def _check_rows(rows: Rows, span: range, signature: ModelSignature) -> None:
    """Convert the records of `span` as the general path would: PayloadError names a bad one."""
    numbers = rows.lines.numbers
    for start in range(span.start, span.stop, signature.max_batch_size):
        stop = min(start + signature.max_batch_size, span.stop)
        where = functools.partial(_line, numbers, start)
        tensors_from_records(rows[start:stop], signature, where)


def _line(numbers: Sequence[int], first: int, index: int) -> str:
    return f"line {numbers[first + index]}"


def _parse_type(specs: tuple[TensorSpec, ...]) -> np.dtype:
    """The type numbers are read as: the inputs' own where they share one numpy reads,
    else what holds every value exactly as Python's int or float would."""
    types = {spec.dtype for spec in specs}
    if types <= {np.dtype(np.float32)}:
        return np.dtype(np.float32)
    if any(t.kind == "f" for t in types):
        return np.dtype(np.float64)
    if np.dtype(np.uint64) in types:
        return np.dtype(np.uint64)
    return np.dtype(np.int64)


def _parse_numbers(lines: Lines, columns: int, dtype: np.dtype) -> np.ndarray | None:
    """`columns` numbers from each record, or None where a record holds anything else."""
    text = lines.text() if lines.contiguous else b"\n".join(lines)
    buf = np.frombuffer(text, dtype=np.uint8)
    commas = np.zeros(len(buf) + 1, dtype=np.int32)
    np.cumsum(buf == COMMA, out=commas[1:])
    ends = lines.ends - lines.starts[0] if lines.contiguous else _joined_ends(lines)
    # Each record holds columns - 1 commas (a newline, between records, holds none).
    if not np.all(np.diff(commas[ends], prepend=0) == columns - 1):
        return None
    if not _as_python_reads(text, buf):
        return None
    # numpy stops where a value does not parse (warning, in numpy 1.x): a last value
    # after the records' tells whether it read them all, trailing text in the last too.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            values = np.fromstring(text.replace(b"\n", b",") + b",0", dtype=dtype, sep=",")
        except ValueError:
            return None
    if values.size != len(lines) * columns + 1:
        return None
    values = values[:-1]
    if dtype.kind in "iu":
        limits = np.iinfo(dtype)
        if values.size and (values.max() == limits.max or values.min() == limits.min):
            return None  # perhaps clipped: Python's int says what was meant
    return values.reshape(len(lines), columns)


def _as_python_reads(text: bytes, buf: np.ndarray) -> bool:
    """False for cells numpy reads as numbers and Python's int() and float() refuse (a
    sign or spaces alone, a sign before a space, NaN with a payload): the general path
    then names the cell. Underscores (`1_000`), which Python reads and numpy does not,
    fail numpy's reading instead."""
    if b"(" in text or np.any(_SIGNS[buf[:-1]] & _SPACES[buf[1:]]):
        return False
    significant = np.zeros(len(buf) + 1, dtype=np.int32)
    np.cumsum(_SIGNIFICANT[buf], out=significant[1:])
    cell_ends = np.append(np.flatnonzero((buf == COMMA) | (buf == NEWLINE)), len(buf))
    return bool(np.all(np.diff(significant[cell_ends], prepend=0) > 0))


def _joined_ends(lines: Lines) -> np.ndarray:
    """Where each record ends in `b"\\n".join(lines)`."""
    lengths = (lines.ends - lines.starts).astype(np.int64)
    return np.cumsum(lengths + 1) - 1


def _looks_like_header(cells: list[str], signature: ModelSignature) -> bool:
    """Names, not values: no cell reads as a number (a mix is a bad record, reported as such)."""
    if any(spec.is_bytes for spec in signature.record_inputs):
        return False
    return all(not _is_number(cell) for cell in cells)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return cell.lower() in ("true", "false")
    return True


def encode(outputs: Outputs, signature: ModelSignature) -> bytes:
    """One line per record, written a block of records at a time (batching.blocks)."""
    answer = io.BytesIO()
    for block in batching.blocks(outputs, signature):
        answer.write(_encode(block, signature))
    return answer.getvalue()  # the buffer itself, not a copy


def _encode(outputs: Outputs, signature: ModelSignature) -> bytes:
    arrays = list(outputs.tensors.values())
    if signature.batched and arrays and all(a.dtype != object and a.ndim for a in arrays):
        # Numbers need no quoting: one tolist() per output, lines joined directly.
        columns = [a.reshape(len(a), -1).tolist() for a in arrays]
        lines = [
            ",".join(str(cell) for part in parts for cell in part)
            for parts in zip(*columns, strict=True)
        ]
        return ("\n".join(lines) + "\n").encode()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = [_rows(array, signature) for array in outputs.tensors.values()]
    for parts in zip(*columns, strict=True):
        writer.writerow([cell for part in parts for cell in part])
    return buffer.getvalue().encode()


def _rows(array: np.ndarray, signature: ModelSignature) -> list[list[object]]:
    rows = list(array) if signature.batched and array.ndim > 0 else [array]
    return [[_cell(value) for value in np.asarray(row).reshape(-1)] for row in rows]


def _cell(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value.item() if isinstance(value, np.generic) else value
