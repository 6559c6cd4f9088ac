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

import csv
import io

import numpy as np

from serve.errors import PayloadError
from serve.payloads.signature import ModelSignature
from serve.payloads.v2 import Outputs


def decode(
    text: str, signature: ModelSignature, header: str | None = None
) -> tuple[list[object], list[int]]:
    """The records, and the line of the body each starts on (for errors that name it)."""
    rows, lines = _rows_and_lines(text)
    if not rows:
        raise PayloadError("the CSV body holds no records")
    first = [cell.strip() for cell in rows[0]]
    if header == "present" or (header != "absent" and _looks_like_header(first, signature)):
        rows, lines = rows[1:], lines[1:]
        if not rows:
            raise PayloadError("the CSV body holds a header and no records")
        names = [spec.name for spec in signature.record_inputs]
        if sorted(first) == sorted(names) and all(s.fixed_size == 1 for s in signature.inputs):
            return [dict(zip(first, row, strict=False)) for row in rows], lines
    return _numbers(rows, signature), lines


def _rows_and_lines(text: str) -> tuple[list[list[str]], list[int]]:
    """Non-blank rows, and the line each starts on (a quoted field may hold line breaks)."""
    if '"' not in text:  # nothing quoted: plain splitting reads the same, several times faster
        numbered = [
            (number, line.split(","))
            for number, line in enumerate(text.splitlines(), start=1)
            if line.strip(", \t")
        ]
        return [row for _, row in numbered], [number for number, _ in numbered]
    rows, lines = [], []
    reader = csv.reader(io.StringIO(text))
    start = 1
    try:
        for row in reader:
            if any(cell.strip() for cell in row):
                rows.append(row)
                lines.append(start)
            start = reader.line_num + 1
    except csv.Error as exc:
        raise PayloadError(f"line {start} is not valid CSV: {exc}") from exc
    return rows, lines


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
