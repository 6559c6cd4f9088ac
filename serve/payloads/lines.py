"""Records that are lines of a body (CSV, JSON Lines), found without a Python object per line.

Batch transform sends bodies of up to 100 MB, millions of short lines;
`str.splitlines()` makes a Python string per line and `csv.reader` a list per
row, 50 to 80 times the body in all. Here the lines are found with numpy, a
piece of the body at a time, and each record is two offsets into the body
(8 bytes). A record becomes Python objects only when the chunk that holds it
is converted into tensors (batching.py), and those go with the chunk.

Records are counted, and the count checked against SERVE_MAX_RECORDS, while
they are found: the offsets never outgrow the limit.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence
from typing import overload

import numpy as np

from serve.payloads.limits import PayloadLimits

# Bytes of the body looked at at once: numpy's temporaries are about 20 times this.
PIECE_BYTES = 1 << 18
NEWLINE = 10
RETURN = 13
QUOTE = ord('"')
# What precedes a quote that opens a CSV field: a comma, a line's end, or nothing.
FIELD_STARTS = frozenset(b",\n\r")


def byte_set(characters: bytes) -> np.ndarray:
    """A lookup table: True for the bytes in `characters`."""
    table = np.zeros(256, dtype=bool)
    table[np.frombuffer(characters, dtype=np.uint8)] = True
    return table


# What a line may hold and still be blank (no record): CSV's separators and whitespace.
CSV_BLANK = byte_set(b", \t\r\x0b\x0c")
JSON_BLANK = byte_set(b" \t\r\x0b\x0c")


@dataclasses.dataclass(frozen=True)
class Lines(Sequence[bytes]):
    """The records of `data`: `data[starts[i]:ends[i]]` (the newline left out)."""

    data: bytes
    starts: np.ndarray
    ends: np.ndarray

    def __len__(self) -> int:
        return len(self.starts)

    @overload
    def __getitem__(self, index: int) -> bytes: ...

    @overload
    def __getitem__(self, index: slice) -> Lines: ...

    def __getitem__(self, index: int | slice) -> bytes | Lines:
        if isinstance(index, slice):
            return Lines(self.data, self.starts[index], self.ends[index])
        return self.data[self.starts[index] : self.ends[index]]

    def __iter__(self) -> Iterator[bytes]:
        for start, end in zip(self.starts.tolist(), self.ends.tolist(), strict=True):
            yield self.data[start:end]

    @property
    def contiguous(self) -> bool:
        """True when the records follow each other with nothing between (no blank lines)."""
        return bool(np.all(self.starts[1:] == self.ends[:-1] + 1))

    def text(self) -> bytes:
        """The records' bytes from the first one's start to the last one's end."""
        return self.data[self.starts[0] : self.ends[-1]] if len(self) else b""

    @functools.cached_property
    def numbers(self) -> LineNumbers:
        return LineNumbers(self)


class LineNumbers(Sequence[int]):
    """The line of the body each record starts on (from 1), counted for every record the
    first time one is asked for (an error names one; the general path names each)."""

    def __init__(self, lines: Lines):
        self.lines = lines
        self._numbers: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.lines)

    @overload
    def __getitem__(self, index: int) -> int: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[int]: ...

    def __getitem__(self, index: int | slice) -> int | Sequence[int]:
        if self._numbers is None:
            self._numbers = _line_numbers(self.lines.data, self.lines.starts)
        if isinstance(index, slice):
            return self._numbers[index].tolist()
        return int(self._numbers[index])


def _line_numbers(data: bytes, starts: np.ndarray) -> np.ndarray:
    """The line each of the ascending offsets `starts` is on, counted as splitlines() does."""
    buf = np.frombuffer(data, dtype=np.uint8)
    lone_returns = _has_lone_returns(buf)
    numbers = np.empty(len(starts), dtype=np.int64)
    before = 0  # lines that end before the piece
    for piece_start, piece_end in _pieces(data):
        ends = np.flatnonzero(_line_ends(buf[piece_start:piece_end], lone_returns))
        ends += piece_start
        low, high = np.searchsorted(starts, [piece_start, piece_end])
        numbers[low:high] = before + np.searchsorted(ends, starts[low:high]) + 1
        before += len(ends)
    return numbers


def find_lines(
    data: bytes, blank: np.ndarray, limits: PayloadLimits, quoted: bool = False
) -> Lines:
    """The lines of `data` that hold anything but `blank` bytes, as offsets.

    With `quoted` (CSV), a newline inside a quoted field belongs to the field,
    not to the end of the record (`quoted_fields`). 413 past SERVE_MAX_RECORDS,
    found before the offsets outgrow it.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    offsets = np.int32 if len(data) < 2**31 else np.int64
    opens, closes = quoted_fields(data) if quoted else (None, None)
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    count = 0
    # Where the record open at the end of the previous piece started.
    open_start = 0
    lone_returns = _has_lone_returns(buf)
    for piece_start, piece_end in _pieces(data):
        newlines = np.flatnonzero(_line_ends(buf[piece_start:piece_end], lone_returns))
        newlines += piece_start
        if opens is not None and closes is not None and len(opens):
            field = np.searchsorted(opens, newlines, side="right") - 1
            inside = (field >= 0) & (newlines < closes[np.maximum(field, 0)])
            newlines = newlines[~inside]
        line_ends = newlines
        if (
            piece_end == len(data)
            and open_start < len(data)
            and (not len(line_ends) or line_ends[-1] != len(data) - 1)
        ):
            line_ends = np.append(line_ends, len(data))  # the last line, with no newline
        line_starts = np.concatenate(([open_start], line_ends[:-1] + 1))[: len(line_ends)]
        if len(line_ends):
            open_start = int(line_ends[-1]) + 1
        piece = buf[piece_start:piece_end]
        filled = _filled(piece, line_starts - piece_start, line_ends - piece_start, blank)
        count += int(np.count_nonzero(filled))
        limits.check_records(count)
        starts.append(line_starts[filled].astype(offsets))
        ends.append(line_ends[filled].astype(offsets))
    if not starts:
        return Lines(data, np.zeros(0, offsets), np.zeros(0, offsets))
    return Lines(data, np.concatenate(starts), np.concatenate(ends))


def _has_lone_returns(buf: np.ndarray) -> bool:
    """True when a carriage return ends a line on its own (old Macs' line ends)."""
    returns = np.flatnonzero(buf == RETURN)
    if not len(returns):
        return False
    return bool(returns[-1] == len(buf) - 1 or np.any(buf[returns + 1] != NEWLINE))


def _line_ends(piece: np.ndarray, lone_returns: bool) -> np.ndarray:
    """A mask of the bytes that end a line: newlines, and (`lone_returns`) carriage returns
    no newline follows, as Python's splitlines() and csv module read them. A piece ends
    with a newline, or the body does."""
    ends = piece == NEWLINE
    if lone_returns:
        returns = piece == RETURN
        returns[:-1] &= ~ends[1:]
        ends |= returns
    return ends


def quoted_fields(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Where each quoted CSV field opens and closes (the offsets of its quotes), as
    Python's csv module reads them: a quote opens a field only at the field's start
    (elsewhere it is a character like any other), and two in a quoted field are one.
    A field still open at the end closes there.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    opens: list[np.ndarray] = []
    closes: list[np.ndarray] = []
    inside = escaped = False
    for piece_start, piece_end in _pieces(data):
        piece_opens, piece_closes = [], []
        for position in (
            np.flatnonzero(buf[piece_start:piece_end] == QUOTE) + piece_start
        ).tolist():
            if escaped:
                escaped = False
            elif inside:
                if position + 1 < len(data) and data[position + 1] == QUOTE:
                    escaped = True
                else:
                    inside = False
                    piece_closes.append(position)
            elif position == 0 or data[position - 1] in FIELD_STARTS:
                inside = True
                piece_opens.append(position)
        opens.append(np.array(piece_opens, dtype=np.int64))
        closes.append(np.array(piece_closes, dtype=np.int64))
    if inside:
        closes.append(np.array([len(data)], dtype=np.int64))
    if not opens:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(opens), np.concatenate(closes)


def _pieces(data: bytes) -> Iterator[tuple[int, int]]:
    """Ranges of about PIECE_BYTES that end just after a newline (or at the end)."""
    start = 0
    while start < len(data):
        cut = data.find(b"\n", start + PIECE_BYTES - 1)
        end = len(data) if cut < 0 else cut + 1
        yield start, end
        start = end


def _filled(
    piece: np.ndarray, starts: np.ndarray, ends: np.ndarray, blank: np.ndarray
) -> np.ndarray:
    """For each line of `piece` (offsets in it), whether it holds a byte that is not blank.

    A line that started in an earlier piece is a quoted field's: never blank.
    """
    content = np.zeros(len(piece) + 1, dtype=np.int32)
    np.cumsum(~blank[piece], out=content[1:])
    return (content[ends] > content[np.maximum(starts, 0)]) | (starts < 0)
