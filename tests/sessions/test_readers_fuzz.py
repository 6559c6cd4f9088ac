"""The sessions' and streams' own readers against generated hostile input (hypothesis).

- a stream's text chunk for a numeric input (`_numbers`: whole, or a slice at a time
  past TEXT_SLICE_CHARS): the values of a valid flat array, else a StreamError (1007);
- the `sequence_id` a plain request names (`_named_sequences`, over v2 JSON and
  binary+json bodies): a list, whatever the bytes;
- SAGEMAKER_TRITON_ADDITIONAL_ARGS (`merge_additional_args`): settings, or a
  ConfigError naming the variable.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serve.errors import ConfigError
from serve.payloads.adapter import Invocation
from serve.payloads.body import Body
from serve.payloads.signature import TensorSpec
from serve.sessions.bidirectional import TEXT_SLICE_CHARS, Ending, StreamError, _numbers
from serve.sessions.invocations import _named_sequences
from serve.settings import Settings
from serve.triton.command import FLAGS, merge_additional_args

INT16 = TensorSpec("audio", "INT16", (-1,))
FUZZ = settings(max_examples=200, deadline=None)
BINARY_JSON = "application/vnd.sagemaker-triton.binary+json;json-header-size={}"


def numbers(text: str) -> np.ndarray:
    return asyncio.run(_numbers(INT16, text))


@FUZZ
@given(
    values=st.lists(st.integers(-32768, 32767), max_size=40),
    repeat=st.sampled_from([1, 2000, 9000]),
    spacing=st.sampled_from([",", ", ", " ,\n"]),
)
def test_a_flat_array_reads_the_same_whole_or_in_slices(
    values: list[int], repeat: int, spacing: str
) -> None:
    many = values * repeat
    text = "[" + spacing.join(map(str, many)) + "]"
    assert numbers(text).tolist() == many
    if len(text) > TEXT_SLICE_CHARS:
        assert numbers(f"  {text}\n").tolist() == many


def test_a_number_past_a_float_inputs_range_is_a_1007() -> None:
    half = TensorSpec("x", "FP16", (-1,))
    assert asyncio.run(_numbers(half, "[1, -65504, 65504]")).tolist() == [1, -65504, 65504]
    for text in ("[1, 70000]", "[-1e300]"):
        with pytest.raises(StreamError, match="float16 takes -65504 to 65504"):
            asyncio.run(_numbers(half, text))


@FUZZ
@given(
    text=st.one_of(
        st.text(max_size=200),
        st.text(alphabet='[],0123456789 -.eE"n', max_size=200),
        st.builds(
            lambda head, tail: "[" + "1," * (TEXT_SLICE_CHARS // 2) + head + tail,
            st.sampled_from(
                ["", "1", "[1]", '"a"', "1,", ",", "nan", "1e9", "70000", "2.5", "true", "{}"]
            ),
            st.sampled_from(["]", ",]", "", "]]", "] x"]),
        ),
    )
)
def test_any_text_chunk_is_values_or_a_1007(text: str) -> None:
    try:
        values = numbers(text)
    except StreamError as exc:
        assert exc.ending is Ending.BAD_INPUT and exc.ending.code == 1007
        assert "JSON array of numbers" in exc.message
        return
    # Read values are the JSON's own, unchanged by the type (no wrapping, no truncation).
    assert values.tolist() == np.asarray(json.loads(text)).reshape(-1).tolist()


@FUZZ
@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8)),
            lambda inner: st.one_of(
                st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner)
            ),
            max_leaves=20,
        ).map(lambda document: json.dumps(document).encode()),
    ),
    header_size=st.integers(0, 400),
    binary=st.booleans(),
)
def test_the_sequence_a_request_names_is_read_from_any_body(
    body: bytes, header_size: int, binary: bool
) -> None:
    content_type = BINARY_JSON.format(header_size) if binary else "application/json"
    invocation = Invocation("m", "infer", content_type, "", Body(body))
    assert isinstance(_named_sequences(invocation), list)
    named = json.dumps({"inputs": [], "parameters": {"sequence_id": 7}}).encode()
    plain = Invocation("m", "infer", "application/json", "", Body(named))
    assert _named_sequences(plain) == [7]


@FUZZ
@given(
    words=st.lists(
        st.one_of(
            st.sampled_from(sorted(FLAGS)).map(lambda flag: flag[: max(3, len(flag) - 3)]),
            st.sampled_from(sorted(FLAGS)),
            st.sampled_from(
                [
                    "python,shm-default-byte-size=1",
                    "python,shm-growth-byte-size=x",
                    "tensorflow,version=2",
                    "python,shm-region-prefix-name=x_",
                    "true",
                    "--",
                    "-x",
                ]
            ),
            st.text(max_size=30),
        ),
        max_size=6,
    ),
    joined=st.booleans(),
)
def test_additional_args_are_settings_or_a_named_refusal(words: list[str], joined: bool) -> None:
    args = ["=".join(words[i : i + 2]) for i in range(0, len(words), 2)] if joined else words
    settings_ = Settings.from_environ({})
    settings_ = Settings(**{**settings_.__dict__, "additional_args": tuple(args)})
    try:
        merged = merge_additional_args(settings_)
    except ConfigError as exc:
        assert "SAGEMAKER_TRITON_ADDITIONAL_ARGS" in exc.message
        return
    assert len(merged.additional_args) <= len(args)
    assert merged.shm_default_byte_size > 0 and merged.shm_growth_byte_size > 0
