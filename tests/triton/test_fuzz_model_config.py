"""Hostile generated config.pbtxt files for the config reader, under a memory and time budget.

Triton's own schema parses them (serve/triton/model_config.py): whatever a
file holds (fields of the wrong type, nesting, huge numbers and strings, NUL
bytes and bad UTF-8, fragments of a real config cut anywhere), the reader
returns a configuration or refuses with an ArtifactError naming the file,
within its budget (tests/budget.py).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from serve.errors import ArtifactError
from serve.triton.model_config import ModelConfig, read_config
from tests.budget import FUZZ, MEBIBYTE, address_space, memory_budget

REAL = (Path(__file__).parents[2] / "model_repository" / "ncf_food" / "config.pbtxt").read_text()
FRAGMENTS = st.sampled_from(
    [
        'name: "m"',
        "max_batch_size: 8",
        "max_batch_size: -1",
        "max_batch_size: 99999999999999999999999",
        'input [ { name: "x", data_type: TYPE_FP32, dims: [ 4 ] } ]',
        "input [ { dims: [ -1, 9223372036854775807 ] } ]",
        'output { name: "y" data_type: TYPE_NOPE }',
        'parameters { key: "k" value: { string_value: "v" } }',
        'parameters { key: "SERVE_PAYLOAD_OUTPUTS" value: { string_value: "\\x00\\xff" } }',
        "instance_group [ { kind: KIND_GPU, count: 4, gpus: [ 0, 1 ] } ]",
        "dynamic_batching { max_queue_delay_microseconds: 100 }",
        'ensemble_scheduling { step [ { model_name: "../x" model_version: -1 } ] }',
        "sequence_batching { }",
        "model_transaction_policy { decoupled: true }",
        "{" * 2000,
        "input [" * 500,
        "optimization { " * 200,
        '"' + "a" * 5000,
        "# a comment\n",
        "[type.googleapis.com/x] { }",
        "\0",
        "\ud800",
        "max_batch_size: 1e9999",
    ]
)
TEXTS = st.one_of(
    st.lists(FRAGMENTS, max_size=8).map(" ".join),
    st.builds(lambda at: REAL[: int(at * len(REAL))], st.floats(0, 1)),
    st.text(max_size=300),
)
FILES = st.one_of(
    TEXTS.map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.binary(max_size=300),
)


@pytest.fixture(autouse=True, scope="module")
def bounded_address_space() -> Iterator[None]:
    with address_space():
        yield


@FUZZ
@given(content=FILES)
def test_a_config_is_read_or_refused_naming_its_file(content: bytes) -> None:
    folder = Path(tempfile.mkdtemp(prefix="fuzz-config-"))
    try:
        path = folder / "config.pbtxt"
        path.write_bytes(content)
        with memory_budget(64 * len(content) + 4 * MEBIBYTE):
            try:
                config = read_config(path)
            except ArtifactError as exc:
                assert str(path) in exc.message
                return
        assert isinstance(config, ModelConfig)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
