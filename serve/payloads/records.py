"""Records to input tensors: the one mapping every payload codec shares.

A codec turns a body into records, one per row the caller means: a CSV
line, an element of `{"instances": [...]}`, a JSON line. A record is

- an object naming inputs: `{"user_id": 42, "item_id": 7}`;
- a list of values, filling the record inputs in order, each taking as many
  values as its dims hold (`[42, 7]` for two inputs of dims [1]); a model
  with one record input takes the whole list, nested as its dims say;
- one value (a number, a string, bytes) for a model with one record input.

Records become one batch (`[N, *dims]`) on a model that batches; a model
with `max_batch_size: 0` takes exactly one record as its tensor (a request
of more records is split before it gets here: batching.py). Every mismatch
is a `PayloadError` that names the input, what it expects, and the record:
by its line in the body for CSV and JSON Lines (`where`), else by its index.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import overload

import numpy as np

from serve.errors import PayloadError
from serve.payloads.signature import ModelSignature, TensorSpec

Tensors = dict[str, np.ndarray]
SCALARS = (str, bytes, int, float, bool, np.generic)
# Names the record at an index of the records given, in errors ("line 12", "record 3").
Where = Callable[[int], str]


def by_index(index: int) -> str:
    return f"record {index}"


class LazyRecords(Sequence[object]):
    """Records read from the body only when a chunk asks for them (batching.py), so a
    body never exists as Python objects all at once; subclasses read a span (`_read`)."""

    def _read(self, start: int, stop: int) -> list[object]:
        raise NotImplementedError

    @overload
    def __getitem__(self, index: int) -> object: ...

    @overload
    def __getitem__(self, index: slice) -> list[object]: ...

    def __getitem__(self, index: int | slice) -> object:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                return self._read(start, max(start, stop))
            return [self._read(i, i + 1)[0] for i in range(start, stop, step)]
        position = range(len(self))[index]
        return self._read(position, position + 1)[0]

    def __iter__(self) -> Iterator[object]:
        for start in range(0, len(self), READ_AT_ONCE):
            yield from self._read(start, min(start + READ_AT_ONCE, len(self)))


# Records a LazyRecords reads at once when all of them are asked for.
READ_AT_ONCE = 4096


def tensors_from_records(
    records: Sequence[object], signature: ModelSignature, where: Where = by_index
) -> Tensors:
    """Input tensors for a batch of records, checked against the model's signature."""
    _check_count(len(records), signature)
    table = _numeric_table(records, signature)
    if table is not None:
        return table
    columns: dict[str, list[object]] = {}
    holders: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        for part, value in _split(record, where(index), signature):
            columns.setdefault(part.name, []).append(value)
            holders.setdefault(part.name, []).append(index)
    tensors: Tensors = {}
    for name, values in columns.items():
        spec = signature.input(name)
        assert spec is not None  # _split only yields the model's inputs
        if len(values) != len(records):
            lacking = next(i for i, held in enumerate([*holders[name], -1]) if i != held)
            raise PayloadError(
                f"input {name!r} is given in {len(values)} of {len(records)} records, not in "
                f"{where(lacking)}; give an optional input in every record or in none"
            )
        arrays = [as_array(spec, value, where(i)) for i, value in enumerate(values)]
        tensors[name] = _batch(spec, arrays, signature, where)
    return tensors


def parameter_inputs(
    parameters: Mapping[str, object], signature: ModelSignature, records: int
) -> tuple[Tensors, dict[str, object]]:
    """Split request parameters into inputs (a key naming an input) and the rest.

    `{"inputs": "text", "parameters": {"max_tokens": 20}}` fills a model's
    optional `max_tokens` input with 20 in every record; other keys stay
    request parameters, which Triton hands to the model.
    """
    tensors: Tensors = {}
    rest: dict[str, object] = {}
    for key, value in parameters.items():
        spec = signature.input(key)
        if spec is None:
            rest[key] = value
            continue
        array = as_array(spec, value, f"parameter {key!r}")
        tensors[key] = _batch(spec, [array] * records, signature)
    return tensors, rest


def _check_count(count: int, signature: ModelSignature) -> None:
    if count == 0:
        raise PayloadError("the request holds no records; send at least one")
    if not signature.batched and count != 1:
        raise PayloadError(
            f"model {signature.name!r} does not batch (max_batch_size 0): send one record "
            f"per request, not {count}"
        )
    if signature.batched and count > signature.max_batch_size:
        raise PayloadError(
            f"model {signature.name!r} takes at most {signature.max_batch_size} records per "
            f"request (max_batch_size); this one holds {count}"
        )


def _numeric_table(records: Sequence[object], signature: ModelSignature) -> Tensors | None:
    """Fast path: rows of plain values for fixed-size, non-BYTES inputs (CSV, number rows,
    a .npy body's array, whose rows are the records).

    None when the records are not such a table, or when a value does not fit:
    the general path then finds the record that holds it, to name it.
    """
    specs = signature.record_inputs
    sizes = [spec.fixed_size for spec in specs]
    if not specs or any(s is None or spec.is_bytes for s, spec in zip(sizes, specs, strict=True)):
        return None
    if not signature.batched:
        return None
    if isinstance(records, np.ndarray):
        if records.ndim < 1 or records.dtype.kind not in "biuf":
            return None
        table = records.reshape(len(records), -1)
    else:
        if not all(type(r) is list for r in records):
            return None
        if len(specs) == 1 and (
            sizes[0] != 1 or any(r and type(r[0]) is list for r in records if isinstance(r, list))
        ):
            return None  # one input takes nested records whole: the general path
        try:
            table = np.asarray(records)
        except ValueError:
            return None
    total = sum(s for s in sizes if s is not None)
    if table.ndim != 2 or table.shape[1] != total or table.dtype.kind not in "biufU":
        return None
    tensors: Tensors = {}
    start = 0
    for spec, size in zip(specs, sizes, strict=True):
        assert size is not None
        column = table[:, start : start + size]
        start += size
        try:
            converted = _convert(spec, column, "a record")
        except PayloadError:
            return None
        tensors[spec.name] = converted.reshape((len(records), *spec.dims))
    return tensors


def _split(
    record: object, where: str, signature: ModelSignature
) -> list[tuple[TensorSpec, object]]:
    specs = signature.record_inputs
    if isinstance(record, Mapping):
        return _named(record, where, signature)
    if len(specs) == 1:
        return [(specs[0], record)]
    if isinstance(record, SCALARS) or record is None:
        raise PayloadError(
            f"{where} is a single value, but model {signature.name!r} takes several "
            f"inputs: {signature.describe_inputs()}; send a list of values or an object "
            "naming the inputs"
        )
    values = _flatten(record, where)
    sizes = [spec.fixed_size for spec in specs]
    variable = [spec.name for spec, size in zip(specs, sizes, strict=True) if size is None]
    if variable:
        raise PayloadError(
            f"input {variable[0]!r} of model {signature.name!r} has variable dims, so a list "
            "of values cannot be split among the inputs; send an object naming each input"
        )
    total = sum(s for s in sizes if s is not None)
    if len(values) != total:
        needs = " + ".join(f"{spec.name} {spec.fixed_size}" for spec in specs)
        raise PayloadError(
            f"{where} holds {len(values)} values; model {signature.name!r} takes "
            f"{total} per record ({needs}): {signature.describe_inputs()}"
        )
    split: list[tuple[TensorSpec, object]] = []
    start = 0
    for spec, size in zip(specs, sizes, strict=True):
        assert size is not None
        split.append((spec, values[start : start + size]))
        start += size
    return split


def _named(
    record: Mapping[object, object], where: str, signature: ModelSignature
) -> list[tuple[TensorSpec, object]]:
    split = []
    for key, value in record.items():
        spec = signature.input(key) if isinstance(key, str) else None
        if spec is None:
            known = ", ".join(s.describe() for s in signature.inputs)
            raise PayloadError(
                f"{where} names {key!r}, which is not an input of model "
                f"{signature.name!r}; its inputs are: {known}"
            )
        split.append((spec, value))
    missing = [s for s in signature.inputs if not s.optional and s.name not in record]
    if missing:
        raise PayloadError(
            f"{where} lacks input {missing[0].describe()} of model {signature.name!r}"
        )
    return split


def _flatten(record: object, where: str) -> list[object]:
    if isinstance(record, np.ndarray):
        return list(record.reshape(-1))
    if not isinstance(record, Sequence):
        raise PayloadError(f"{where} is a {type(record).__name__}; send a list or object")
    flat: list[object] = []
    for value in record:
        if isinstance(value, Sequence) and not isinstance(value, str | bytes):
            flat.extend(_flatten(value, where))
        else:
            flat.append(value)
    return flat


def as_array(spec: TensorSpec, value: object, where: str) -> np.ndarray:
    """One record's value for one input, converted to its type and fitted to its dims."""
    if spec.is_bytes:
        array = _bytes_array(spec, value, where)
    else:
        if isinstance(value, Mapping) or value is None:
            raise PayloadError(
                f"input {spec.describe()} expects numbers; {where} gives {_show(value)}"
            )
        try:
            raw = np.asarray(value)
        except ValueError as exc:
            raise PayloadError(
                f"input {spec.describe()}: {where} is not a rectangular array of numbers"
            ) from exc
        array = _convert(spec, raw, where)
    return _fit(spec, array, where)


def _bytes_array(spec: TensorSpec, value: object, where: str) -> np.ndarray:
    try:
        raw = np.asarray(value, dtype=object)
    except ValueError as exc:
        raise PayloadError(f"input {spec.describe()}: {where} is not a rectangular array") from exc
    flat = raw.reshape(-1)
    out = np.empty(flat.shape, dtype=object)
    for i, item in enumerate(flat):
        if isinstance(item, bytes):
            out[i] = item
        elif isinstance(item, str):
            out[i] = item.encode("utf-8", errors="surrogatepass")
        elif isinstance(item, int | float | bool | np.generic):
            out[i] = str(item).encode()
        else:
            raise PayloadError(
                f"input {spec.describe()} expects strings or bytes; {where} gives {_show(item)}"
            )
    return out.reshape(raw.shape)


def _convert(spec: TensorSpec, raw: np.ndarray, where: str) -> np.ndarray:
    """Numbers (or numeric text, from CSV) to the input's type, refusing lossy conversions."""
    target = spec.dtype
    if raw.dtype == target:
        return raw
    if raw.dtype.kind == "O":
        raise PayloadError(
            f"input {spec.describe()} expects numbers; {where} gives a mixed or ragged array"
        )
    if raw.dtype.kind in "US":
        return _parse_text(spec, raw, where)
    if raw.dtype.kind not in "biuf":
        raise PayloadError(f"input {spec.describe()} expects numbers; {where} gives {raw.dtype}")
    if target.kind in "iu":
        if raw.dtype.kind == "f":
            flat = raw.reshape(-1)
            fractional = flat[~(np.isfinite(flat) & (flat == np.round(flat)))]
            if fractional.size:
                raise PayloadError(
                    f"input {spec.describe()} expects whole numbers; {where} gives "
                    f"{_show(fractional[0])}"
                )
        info = _integer_limits(target)
        if raw.size and (raw.min() < info.min or raw.max() > info.max):
            raise PayloadError(
                f"input {spec.describe()} takes values in {info.min}..{info.max}; "
                f"{where} gives {_show(raw.min() if raw.min() < info.min else raw.max())}"
            )
    if target.kind == "b" and raw.dtype.kind != "b" and not np.all((raw == 0) | (raw == 1)):
        raise PayloadError(
            f"input {spec.describe()} expects true/false (or 1/0); {where} gives other numbers"
        )
    if target.kind != "f":
        return raw.astype(target)
    converted, overflowed = cast_float(raw, target)
    if overflowed is not None:
        raise PayloadError(
            f"input {spec.describe()} takes values from {float_range(target)}; "
            f"{where} gives {_show(overflowed)}"
        )
    return converted


def cast_float(values: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, object | None]:
    """`values` as the float type `dtype`, and the first finite one that became infinite
    (70000 as FP16), if any: numpy makes it infinity with no more than a warning."""
    with np.errstate(over="ignore", invalid="ignore"):
        converted = values.astype(dtype)
    overflowed = np.isinf(converted) & np.isfinite(values)
    return converted, values[overflowed][0] if overflowed.any() else None


def float_range(dtype: np.dtype) -> str:
    """The finite values of float type `dtype`, as an error message names them."""
    largest = float(np.finfo(dtype).max)
    return f"{-largest:g} to {largest:g}"


@functools.cache
def _integer_limits(dtype: np.dtype) -> np.iinfo:
    return np.iinfo(dtype)


def _parse_text(spec: TensorSpec, raw: np.ndarray, where: str) -> np.ndarray:
    text = np.char.strip(raw.astype(str))
    if spec.dtype.kind == "b":
        lowered = np.char.lower(text)
        known = np.isin(lowered, ["true", "false", "1", "0"])
        if not np.all(known):
            raise PayloadError(
                f"input {spec.describe()} expects true/false; {where} gives "
                f"{_show(text[~known][0])}"
            )
        return np.isin(lowered, ["true", "1"])
    try:
        parsed = text.astype(np.float64 if spec.dtype.kind == "f" else np.int64)
    except (ValueError, OverflowError):
        for item in text.reshape(-1):
            try:
                (float if spec.dtype.kind == "f" else int)(item)
            except ValueError:
                raise PayloadError(
                    f"input {spec.describe()} expects "
                    f"{'numbers' if spec.dtype.kind == 'f' else 'whole numbers'}; "
                    f"{where} gives {_show(str(item))}"
                ) from None
        raise PayloadError(
            f"input {spec.describe()}: {where} holds a number out of range"
        ) from None
    return _convert(spec, parsed, where)


def _fit(spec: TensorSpec, array: np.ndarray, where: str) -> np.ndarray:
    """The value shaped as the input's dims: as given, or reshaped when only the nesting differs."""
    dims = spec.dims
    if len(array.shape) == len(dims) and all(
        d < 0 or d == s for d, s in zip(dims, array.shape, strict=True)
    ):
        return array
    size = spec.fixed_size
    if size is not None and array.size == size:
        return array.reshape(dims)
    if size is None and len(dims) == 1:
        return array.reshape(-1)
    shape = "a single value" if array.ndim == 0 else f"shape {list(array.shape)}"
    raise PayloadError(
        f"input {spec.describe()} expects {_expected(spec)} per record; {where} gives {shape}"
    )


def _expected(spec: TensorSpec) -> str:
    size = spec.fixed_size
    if size == 1:
        return "one value"
    if size is not None:
        return f"{size} values (dims {list(spec.dims)})"
    return f"values of dims {list(spec.dims)} (-1: any length)"


def _batch(
    spec: TensorSpec, arrays: list[np.ndarray], signature: ModelSignature, where: Where = by_index
) -> np.ndarray:
    if not signature.batched:
        return arrays[0]
    first = arrays[0].shape
    odd = next((i for i, array in enumerate(arrays) if array.shape != first), None)
    if odd is not None:
        raise PayloadError(
            f"input {spec.describe()}: {where(odd)} gives shape {list(arrays[odd].shape)}, "
            f"{where(0)} gives {list(first)}; a batch needs one shape"
        )
    if spec.is_bytes:
        stacked = np.empty((len(arrays), *arrays[0].shape), dtype=object)
        for i, array in enumerate(arrays):
            stacked[i] = array
        return stacked
    return np.stack(arrays)


def record_count(tensors: Tensors, signature: ModelSignature) -> int:
    if not signature.batched or not tensors:
        return 1
    return len(next(iter(tensors.values())))


def _show(value: object) -> str:
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= 60 else text[:57] + "..."
