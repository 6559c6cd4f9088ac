"""Language-model request schemas on /invocations, against a real serve and Triton.

The models (conftest.py) are small Python-backend models with the vLLM
backend's and TensorRT-LLM's inputs; what reached them is read back from
their answers, so each test checks both the schema's answer and the mapping.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import ServeProcess
from tests.payloads.conftest import small_requests_meanwhile, writer_pids
from tests.payloads.llm.conftest import echoed, rendered, serving_text, start_text_server

TARGET = "X-Amzn-SageMaker-Custom-Attributes"
SESSION = "X-Amzn-SageMaker-Session-Id"


def invoke(server: ServeProcess, body: object, model: str | None = None) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    if model is not None:
        headers[TARGET] = f"target_model={model}"
    return requests.post(
        f"{server.url}/invocations", data=json.dumps(body), headers=headers, timeout=60
    )


def events(response: requests.Response) -> list[Any]:
    """The data of each server-sent event; [DONE] as the string."""
    assert response.headers["Content-Type"].startswith("text/event-stream"), response.text
    found = []
    for block in response.text.split("\n\n"):
        if block.strip():
            assert block.startswith("data:"), block
            data = block[5:].strip()
            found.append(data if data == "[DONE]" else json.loads(data))
    return found


USER = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module", params=["0", "2"], ids=["serve's service", "writers"])
def text_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServeProcess]:
    """Every test here twice: schema requests answered by serve's own payload service (no
    writers: hosts under 4 CPUs) and by two writer processes."""
    yield from serving_text(tmp_path_factory, request.param)


def test_schema_requests_go_to_the_writers_but_sessions_and_stateful_models_stay(
    tmp_path: Path,
) -> None:
    """With the writers frozen (SIGSTOP), a chat request is not answered, while a session's
    chat turn and a plain request for a stateful model still are: serve's own service
    keeps the sessions and checks every stateful model's request against them."""
    server = start_text_server(tmp_path, SERVE_V2_JSON_WRITERS="2").wait_ready()
    writers = writer_pids(server)
    try:
        assert len(writers) == 2
        for pid in writers:
            os.kill(pid, signal.SIGSTOP)
        with pytest.raises(requests.ReadTimeout):
            requests.post(
                f"{server.url}/invocations",
                json={"messages": USER, "max_tokens": 2},
                headers={"Content-Type": "application/json"},
                timeout=3,
            )
        headers = {TARGET: "target_model=chat_turns", "Content-Type": "application/json"}
        turn = {"messages": [{"role": "user", "content": "hello"}]}
        opened = requests.post(
            f"{server.url}/invocations",
            json=turn,
            headers={**headers, SESSION: "NEW_SESSION"},
            timeout=30,
        )
        assert opened.status_code == 200, opened.text
        assert opened.json()["choices"][0]["message"]["content"].startswith("turn 1 of 1 open")
        plain = requests.post(f"{server.url}/invocations", json=turn, headers=headers, timeout=30)
        assert plain.status_code in (200, 400), plain.text
    finally:
        for pid in writers:
            os.kill(pid, signal.SIGCONT)
        server.stop()


def test_chat_completion_renders_the_models_template(text_server: ServeProcess) -> None:
    response = invoke(text_server, {"model": "mine", "messages": USER, "max_tokens": 100})
    assert response.status_code == 200, response.text
    answer = response.json()
    prompt = rendered(USER)
    assert answer["object"] == "chat.completion"
    assert answer["id"].startswith("chatcmpl-") and answer["model"] == "mine"
    (choice,) = answer["choices"]
    assert choice["message"] == {"role": "assistant", "content": echoed(prompt)}
    assert choice["finish_reason"] == "stop" and choice["index"] == 0
    words = len(prompt.split())
    assert answer["usage"] == {
        "prompt_tokens": words,
        "completion_tokens": words,
        "total_tokens": 2 * words,
    }


def test_chat_stream_is_chunks_ending_done(text_server: ServeProcess) -> None:
    body = {"messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    response = invoke(text_server, body)
    assert response.status_code == 200, response.text
    *chunks, usage, done = events(response)
    assert done == "[DONE]"
    assert all(c["object"] == "chat.completion.chunk" for c in [*chunks, usage])
    assert len({c["id"] for c in [*chunks, usage]}) == 1
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0]["role"] == "assistant"
    assert "".join(d.get("content", "") for d in deltas) == echoed(rendered(USER))
    assert len(chunks) > 2  # a chunk per token, as the model streams them
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "stop"
    assert all(c["usage"] is None for c in chunks)
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == len(chunks) - 1


def test_sampling_fields_reach_the_vllm_inputs(text_server: ServeProcess) -> None:
    body = {
        "prompt": "parameters?",
        "max_completion_tokens": 7,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": "x",
        "seed": 3,
        "presence_penalty": 0.25,
        "frequency_penalty": -0.5,
    }
    answer = invoke(text_server, body).json()
    shown = json.loads(answer["choices"][0]["text"])
    assert shown["sampling"] == {
        "max_tokens": 7,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["x"],
        "seed": 3,
        "presence_penalty": 0.25,
        "frequency_penalty": -0.5,
    }
    assert shown["flags"] == {
        "stream": False,
        "exclude_input_in_output": True,
        "return_finish_reason": True,
        "return_num_input_tokens": True,
        "return_num_output_tokens": True,
    }
    tgi = invoke(
        text_server,
        {
            "inputs": "parameters?",
            "parameters": {"do_sample": False, "top_k": 5, "max_new_tokens": 2},
        },
    ).json()
    shown = json.loads(tgi[0]["generated_text"])
    assert shown["sampling"] == {"max_tokens": 2, "temperature": 0.0, "top_k": 5}


def test_the_model_is_asked_only_for_what_the_answer_reports(text_server: ServeProcess) -> None:
    """The vLLM backend sets every output asked for on every response, a cost on every
    token: a stream without usage asks for the finish reason alone, TGI without details for
    neither counts nor reason; an answer that reports them asks for them."""

    def flags(body: dict[str, object]) -> dict[str, bool]:
        answer = invoke(text_server, body)
        if not body.get("stream"):
            document = answer.json()
            text = (
                document[0]["generated_text"]
                if "inputs" in body
                else document["choices"][0]["text"]
            )
        elif "inputs" in body:
            text = events(answer)[-1]["generated_text"]
        else:
            text = "".join(c["choices"][0]["text"] for c in events(answer)[:-1] if c["choices"])
        shown: dict[str, bool] = json.loads(text)["flags"]
        assert shown.pop("exclude_input_in_output") is True
        shown.pop("stream")
        return shown

    counts = {"return_num_input_tokens": True, "return_num_output_tokens": True}
    reason = {"return_finish_reason": True}
    prompt = {"prompt": "parameters?"}
    assert flags({**prompt, "stream": True}) == reason
    assert flags({**prompt, "stream": True, "stream_options": {"include_usage": True}}) == {
        **reason,
        **counts,
    }
    assert flags(prompt) == {**reason, **counts}
    tgi = {"inputs": "parameters?"}
    assert flags({**tgi, "stream": True}) == {}
    assert flags(tgi) == {}
    assert flags({**tgi, "stream": True, "parameters": {"details": True}}) == {**reason, **counts}


def test_limits_stops_choices_and_seeds(text_server: ServeProcess) -> None:
    prompt = "one two three four five"
    short = invoke(text_server, {"prompt": prompt, "max_tokens": 2}).json()
    assert short["choices"][0] == {
        "index": 0,
        "text": " one two",
        "logprobs": None,
        "finish_reason": "length",
    }
    stopped = invoke(text_server, {"prompt": prompt, "stop": ["ree"]}).json()
    assert stopped["choices"][0]["text"] == " one two th"
    assert stopped["choices"][0]["finish_reason"] == "stop"
    several = invoke(text_server, {"prompt": prompt, "n": 3, "seed": 1}).json()
    texts = [choice["text"] for choice in several["choices"]]
    assert texts == [echoed(prompt, seed=seed) for seed in (1, 2, 3)]
    assert several["usage"]["completion_tokens"] == 15
    streamed = invoke(text_server, {"prompt": prompt, "n": 2, "seed": 1, "stream": True})
    chunks = events(streamed)[:-1]
    for index in (0, 1):
        pieces = [c["choices"][0]["text"] for c in chunks if c["choices"][0]["index"] == index]
        assert "".join(pieces) == texts[index]


def test_logprobs_where_the_model_gives_them(text_server: ServeProcess) -> None:
    body = {"messages": USER, "max_tokens": 2, "logprobs": True, "top_logprobs": 2}
    choice = invoke(text_server, body).json()["choices"][0]
    first, _second = choice["logprobs"]["content"]
    assert first["token"] == echoed(rendered(USER), 1)
    assert first["logprob"] == -0.5 and first["bytes"] == list(first["token"].encode())
    assert [t["token"] for t in first["top_logprobs"]] == [" alt0", first["token"]]
    completion = invoke(text_server, {"prompt": "a b c", "logprobs": 1, "echo": True}).json()
    choice = completion["choices"][0]
    assert choice["text"] == "a b c a b c"
    assert choice["logprobs"]["tokens"] == [" a", " b", " c"]
    assert choice["logprobs"]["text_offset"] == [5, 7, 9]
    refused = invoke(text_server, {"prompt": "a", "logprobs": 1}, model="ensemble_like")
    assert refused.status_code == 400
    assert "log probabilities" in refused.json()["error"]["message"]


def test_tgi_answers_and_streams_as_tgi_does(text_server: ServeProcess) -> None:
    prompt = "one two three"
    body = {"inputs": prompt, "parameters": {"max_new_tokens": 2, "details": True}}
    (answer,) = invoke(text_server, body).json()
    assert answer["generated_text"] == " one two"
    assert answer["details"]["finish_reason"] == "length"
    assert answer["details"]["generated_tokens"] == 2
    full = invoke(text_server, {"inputs": prompt, "parameters": {"return_full_text": True}})
    assert full.json() == [{"generated_text": prompt + echoed(prompt)}]
    streamed = events(invoke(text_server, {"inputs": prompt, "stream": True}))
    *tokens, last = streamed
    assert [t["token"]["text"] for t in tokens] == [" one", " two", " three"]
    assert all(t["generated_text"] is None and not t["token"]["special"] for t in tokens)
    assert [t["index"] for t in streamed] == [1, 2, 3, 4]
    assert last["generated_text"] == echoed(prompt) and last["token"]["special"]


def test_a_model_that_answers_once_is_mapped_as_tensorrt_llm(text_server: ServeProcess) -> None:
    body = {"prompt": "a b parameters?", "max_tokens": 3, "seed": 4, "stop": "y", "top_k": 2}
    answer = invoke(text_server, body, model="ensemble_like").json()
    shown = json.loads(answer["choices"][0]["text"])
    assert shown == {
        "text_input": {"shape": [1, 1], "values": ["a b parameters?"]},
        "max_tokens": {"shape": [1, 1], "values": [3]},
        "top_k": {"shape": [1, 1], "values": [2]},
        "random_seed": {"shape": [1, 1], "values": [4]},
        "stop_words": {"shape": [1, 1], "values": ["y"]},
        "stream": {"shape": [1, 1], "values": [False]},
    }
    # It echoes the prompt before its text, as TensorRT-LLM does: the answer does not.
    plain = invoke(
        text_server, {"inputs": "one", "parameters": {"max_new_tokens": 2}}, "ensemble_like"
    )
    assert plain.json() == [{"generated_text": " t0 t1"}]
    streamed = events(
        invoke(text_server, {"prompt": "one", "max_tokens": 2, "stream": True}, "ensemble_like")
    )
    assert [c["choices"][0]["text"] for c in streamed[:-1]] == [" t0 t1", ""]
    assert streamed[-1] == "[DONE]"
    v2 = {
        "inputs": [
            {"name": "text_input", "shape": [1, 1], "datatype": "BYTES", "data": ["hi"]},
            {"name": "max_tokens", "shape": [1, 1], "datatype": "INT32", "data": [1]},
        ]
    }
    native = invoke(text_server, v2, model="ensemble_like").json()
    assert native["outputs"][0]["data"] == ["hi t0"]


def test_errors_are_in_each_schemas_shape(text_server: ServeProcess) -> None:
    bad = invoke(text_server, {"messages": USER, "temperature": 9})
    assert bad.status_code == 400
    error = bad.json()["error"]
    assert error["type"] == "invalid_request_error" and "temperature=9" in error["message"]
    tgi = invoke(text_server, {"inputs": "x", "parameters": {"top_p": "high"}})
    assert tgi.status_code == 400
    assert tgi.json() == {
        "error": "parameters.top_p must be a number, not a string",
        "error_type": "validation",
    }
    unfit = invoke(text_server, {"prompt": "x"}, model="plain")
    assert unfit.status_code == 500
    assert "lacks input text_input" in unfit.json()["error"]["message"]
    none = invoke(text_server, {"messages": USER}, model="no_template")
    assert none.status_code == 400 and "no chat template" in none.json()["error"]["message"]
    refused = invoke(text_server, {"messages": [{"role": "assistant", "content": "hi"}]})
    assert refused.status_code == 400
    assert "Conversations start with the user" in refused.json()["error"]["message"]
    neither = invoke(text_server, {"instances": [1]})
    assert neither.status_code == 400 and "messages (chat)" in neither.json()["error"]


def test_stream_failures(text_server: ServeProcess) -> None:
    early = invoke(text_server, {"prompt": "refuse", "stream": True})
    assert early.status_code == 400
    assert early.json()["error"]["message"] == "the prompt was refused"
    late = invoke(text_server, {"prompt": "a b c d fail later", "stream": True})
    assert late.status_code == 200
    *chunks, error, done = events(late)
    assert "".join(c["choices"][0]["text"] for c in chunks) == " a b"
    assert error["error"]["message"] == "the model failed after two tokens"
    assert done == "[DONE]"
    tgi = events(invoke(text_server, {"inputs": "a b c d fail later", "stream": True}))
    assert tgi[-1] == {"error": "the model failed after two tokens", "error_type": "generation"}


V2_ENSEMBLE = {
    "inputs": [
        {"name": "text_input", "shape": [1, 1], "datatype": "BYTES", "data": ["hi"]},
        {"name": "max_tokens", "shape": [1, 1], "datatype": "INT32", "data": [1]},
    ]
}


@pytest.mark.parametrize("model", ["chat_vllm", "ensemble_like"])
@pytest.mark.parametrize(
    "body",
    [
        {"messages": USER, "max_tokens": 2},
        {"messages": USER, "max_tokens": 2, "stream": True},
        {"prompt": "one two", "max_tokens": 1},
        {"inputs": "one two", "parameters": {"max_new_tokens": 1}},
    ],
)
def test_schema_bodies_go_straight_to_the_payload_service(
    text_server: ServeProcess, body: object, model: str
) -> None:
    """Not through a refused try in Triton first: nginx closes the client's connection
    after intercepting an upstream 400, and the try costs a hop on every request. (A
    decoupled model's every body goes to the payload service; one that answers once
    has its bodies looked at.)"""
    connection = http.client.HTTPConnection("127.0.0.1", text_server.port, timeout=30)
    headers = {"Content-Type": "application/json", TARGET: f"target_model={model}"}
    try:
        sockets = []
        for _ in range(3):
            connection.request("POST", "/invocations", json.dumps(body), headers)
            response = connection.getresponse()
            response.read()
            assert response.status == 200
            assert response.getheader("Connection") != "close"
            sockets.append(connection.sock)
        assert sockets[0] is not None and sockets.count(sockets[0]) == 3
    finally:
        connection.close()


def test_v2_bodies_stay_off_the_payload_service(tmp_path: Path) -> None:
    """nginx sends a declared model's v2 JSON (tensors first) to Triton itself, and every
    JSON body of a model not declared as it did before; only schema bodies need Python.
    With the payload service's socket gone, those still answer and a chat body cannot."""
    server = start_text_server(
        tmp_path,
        SERVE_TEXT_GENERATION_MODELS="ensemble_like",
        SAGEMAKER_TRITON_DEFAULT_MODEL_NAME="ensemble_like",
    )
    try:
        # Before any request: nginx keeps the connections it has used open.
        server.wait_ready()
        (server.workspace() / "front" / "payloads.sock").unlink()
        native = invoke(server, V2_ENSEMBLE)
        assert native.status_code == 200 and native.json()["outputs"][0]["data"] == ["hi t0"]
        plain = {"inputs": [{"name": "prompt", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}
        assert invoke(server, plain, model="plain").status_code == 200
        assert invoke(server, {"prompt": "a", "max_tokens": 1}).status_code == 503
    finally:
        server.stop()


def test_a_session_carries_chat_turns_to_a_sequence_batched_model(
    text_server: ServeProcess,
) -> None:
    """SageMaker's stateful sessions and the chat schema together: each turn of a session
    reaches the same sequence of Triton's sequence batcher, which the model keeps state for."""
    url = f"{text_server.url}/invocations"
    headers = {TARGET: "target_model=chat_turns", "Content-Type": "application/json"}

    def turn(session: str, content: str, **extra: object) -> requests.Response:
        body = {"messages": [{"role": "user", "content": content}], **extra}
        response = requests.post(url, json=body, headers={**headers, SESSION: session}, timeout=60)
        assert response.status_code == 200, response.text
        return response

    opened = turn("NEW_SESSION", "hello")
    session = opened.headers["X-Amzn-SageMaker-New-Session-Id"].split(";")[0]
    assert opened.json()["choices"][0]["message"]["content"] == "turn 1 of 1 open: <s><|user|>hello"
    other = turn("NEW_SESSION", "elsewhere")
    assert other.json()["choices"][0]["message"]["content"].startswith("turn 1 of 2 open")
    second = turn(session, "again")
    assert second.json()["choices"][0]["message"]["content"] == "turn 2 of 2 open: <s><|user|>again"
    streamed = events(turn(session, "streamed", stream=True))
    assert streamed[0]["choices"][0]["delta"]["content"] == "turn 3 of 2 open: <s><|user|>streamed"
    assert streamed[-1] == "[DONE]"
    closed = requests.post(
        url, json={"requestType": "CLOSE"}, headers={**headers, SESSION: session}, timeout=60
    )
    assert closed.headers["X-Amzn-SageMaker-Closed-Session-Id"] == session
    after = turn(other.headers["X-Amzn-SageMaker-New-Session-Id"].split(";")[0], "last")
    assert after.json()["choices"][0]["message"]["content"].startswith("turn 2 of 1 open")


def test_other_callers_are_answered_while_a_large_chat_body_is_read(
    text_server: ServeProcess,
) -> None:
    # 60,000 messages (5.6 MB): reading them and rendering the chat template is about
    # half a second of CPU, which on the payload service's one loop every other
    # request waited for. It runs in a worker thread (serve/payloads/offload.py).
    messages = [{"role": "user", "content": "hello there " * 5}] * 60_000
    body = json.dumps({"messages": messages, "max_tokens": 4})
    meanwhile = small_requests_meanwhile(
        f"{text_server.url}/invocations",
        lambda: requests.post(
            f"{text_server.url}/invocations",
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=120,
        ),
        lambda: {
            "data": json.dumps({"messages": [{"role": "user", "content": "hi"}]}),
            # Another model: the small request does not queue behind the large one.
            "headers": {"Content-Type": "application/json", TARGET: "target_model=ensemble_like"},
            "timeout": 60,
        },
    )
    assert meanwhile.large_status == 200
    print(meanwhile.describe())
    assert len(meanwhile.waits) >= 5
    # On the loop, one small request waited for the whole reading: 0.39-0.44 s of a
    # 0.55-0.79 s request here; in a worker, 0.06-0.15 s of 0.37-0.66 s.
    assert max(meanwhile.waits) < meanwhile.large_seconds / 3
