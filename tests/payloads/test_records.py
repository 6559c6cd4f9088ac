"""Records to tensors against model signatures, without a server."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

from serve.errors import PayloadError
from serve.payloads.codecs import csv_codec, json_codec
from serve.payloads.records import tensors_from_records
from serve.payloads.signature import ModelSignature
from serve.triton.model_config import ModelConfig


def signature(text: str) -> ModelSignature:
    return ModelSignature.from_config(text_format.Parse(text, ModelConfig()))


NCF = signature(
    """
    name: "ncf" max_batch_size: 8
    input [ { name: "user_id", data_type: TYPE_INT64, dims: [ 1 ] },
            { name: "item_id", data_type: TYPE_INT64, dims: [ 1 ] } ]
    output [ { name: "score", data_type: TYPE_FP32, dims: [ 1 ] } ]
    """
)
TEXT = signature(
    """
    name: "text" max_batch_size: 0
    input [ { name: "prompt", data_type: TYPE_STRING, dims: [ 1 ] },
            { name: "max_tokens", data_type: TYPE_INT32, dims: [ 1 ], optional: true } ]
    output [ { name: "text", data_type: TYPE_STRING, dims: [ -1 ] } ]
    """
)
IMAGE = signature(
    """
    name: "image" max_batch_size: 4
    input [ { name: "pixels", data_type: TYPE_UINT8, dims: [ 2, 2 ] } ]
    output [ { name: "label", data_type: TYPE_INT32, dims: [ 1 ] } ]
    """
)

HALF = signature(
    """
    name: "half" max_batch_size: 4
    input [ { name: "x", data_type: TYPE_FP16, dims: [ 1 ] } ]
    output [ { name: "y", data_type: TYPE_FP16, dims: [ 1 ] } ]
    """
)


def tensors(document: object, model: ModelSignature) -> dict[str, list]:
    records, _ = json_codec.decode(document, model)
    return {k: v.tolist() for k, v in tensors_from_records(records, model).items()}


def test_rows_objects_and_columns_give_the_same_batch() -> None:
    expected = {"user_id": [[1], [3]], "item_id": [[2], [4]]}
    assert tensors({"inputs": [[1, 2], [3, 4]]}, NCF) == expected
    assert tensors({"instances": [{"item_id": 2, "user_id": 1}, [3, 4]]}, NCF) == expected
    assert tensors({"inputs": {"user_id": [1, 3], "item_id": [2, 4]}}, NCF) == expected
    assert tensors([[1, 2], [3, 4]], NCF) == expected
    records, lines = csv_codec.decode(b"user_id,item_id\n1,2\n3,4\n", NCF)
    assert list(lines) == [2, 3]
    assert {k: v.tolist() for k, v in tensors_from_records(records, NCF).items()} == expected


def test_nested_values_fill_multi_dim_inputs() -> None:
    assert tensors([[[1, 2], [3, 4]]], IMAGE) == {"pixels": [[[1, 2], [3, 4]]]}
    assert tensors({"instances": [[1, 2, 3, 4]]}, IMAGE) == {"pixels": [[[1, 2], [3, 4]]]}
    batch = tensors_from_records([[[1, 2], [3, 4]]], IMAGE)["pixels"]
    assert batch.dtype == np.uint8 and batch.shape == (1, 2, 2)


def test_a_text_model_that_does_not_batch_takes_one_record() -> None:
    assert tensors({"inputs": "hi"}, TEXT) == {"prompt": [b"hi"]}
    with pytest.raises(PayloadError, match="does not batch"):
        tensors({"inputs": ["a", "b"]}, TEXT)


@pytest.mark.parametrize(
    ("document", "model", "message"),
    [
        ([[1, 2, 3]], NCF, "holds 3 values"),
        ([[1]], NCF, "holds 1 values"),
        ({"instances": [{"user_id": 1}]}, NCF, "lacks input item_id"),
        ([[1.5, 2]], NCF, "whole numbers"),
        ([[1, "x"]], NCF, "'x'"),
        ([[[1, 2], [3]]], IMAGE, "pixels"),
        ([[300, 0, 0, 0]], IMAGE, "0..255"),
        ([[70000]], HALF, "-65504 to 65504.*70000"),
        ([[1.5e300]], HALF, "65504.*1.5e\\+300"),
        ([[1, 2]] * 9, NCF, "at most 8 records"),
        ({"instances": []}, NCF, "empty"),
        ({"inputs": [[1, 2]], "extra": 1}, NCF, "'extra'"),
        ({"parameters": {}}, NCF, "no inputs or instances"),
        ("text", NCF, "a JSON str"),
    ],
)
def test_payloads_that_do_not_fit_name_the_problem(
    document: object, model: ModelSignature, message: str
) -> None:
    with pytest.raises(PayloadError, match=message):
        tensors(document, model)


def test_pinned_inputs_and_outputs() -> None:
    pinned = signature(
        """
        name: "pinned" max_batch_size: 2
        input [ { name: "a", data_type: TYPE_FP32, dims: [ 1 ] },
                { name: "b", data_type: TYPE_FP32, dims: [ 1 ] } ]
        output [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] },
                 { name: "y", data_type: TYPE_FP32, dims: [ 1 ] } ]
        parameters { key: "SERVE_PAYLOAD_INPUTS" value: { string_value: "b, a" } }
        parameters { key: "SERVE_PAYLOAD_OUTPUTS" value: { string_value: "y" } }
        """
    )
    assert tensors([[1, 2]], pinned) == {"b": [[1.0]], "a": [[2.0]]}
    assert [spec.name for spec in pinned.answer_outputs] == ["y"]
