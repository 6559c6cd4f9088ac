"""Every serializer and deserializer the SageMaker Python SDK ships, as a notebook uses them.

Run with the SDK's Python (.venv-sdk): `python serializers_client.py ENDPOINT FILE`.
Each case is a `Predictor` with one of the SDK's serializers and
deserializers calling ENDPOINT (the stand-in passes the call to a real
`serve`); prints one JSON object: for each case, what the deserializer
returned (made JSON-able) or the error SageMaker raised (ModelError with
the container's status and body). FILE is a file DataSerializer reads.
"""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pandas as pd
import sagemaker
import torch
from botocore.exceptions import ClientError
from sagemaker.deserializers import (
    BytesDeserializer,
    CSVDeserializer,
    JSONDeserializer,
    JSONLinesDeserializer,
    NumpyDeserializer,
    PandasDeserializer,
    RecordDeserializer,
    StreamDeserializer,
    StringDeserializer,
    TorchTensorDeserializer,
)
from sagemaker.predictor import Predictor
from sagemaker.serializers import (
    CSVSerializer,
    DataSerializer,
    IdentitySerializer,
    JSONLinesSerializer,
    JSONSerializer,
    LibSVMSerializer,
    NumpySerializer,
    RecordSerializer,
    SparseMatrixSerializer,
    StringSerializer,
    TorchTensorSerializer,
)

PAIRS = [[42, 7], [42, 19]]
V2 = {
    "inputs": [
        {"name": "user_id", "shape": [2, 1], "datatype": "INT64", "data": [42, 42]},
        {"name": "item_id", "shape": [2, 1], "datatype": "INT64", "data": [7, 19]},
    ]
}
# Bytes that are not UTF-8, as an image's are.
RAW = b"\x89PNG\r\n\x1a\n\xff\x00raw"
ECHO = "target_model=echo"


def sparse_npz() -> bytes:
    """What SparseMatrixSerializer sends (scipy.sparse.save_npz of a CSR matrix), without SciPy."""
    buffer = io.BytesIO()
    np.savez(
        buffer,
        indices=np.array([0, 1, 0, 1]),
        indptr=np.array([0, 2, 4]),
        format=np.array(b"csr"),
        shape=np.array([2, 2]),
        data=np.array([42, 7, 42, 19]),
    )
    return buffer.getvalue()


def cases(data_file: str) -> dict[str, tuple[object, object, object, str | None]]:
    """name: (serializer, deserializer, data, custom attributes)."""
    return {
        "csv-rows": (CSVSerializer(), CSVDeserializer(), PAIRS, None),
        "csv-numpy": (CSVSerializer(), CSVDeserializer(), np.array(PAIRS), None),
        "csv-dataframe": (
            CSVSerializer(),
            PandasDeserializer(accept="application/json"),
            pd.DataFrame(PAIRS, columns=["user_id", "item_id"]),
            None,
        ),
        "json-instances": (JSONSerializer(), JSONDeserializer(), {"instances": PAIRS}, None),
        "json-numpy": (JSONSerializer(), JSONDeserializer(), np.array(PAIRS), None),
        "json-v2": (JSONSerializer(), JSONDeserializer(), V2, None),
        "npy": (NumpySerializer(), NumpyDeserializer(), np.array(PAIRS, dtype=np.int64), None),
        "npy-list": (NumpySerializer(dtype="int64"), NumpyDeserializer(), PAIRS, None),
        "jsonlines": (
            JSONLinesSerializer(),
            JSONLinesDeserializer(),
            [{"user_id": u, "item_id": i} for u, i in PAIRS],
            None,
        ),
        "torch": (TorchTensorSerializer(), TorchTensorDeserializer(), torch.tensor(PAIRS), None),
        "stream": (JSONSerializer(), StreamDeserializer(), PAIRS, None),
        "identity-bytes": (IdentitySerializer(), BytesDeserializer(), RAW, ECHO),
        "identity-image": (IdentitySerializer("image/png"), JSONDeserializer(), RAW, ECHO),
        "string": (StringSerializer(), StringDeserializer(), "hello", ECHO),
        "string-csv-answer": (StringSerializer(), CSVDeserializer(), "hello", ECHO),
        "data-file": (DataSerializer(), JSONDeserializer(), data_file, ECHO),
        # What the endpoint does not read: the error names what it does.
        "sparse-npz": (
            IdentitySerializer(SparseMatrixSerializer().CONTENT_TYPE),
            BytesDeserializer(),
            sparse_npz(),
            None,
        ),
        "libsvm": (LibSVMSerializer(), BytesDeserializer(), "0 1:42 2:7\n", None),
        "recordio": (RecordSerializer(), BytesDeserializer(), np.array(PAIRS, float), None),
        "recordio-answer": (CSVSerializer(), RecordDeserializer(), PAIRS, None),
    }


def plain(value: object) -> object:
    """The deserializer's result as JSON values, with its type's name."""
    if isinstance(value, tuple) and len(value) == 2 and hasattr(value[0], "read"):
        stream, content_type = value
        return {"type": "stream", "value": stream.read().decode(), "content_type": content_type}
    if isinstance(value, torch.Tensor):
        return {"type": "Tensor", "value": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.ndarray):
        return {"type": "ndarray", "value": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, pd.DataFrame):
        return {"type": "DataFrame", "value": value.to_dict(orient="list")}
    if isinstance(value, bytes):
        return {"type": "bytes", "value": value.decode("utf-8", "replace")}
    return {"type": type(value).__name__, "value": value}


def main(endpoint: str, data_file: str) -> None:
    session = sagemaker.Session()
    results: dict[str, object] = {}
    for name, (serializer, deserializer, data, attributes) in cases(data_file).items():
        predictor = Predictor(
            endpoint, sagemaker_session=session, serializer=serializer, deserializer=deserializer
        )
        try:
            value = predictor.predict(data, custom_attributes=attributes)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            results[name] = {
                "error": error.get("Code"),
                "status": exc.response.get("OriginalStatusCode"),
                "message": exc.response.get("OriginalMessage"),
                "sent": {"content_type": serializer.CONTENT_TYPE, "accept": predictor.accept},
            }
            continue
        results[name] = {
            **plain(value),  # type: ignore[dict-item]
            "sent": {"content_type": serializer.CONTENT_TYPE, "accept": predictor.accept},
        }
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
