"""The schemas' readers and the chat templates, without a server: hostile input first.

Every body a caller can send is read into a request or refused with a
PayloadError (a 400 naming the field); nothing else escapes, and the body's
bytes read as the adapter reads them stay within a memory and time budget
(tests/budget.py). Templates render
in jinja2's sandbox: a template cannot reach Python's internals, and message
text is data, never template code.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serve.errors import ConfigError, ModelMisconfigured, PayloadError
from serve.payloads.codecs import json_codec
from serve.payloads.limits import PayloadLimits
from serve.payloads.llm.mappings import MAPPINGS, VLLM
from serve.payloads.llm.request import Generation, Sampling
from serve.payloads.llm.schemas import SCHEMAS, Context
from serve.payloads.llm.templates import ChatTemplate, find_chat_template
from serve.payloads.signature import ModelSignature, TensorSpec
from serve.settings import TEXT_GENERATION_INPUTS
from tests.budget import FUZZ, MEBIBYTE, memory_budget
from tests.payloads.llm.conftest import CHAT_TEMPLATE, rendered, write_tokenizer_config

TEMPLATE = ChatTemplate.compile(CHAT_TEMPLATE, "test", {"bos_token": "<s>"})
CONTEXT = Context("model", TEMPLATE, 16)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = [
    "messages",
    "prompt",
    "inputs",
    "parameters",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "seed",
    "n",
    "stream",
    "stream_options",
    "logprobs",
    "top_logprobs",
    "echo",
    "tools",
    "role",
    "content",
    "max_new_tokens",
    "do_sample",
    "details",
    "return_full_text",
    "best_of",
]
bodies = (
    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), json_values, max_size=8)
    | st.fixed_dictionaries(
        {
            "messages": st.lists(
                st.dictionaries(st.sampled_from(["role", "content", "name"]), json_values)
                | st.fixed_dictionaries(
                    {
                        "role": st.sampled_from(["user", "system", "assistant"]),
                        "content": json_values,
                    }
                ),
                max_size=4,
            )
        },
        optional={k: json_values for k in FIELDS[3:]},
    )
    | st.fixed_dictionaries(
        {"inputs": st.text(max_size=30)},
        optional={
            "parameters": st.dictionaries(st.sampled_from(FIELDS), json_values),
            "stream": json_values,
        },
    )
)


@settings(max_examples=400, deadline=None)
@given(bodies)
def test_any_body_is_read_or_refused_with_a_payload_error(body: dict[str, object]) -> None:
    try:
        schema = SCHEMAS.for_body(body, "model")
        request = schema.read(body, CONTEXT)
    except PayloadError as exc:
        assert exc.status == 400 and exc.message
        return
    sampling = request.generation.sampling
    assert 1 <= sampling.max_tokens < 2**31 and 1 <= request.generation.n <= 16
    assert isinstance(request.generation.prompt, str)
    # The mapping takes whatever a schema let through.
    VLLM.build(request.generation, SIGNATURE)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=40), min_size=1, max_size=5))
def test_message_text_is_data_not_template_code(contents: list[str]) -> None:
    messages = [{"role": "user", "content": c} for c in contents]
    assert TEMPLATE.render(messages) == rendered(messages)


def test_templates_cannot_reach_pythons_internals() -> None:
    escape = ChatTemplate.compile(
        "{{ messages.__class__.__mro__[1].__subclasses__() }}", "hostile", {}
    )
    with pytest.raises(ModelMisconfigured, match=r"SecurityError|UndefinedError"):
        escape.render([{"role": "user", "content": "x"}])
    mutate = ChatTemplate.compile("{{ messages.append(1) }}", "hostile", {})
    with pytest.raises(ModelMisconfigured):
        mutate.render([{"role": "user", "content": "x"}])


def test_templates_are_found_as_models_ship_them(tmp_path: Path) -> None:
    model = tmp_path / "model"
    (model / "1").mkdir(parents=True)
    assert find_chat_template(model) is None
    write_tokenizer_config(model / "1" / "deep" / "tokenizer", "deep")
    write_tokenizer_config(model / "1" / "tok", "{{ bos_token }}shallow")
    (model / "1" / "packages" / "x").mkdir(parents=True)
    write_tokenizer_config(model / "1" / "packages", "ignored")
    found = find_chat_template(model)
    assert found is not None and found.render([]) == "<s>shallow"
    (model / "1" / "tok" / "chat_template.jinja").write_text("beside {{ eos_token }}")
    found = find_chat_template(model)
    assert found is not None and found.render([]) == "beside </s>"
    (model / "named.jinja").write_text("named")
    named = find_chat_template(model, Path("named.jinja"))
    assert named is not None and named.render([]) == "named"
    listed = tmp_path / "listed.json"
    listed.write_text(
        json.dumps(
            {
                "chat_template": [
                    {"name": "tool_use", "template": "t"},
                    {"name": "default", "template": "d"},
                ]
            }
        )
    )
    named = find_chat_template(model, listed)
    assert named is not None and named.render([]) == "d"
    with pytest.raises(ConfigError, match="is not a file"):
        find_chat_template(model, Path("missing.jinja"))
    (model / "broken.jinja").write_text("{% for %}")
    with pytest.raises(ConfigError, match="does not compile"):
        find_chat_template(model, Path("broken.jinja"))


SIGNATURE = ModelSignature(
    name="model",
    max_batch_size=0,
    inputs=(
        TensorSpec("text_input", "BYTES", (1,)),
        TensorSpec("sampling_parameters", "BYTES", (1,), optional=True),
    ),
    outputs=(TensorSpec("text_output", "BYTES", (-1,)),),
    decoupled=True,
    record_inputs=(TensorSpec("text_input", "BYTES", (1,)),),
    answer_outputs=(TensorSpec("text_output", "BYTES", (-1,)),),
)


def test_the_settings_name_every_mapping() -> None:
    assert MAPPINGS.names() == TEXT_GENERATION_INPUTS


def test_a_mapping_refuses_what_the_model_cannot_take() -> None:
    generation = Generation("p", Sampling(max_tokens=4, seed=1))
    ensemble = ModelSignature(
        name="ensemble",
        max_batch_size=4,
        inputs=(TensorSpec("text_input", "BYTES", (-1,)), TensorSpec("max_tokens", "INT32", (-1,))),
        outputs=(TensorSpec("text_output", "BYTES", (-1,)),),
        decoupled=False,
        record_inputs=(),
        answer_outputs=(),
    )
    mapping = MAPPINGS.choose(ensemble)
    assert mapping.name == "tensorrt_llm"
    with pytest.raises(PayloadError, match=r"takes no input .random_seed.*seed"):
        mapping.build(generation, ensemble)
    with pytest.raises(ModelMisconfigured, match="lacks input max_tokens"):
        MAPPINGS.choose(SIGNATURE, "tensorrt_llm")
    assert MAPPINGS.choose(SIGNATURE).name == "vllm"


def test_without_the_models_finish_reason_its_count_tells_it() -> None:
    """A stream that reports no usage still needs the finish reason: from a model without
    return_finish_reason, its count of tokens (against max_tokens) is asked for instead."""
    flags = ("return_finish_reason", "return_num_input_tokens", "return_num_output_tokens")
    specs = tuple(TensorSpec(f, "BOOL", (1,), optional=True) for f in flags)
    full = dataclasses.replace(SIGNATURE, inputs=SIGNATURE.inputs + specs)
    lacking = dataclasses.replace(SIGNATURE, inputs=SIGNATURE.inputs + specs[1:])
    stream = Generation("p", Sampling(max_tokens=4), stream=True, counts=False)
    asked = {
        name: sorted(f for f in flags if f in VLLM.build(stream, signature)[0])
        for name, signature in (("full", full), ("lacking", lacking))
    }
    assert asked == {"full": ["return_finish_reason"], "lacking": ["return_num_output_tokens"]}
    quiet = dataclasses.replace(stream, finish_reason=False)
    assert not any(f in VLLM.build(quiet, lacking)[0] for f in flags)
    answered = dataclasses.replace(stream, stream=False, counts=True)
    assert sorted(f for f in flags if f in VLLM.build(answered, lacking)[0]) == list(flags[1:])


def read_as_adapter(data: bytes, lazy: bool) -> tuple[str, object]:
    """A body's bytes as the adapter reads them for a text-generation model: its JSON
    (a records array a chunk at a time when `lazy`, as for a large body), then the schema."""
    try:
        with mock.patch.object(json_codec, "LAZY_BYTES", 0 if lazy else 1 << 60):
            document = json_codec.read_document(data, PayloadLimits(60, 20))
        request = SCHEMAS.for_body(document, "model").read(document, CONTEXT)
    except PayloadError as exc:
        assert exc.status == 400 and exc.message
        return "refused", exc.status
    return "ok", (request.generation, request.model, request.echo)


@FUZZ
@given(
    body=bodies,
    junk=st.sampled_from(["", "[", "]", '"', "\\", "\xff", "[" * 3000, "{" * 2000]),
    at=st.floats(0, 1),
    lead=st.sampled_from(["", '{"inputs": [1, "x", [2]], ', '{"inputs": [{"a": 1}], ']),
)
def test_any_bytes_are_read_or_refused_within_the_budget(
    body: dict[str, object], junk: str, at: float, lead: str
) -> None:
    text = json.dumps(body)
    if lead and text != "{}":
        text = lead + text[1:]
    where = int(len(text) * at)
    data = (text[:where] + junk + text[where:]).encode("utf-8", "surrogatepass")
    with memory_budget(64 * len(data) + 4 * MEBIBYTE):
        lazily = read_as_adapter(data, lazy=True)
    assert lazily == read_as_adapter(data, lazy=False)
