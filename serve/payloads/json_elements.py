"""The records array of a large simple-shape JSON body, parsed a chunk at a time.

orjson parses a document whole: a 6 MB `{"instances": [[42, 7], ...]}` becomes
about 100 MB of Python lists and numbers, in one call that holds the
interpreter's lock for half a second. For a body of OFF_LOOP_BYTES or more
whose records array comes first (`[...]`, `{"instances": [...]}`, or
`{"inputs": [...]}` of rows or values), the array's top-level elements are
found with numpy instead (strings and their escapes honoured), kept as
offsets, and each is parsed with orjson only when the chunk that holds it is
converted (batching.py). What surrounds the array (`"parameters"`, say) is
parsed as usual, with the array left empty.

Anything else, or any doubt about the structure, is left to orjson whole, whose
error names the problem; a record that is not valid JSON is named by its
index when its chunk is read.
"""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import orjson

from serve.errors import PayloadError
from serve.payloads.limits import PayloadLimits
from serve.payloads.lines import PIECE_BYTES, byte_set
from serve.payloads.records import LazyRecords

# A records array first in the body: bare, or the value of "instances" or "inputs".
_HEAD = re.compile(rb'\A\s*(?:\{\s*"(instances|inputs)"\s*:\s*)?\[')
_QUOTE, _BACKSLASH, _COMMA = ord('"'), ord("\\"), ord(",")
_OPENS = byte_set(b"[{")
_CLOSES = byte_set(b"]}")
_WHITESPACE = byte_set(b" \t\r\n")
# Bytes of whitespace before an element stepped over for all elements at once.
_STEPS = 64
# What an element that is a plain value (a record of one value) starts with.
_CONTAINERS_AND_NULL = byte_set(b"[{n")


@dataclasses.dataclass(frozen=True)
class JsonElements(LazyRecords):
    """The elements of a JSON array in `data`, each `data[starts[i]:ends[i]]`."""

    data: bytes
    starts: np.ndarray
    ends: np.ndarray

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def scalars(self) -> bool:
        """True when every element is a string, number or boolean (no array, object, null)."""
        buf = np.frombuffer(self.data, dtype=np.uint8)
        return not bool(np.any(_CONTAINERS_AND_NULL[buf[self.starts]]))

    @property
    def objects(self) -> bool:
        """True when an element is an object."""
        return bool(np.any(np.frombuffer(self.data, dtype=np.uint8)[self.starts] == ord("{")))

    def _read(self, start: int, stop: int) -> list[object]:
        values = []
        for index in range(start, stop):
            try:
                values.append(parse_json(self.data[self.starts[index] : self.ends[index]]))
            except InvalidJson as exc:
                raise PayloadError(exc.describe(f"record {index}")) from None
        return values


class InvalidJson(ValueError):
    """Text that is not JSON; the message says where and why (json's words)."""

    def describe(self, what: str) -> str:
        """The caller's message for `what` (the request body, line 3, ...)."""
        return f"{what} is not valid JSON: {self}"


class TooDeep(InvalidJson):
    """JSON nested past orjson's 1024 levels, where Python's json would recurse until
    RecursionError (100,000 levels were a 500 with a traceback)."""

    def describe(self, what: str) -> str:
        return (
            f"{what} nests deeper than serve reads (1024 levels, orjson's limit); send flatter JSON"
        )


def parse_json(text: bytes) -> object:
    """JSON text's value: orjson's reading (a third of json's time), json's for what
    orjson refuses (NaN, integers past 64 bits) and for the message when neither reads it."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidJson(str(exc)) from None
    except RecursionError:  # past orjson's 1024 levels, json's recursion gives out
        raise TooDeep("nested too deeply") from None


def lazy_document(data: bytes, limits: PayloadLimits) -> object | None:
    """The document with its records array as `JsonElements`; None where orjson should
    read the body whole (another shape, a v2 request, or a structure in doubt)."""
    head = _HEAD.match(data)
    if head is None:
        return None
    opening = head.end() - 1
    found = _elements(data, opening, limits)
    if found is None:
        return None
    elements, closing = found
    key = head.group(1)
    if key is None:
        return elements if not data[closing + 1 :].strip() else None
    if key == b"inputs" and elements.objects:
        return None  # perhaps KServe v2's {"inputs": [{"name": ...}]}
    try:
        wrapper = orjson.loads(data[:opening] + b"[]" + data[closing + 1 :])
    except orjson.JSONDecodeError:
        return None
    name = key.decode()
    if not isinstance(wrapper, dict) or wrapper.get(name) != []:
        return None  # the key again later: JSON's last one counts, and orjson knows it
    wrapper[name] = elements
    return wrapper


def _elements(data: bytes, opening: int, limits: PayloadLimits) -> tuple[JsonElements, int] | None:
    """The top-level elements of the array opening at `opening`, and where it closes;
    None if it does not close before the body ends."""
    buf = np.frombuffer(data, dtype=np.uint8)
    separators: list[np.ndarray] = []
    count = 0
    depth = 0  # brackets open before the piece, the array's own included
    inside = False  # in a string at the piece's start
    backslashes = 0  # the run of backslashes that ends the previous piece
    start = opening
    while start < len(data):
        end = min(start + PIECE_BYTES, len(data))
        piece = buf[start:end]
        quotes = _unescaped_quotes(piece, backslashes)
        in_string = (np.cumsum(quotes, dtype=np.uint8) + inside) & 1
        outside = in_string == 0
        steps = (_OPENS[piece] & outside).astype(np.int32) - (_CLOSES[piece] & outside)
        depths = np.cumsum(steps, dtype=np.int32) + depth
        closed = np.flatnonzero(depths == 0)
        stop = int(closed[0]) if len(closed) else len(piece)
        commas = np.flatnonzero((piece[:stop] == _COMMA) & outside[:stop] & (depths[:stop] == 1))
        count += len(commas)
        limits.check_records(count)
        separators.append(commas + start)
        if len(closed):
            return _split(data, buf, opening, start + stop, np.concatenate(separators))
        depth = int(depths[-1])
        inside = bool(in_string[-1])
        run = len(piece) - 1 - _last_not(piece, _BACKSLASH)
        backslashes = run + backslashes if run == len(piece) else run
        start = end
    return None


def _split(
    data: bytes, buf: np.ndarray, opening: int, closing: int, commas: np.ndarray
) -> tuple[JsonElements, int]:
    """The elements between `opening` and `closing`, split at `commas`, whitespace trimmed."""
    starts = np.concatenate(([opening + 1], commas + 1))
    ends = np.append(commas, closing)
    offsets = np.int32 if len(data) < 2**31 else np.int64
    if len(commas) == 0 and not data[opening + 1 : closing].strip():
        empty = np.zeros(0, dtype=offsets)
        return JsonElements(data, empty, empty), closing
    starts = _trimmed(data, buf, starts, ends)
    return JsonElements(data, starts.astype(offsets), ends.astype(offsets)), closing


def _trimmed(data: bytes, buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Each element's start past the whitespace before it (orjson reads past what follows).

    Whitespace between elements is short: it is stepped over a byte at a time for
    all elements at once; an element still in whitespace after that is done alone.
    """
    starts = starts.copy()
    for _ in range(_STEPS):
        moving = (starts < ends) & _WHITESPACE[buf[np.minimum(starts, len(buf) - 1)]]
        if not moving.any():
            return starts
        starts += moving
    for i in np.flatnonzero((starts < ends) & _WHITESPACE[buf[np.minimum(starts, len(buf) - 1)]]):
        text = data[starts[i] : ends[i]]
        starts[i] += len(text) - len(text.lstrip())
    return starts


def _unescaped_quotes(piece: np.ndarray, backslashes: int) -> np.ndarray:
    """A mask of the quotes in `piece` that no backslash escapes (`backslashes` end the
    previous piece): a quote is escaped by an odd run of backslashes before it."""
    quotes = piece == _QUOTE
    if not backslashes and not np.any(piece == _BACKSLASH):
        return quotes
    positions = np.arange(len(piece))
    last_other = np.maximum.accumulate(np.where(piece != _BACKSLASH, positions, -1))
    at = np.flatnonzero(quotes)
    before = np.where(at > 0, last_other[np.maximum(at - 1, 0)], -1)
    runs = at - 1 - before
    runs = np.where(before < 0, at + backslashes, runs)
    quotes[at[runs % 2 == 1]] = False
    return quotes


def _last_not(piece: np.ndarray, value: int) -> int:
    """The last position in `piece` whose byte is not `value` (-1: none)."""
    others = np.flatnonzero(piece != value)
    return int(others[-1]) if len(others) else -1
