"""Requests of more records than the model takes at once: split, sent together, joined.

SageMaker's batch transform (SplitType=Line, BatchStrategy=MultiRecord)
sends as many records as fit in MaxPayloadInMB, thousands of them, and
expects one answer line per record, in order (AssembleWith=Line). Triton
refuses more than `max_batch_size` records in one request (more than one,
for a model that does not batch), so the records are split into chunks the
model takes. The chunks go to Triton together, a few per model instance, so
every instance has its next batch queued and none waits on this service
between batches; their outputs are joined back in request order. Records
keep their names (their lines in the body) through the split, so an error
names the record in the body the caller sent.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence

import numpy as np

from serve.errors import PayloadError, PayloadTooLarge
from serve.payloads.limits import PayloadLimits
from serve.payloads.records import Where
from serve.payloads.signature import ModelSignature
from serve.payloads.v2 import Outputs

# Values of an answer written at once (blocks): their Python objects are about a MB, and
# json.dumps or tolist() of one holds the interpreter lock for a few milliseconds.
VALUES_PER_BLOCK = 16_384
# Chunks each model instance may have queued at Triton for one request: one running
# and one waiting is enough to keep it busy; more only holds memory.
CHUNKS_PER_INSTANCE = 2


@dataclasses.dataclass(frozen=True)
class Origin:
    """Where a request's records came from, to name one in an error."""

    # The line of the body each record starts on (CSV, JSON Lines); None: by index.
    lines: Sequence[int] | None = None

    def where(self, index: int) -> str:
        return f"line {self.lines[index]}" if self.lines is not None else f"record {index}"

    def within(self, span: range) -> Where:
        """Names for the records of `span`, indexed from its start."""
        return lambda index: self.where(span.start + index)

    def describe(self, span: range) -> str:
        first, last = span.start, span.stop - 1
        if self.lines is not None:
            return f"lines {self.lines[first]}-{self.lines[last]}"
        return f"records {first}-{last}"


def chunks(count: int, signature: ModelSignature, limits: PayloadLimits) -> list[range]:
    """The spans of records each Triton request takes, in order (one span for none).

    `count` is checked against SERVE_MAX_RECORDS and the spans it makes against
    SERVE_MAX_CHUNKS before any span is made: each chunk costs a request, and its
    answer, in memory until the whole answer is written.
    """
    limits.check_records(count)
    size = signature.max_batch_size if signature.batched else 1
    needed = -(-count // size)
    if needed > limits.max_chunks:
        each = f"max_batch_size {size}" if signature.batched else "it does not batch: one record"
        raise PayloadTooLarge(
            f"the request's {count} records make {needed} requests to model "
            f"{signature.name!r} ({each} each), more than SERVE_MAX_CHUNKS="
            f"{limits.max_chunks}; send at most {limits.max_chunks * size} records per "
            "request to this model, or raise SERVE_MAX_CHUNKS"
        )
    return [range(start, min(start + size, count)) for start in range(0, count, size)] or [range(0)]


def in_flight(signature: ModelSignature) -> int:
    """Chunks of one request at Triton at once: enough to keep every instance busy."""
    return CHUNKS_PER_INSTANCE * max(1, signature.instances)


def join(parts: Sequence[Outputs], signature: ModelSignature) -> tuple[Outputs, ModelSignature]:
    """The chunks' outputs as one answer, and the signature to encode it with.

    A model that batches answers each chunk along its batch axis, so the
    chunks are concatenated; one that does not answers one record per chunk,
    so the records are stacked on a new first axis, and the answer is
    encoded as a batch of them.
    """
    if len(parts) == 1:
        return parts[0], signature
    tensors = {}
    for name in parts[0].tensors:
        arrays = [part.tensors[name] for part in parts]
        inner = {array.shape[1:] if signature.batched else array.shape for array in arrays}
        if len(inner) > 1:
            shapes = ", ".join(str(list(shape)) for shape in sorted(inner)[:3])
            raise PayloadError(
                f"model {signature.name!r} answered the request's chunks of records with "
                f"outputs {name!r} of different shapes ({shapes}); send at most "
                f"{max(1, signature.max_batch_size)} records per request to this model"
            )
        tensors[name] = np.concatenate(arrays) if signature.batched else np.stack(arrays)
    first = parts[0]
    joined = Outputs(first.model_name, first.model_version, tensors, first.datatypes)
    if signature.batched:
        return joined, signature
    return joined, dataclasses.replace(signature, max_batch_size=len(parts))


def blocks(outputs: Outputs, signature: ModelSignature) -> Iterator[Outputs]:
    """The answer's records a block at a time, for encoders that make Python objects of
    the values they write: a block's objects live at once, never the whole answer's."""
    arrays = list(outputs.tensors.values())
    if not signature.batched or not arrays or any(array.ndim == 0 for array in arrays):
        yield outputs
        return
    count = len(arrays[0])
    per_record = max(1, sum(math.prod(array.shape[1:]) for array in arrays))
    size = max(1, VALUES_PER_BLOCK // per_record)
    if count <= size:
        yield outputs
        return
    for start in range(0, count, size):
        tensors = {name: array[start : start + size] for name, array in outputs.tensors.items()}
        yield dataclasses.replace(outputs, tensors=tensors)
