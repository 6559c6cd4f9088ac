"""Stateful sessions through /invocations, against the real Triton and the chat_memory example.

Each session is a sequence of Triton's sequence batcher: the model's replies
show the state it keeps per session (`remembered`), and `open_sessions` how
many sessions it holds state for, so closes and expiries are seen in the model.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import struct
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import requests

from tests.conftest import ServeProcess, add_request
from tests.multi_model.test_multi_model import load, upload_add
from tests.sessions.conftest import start_sessions_server

SESSION = "X-Amzn-SageMaker-Session-Id"
NEW = "X-Amzn-SageMaker-New-Session-Id"
CLOSED = "X-Amzn-SageMaker-Closed-Session-Id"
StartServe = Callable[..., ServeProcess]
EXPIRES = re.compile(r"^([0-9a-f-]{36}); Expires=(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)$")


def invoke(
    server: ServeProcess, body: object, session: str | None = None, **headers: str
) -> requests.Response:
    sent = {"Content-Type": "application/json", **headers}
    if session is not None:
        sent[SESSION] = session
    data = body if isinstance(body, bytes) else json.dumps(body)
    return requests.post(f"{server.url}/invocations", data=data, headers=sent, timeout=30)


def open_session(server: ServeProcess) -> str:
    response = invoke(server, {"requestType": "NEW_SESSION"}, "NEW_SESSION")
    assert response.status_code == 200, response.text
    assert response.json() == {}
    match = EXPIRES.match(response.headers[NEW])
    assert match, response.headers[NEW]
    return match.group(1)


def say(server: ServeProcess, session: str, text: str) -> dict:
    response = invoke(server, {"inputs": text}, session)
    assert response.status_code == 200, response.text
    (answer,) = response.json()["predictions"]
    return {**json.loads(answer["reply"]), "open_sessions": answer["open_sessions"]}


def close(server: ServeProcess, session: str) -> requests.Response:
    return invoke(server, {"requestType": "CLOSE"}, session)


def test_open_use_close(sessions_server: ServeProcess) -> None:
    response = invoke(sessions_server, {"requestType": "NEW_SESSION"}, "NEW_SESSION")
    assert response.status_code == 200
    session, expires = EXPIRES.match(response.headers[NEW]).groups()  # type: ignore[union-attr]
    lifetime = datetime.strptime(expires, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    # SERVE_SESSION_TTL_SECONDS=600 from now.
    assert abs(lifetime.timestamp() - time.time() - 600) < 5

    assert say(sessions_server, session, "hello")["remembered"] == ["hello"]
    assert say(sessions_server, session, "again")["remembered"] == ["hello", "again"]
    closed = close(sessions_server, session)
    assert closed.status_code == 200, closed.text
    assert closed.headers[CLOSED] == session
    # The model's answer to the closing request (END, empty input), in v2 JSON: the
    # state it let go of.
    outputs = {output["name"]: output["data"] for output in closed.json()["outputs"]}
    assert json.loads(outputs["reply"][0]) == {"turn": 2, "remembered": ["hello", "again"]}

    refused = invoke(sessions_server, {"inputs": "more"}, session)
    assert refused.status_code == 400
    assert "is not open" in refused.json()["error"]
    assert "NEW_SESSION" in refused.json()["error"]


def test_a_new_session_with_a_payload_is_its_first_request(sessions_server: ServeProcess) -> None:
    response = invoke(sessions_server, {"inputs": "first"}, "NEW_SESSION")
    assert response.status_code == 200, response.text
    session = EXPIRES.match(response.headers[NEW]).group(1)  # type: ignore[union-attr]
    assert json.loads(response.json()["predictions"][0]["reply"])["remembered"] == ["first"]
    assert say(sessions_server, session, "second")["remembered"] == ["first", "second"]
    assert close(sessions_server, session).status_code == 200


def test_interleaved_sessions_keep_their_own_state(sessions_server: ServeProcess) -> None:
    sessions = [open_session(sessions_server) for _ in range(6)]

    def talk(index: int) -> list[list[str]]:
        return [
            say(sessions_server, sessions[index], f"s{index}-m{turn}")["remembered"]
            for turn in range(4)
        ]

    # Concurrently, and in rounds: every session's requests interleave with the others'.
    with concurrent.futures.ThreadPoolExecutor(len(sessions)) as pool:
        histories = list(pool.map(talk, range(len(sessions))))
    for index, history in enumerate(histories):
        assert history[-1] == [f"s{index}-m{turn}" for turn in range(4)]
    for turn, session in enumerate(sessions[::2]):
        assert say(sessions_server, session, "x")["remembered"][-1] == "x", turn
    for session in sessions:
        assert close(sessions_server, session).headers[CLOSED] == session


def test_closing_releases_the_model_state(sessions_server: ServeProcess) -> None:
    first = open_session(sessions_server)
    held = say(sessions_server, first, "a")["open_sessions"]
    second = open_session(sessions_server)
    assert say(sessions_server, second, "b")["open_sessions"] == held + 1
    close(sessions_server, first)
    close(sessions_server, second)
    third = open_session(sessions_server)
    assert say(sessions_server, third, "c")["open_sessions"] == held
    close(sessions_server, third)


def test_every_payload_format_reaches_the_session(sessions_server: ServeProcess) -> None:
    session = open_session(sessions_server)
    v2 = {"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": ["v2"]}]}
    assert invoke(sessions_server, v2, session).status_code == 200
    # A v2 request sent as octet-stream (AWS's notebooks) is one, in a session too.
    v2["inputs"][0]["data"] = ["octet"]
    octet = invoke(sessions_server, v2, session, **{"Content-Type": "application/octet-stream"})
    assert octet.status_code == 200, octet.text
    assert "outputs" in octet.json()
    text = invoke(sessions_server, b"plain", session, **{"Content-Type": "text/plain"})
    assert text.status_code == 200, text.text
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "shape": [1, 1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 10},
                }
            ]
        }
    ).encode()
    binary = header + struct.pack("<I", 6) + b"binary"
    content_type = f"application/vnd.sagemaker-triton.binary+json;json-header-size={len(header)}"
    answer = invoke(sessions_server, binary, session, **{"Content-Type": content_type})
    assert answer.status_code == 200, answer.text
    remembered = say(sessions_server, session, "json")["remembered"]
    assert remembered == ["v2", "octet", "plain", "binary", "json"]
    close(sessions_server, session)


def test_session_errors_are_clear(sessions_server: ServeProcess) -> None:
    unknown = invoke(sessions_server, {"inputs": "x"}, "6c1b9ad2-0000-4000-8000-000000000000")
    assert unknown.status_code == 400
    assert "not open" in unknown.json()["error"]
    malformed = invoke(sessions_server, {"inputs": "x"}, "not a/valid id")
    assert malformed.status_code == 400
    assert "(malformed)" in malformed.json()["error"]

    close_new = invoke(sessions_server, {"requestType": "CLOSE"}, "NEW_SESSION")
    assert close_new.status_code == 400
    assert "closes an open session" in close_new.json()["error"]
    bad_type = invoke(sessions_server, {"requestType": "PAUSE"}, "NEW_SESSION")
    assert bad_type.status_code == 400
    assert "NEW_SESSION or CLOSE" in bad_type.json()["error"]

    stateless = invoke(
        sessions_server,
        {"requestType": "NEW_SESSION"},
        "NEW_SESSION",
        **{"X-Amzn-SageMaker-Custom-Attributes": "target_model=stateless"},
    )
    assert stateless.status_code == 400
    assert "sequence_batching" in stateless.json()["error"]
    decoupled = invoke(
        sessions_server,
        {"requestType": "NEW_SESSION"},
        "NEW_SESSION",
        **{"X-Amzn-SageMaker-Custom-Attributes": "target_model=speech_stream"},
    )
    assert decoupled.status_code == 400
    assert "/invocations-bidirectional-stream" in decoupled.json()["error"]

    session = open_session(sessions_server)
    other_model = invoke(
        sessions_server,
        {"inputs": "x"},
        session,
        **{"X-Amzn-SageMaker-Custom-Attributes": "target_model=stateless"},
    )
    assert other_model.status_code == 400
    assert "stays with the model" in other_model.json()["error"]
    # A bad request inside a session leaves the session as it was.
    bad = invoke(sessions_server, {"instances": [1, 2]}, session)
    assert bad.status_code == 400
    assert say(sessions_server, session, "still")["remembered"] == ["still"]
    close(sessions_server, session)


def test_requests_without_a_session_are_untouched(sessions_server: ServeProcess) -> None:
    # No session header: the stateful model gets no sequence, and Triton says so.
    response = invoke(sessions_server, {"inputs": "x"})
    assert response.status_code == 400
    assert "correlation ID" in response.json()["error"]


def test_sessions_expire_and_release_their_state(tmp_path: Path) -> None:
    server = start_sessions_server(tmp_path, SERVE_SESSION_TTL_SECONDS="2", SERVE_MAX_SESSIONS="2")
    try:
        server.wait_ready()
        baseline = open_session(server)
        held = say(server, baseline, "a")["open_sessions"]
        session = open_session(server)
        assert say(server, session, "kept")["open_sessions"] == held + 1
        too_many = invoke(server, {"requestType": "NEW_SESSION"}, "NEW_SESSION")
        assert too_many.status_code == 429
        assert "SERVE_MAX_SESSIONS" in too_many.json()["error"]
        time.sleep(3.5)
        expired = invoke(server, {"inputs": "late"}, session)
        assert expired.status_code == 400
        assert "expired" in expired.json()["error"]
        # Both expired: the model let go of both sessions' state (Triton got their END).
        fresh = open_session(server)
        assert say(server, fresh, "new")["open_sessions"] == held - 1 + 1
        server.wait_until(lambda: "expired; its sequence ended" in server.output, 10, "expiry log")
    finally:
        server.stop()


def test_open_sessions_end_when_serve_stops(tmp_path: Path) -> None:
    """SageMaker stops a container with sessions open: serve ends their sequences while
    Triton still runs, so Triton stops at once instead of waiting its exit timeout for
    them and leaving its model processes behind."""
    server = start_sessions_server(tmp_path)
    try:
        server.wait_ready()
        for text in ("one", "two"):
            say(server, open_session(server), text)
    finally:
        started = time.monotonic()
        server.stop()
        took = time.monotonic() - started
    assert server.output.count("a session closed at shutdown; its sequence ended") == 2
    assert not re.search(r"has \d+ in-flight inferences", server.output)
    assert "process(es) behind" not in server.output
    assert took < 15, took


def test_boto3_invoke_endpoint_sessions(sessions_server: ServeProcess) -> None:
    """boto3's own InvokeEndpoint with SessionId, its requests sent to this container.

    No SageMaker endpoint can be reached here: the runtime's URL
    (/endpoints/NAME/invocations) is rewritten to the container's /invocations,
    which is what SageMaker forwards, headers and body as botocore wrote them.
    """
    import boto3

    client = boto3.client(
        "sagemaker-runtime",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        endpoint_url=sessions_server.url,
    )

    def to_container(request: object, **_kwargs: object) -> None:
        request.url = f"{sessions_server.url}/invocations"  # type: ignore[attr-defined]

    client.meta.events.register("before-send.sagemaker-runtime.InvokeEndpoint", to_container)
    opened = client.invoke_endpoint(
        EndpointName="chat",
        Body=json.dumps({"requestType": "NEW_SESSION"}),
        ContentType="application/json",
        SessionId="NEW_SESSION",
    )
    session = EXPIRES.match(opened["NewSessionId"]).group(1)  # type: ignore[union-attr]
    for text in ("one", "two"):
        answer = client.invoke_endpoint(
            EndpointName="chat",
            Body=json.dumps({"inputs": text}),
            ContentType="application/json",
            SessionId=session,
        )
    reply = json.loads(answer["Body"].read())["predictions"][0]["reply"]
    assert json.loads(reply)["remembered"] == ["one", "two"]
    closed = client.invoke_endpoint(
        EndpointName="chat",
        Body=json.dumps({"requestType": "CLOSE"}),
        ContentType="application/json",
        SessionId=session,
    )
    assert closed["ClosedSessionId"] == session


def test_multi_model_endpoints_refuse_sessions(opt_ml: Path, start_serve: StartServe) -> None:
    mme = start_serve(opt_ml, SAGEMAKER_MULTI_MODEL="true").wait_ready()
    assert load(mme, "adder", upload_add(opt_ml, "adder")).status_code == 200
    for session in ("NEW_SESSION", "6c1b9ad2-0000-4000-8000-000000000000"):
        refused = requests.post(
            f"{mme.url}/models/adder/invoke",
            json=add_request([1, 2, 3, 4], [1, 1, 1, 1]),
            headers={SESSION: session},
            timeout=30,
        )
        assert refused.status_code == 400
        assert "single-model endpoints" in refused.json()["error"]
    # Without the header the model answers as usual.
    plain = requests.post(
        f"{mme.url}/models/adder/invoke", json=add_request([1, 2, 3, 4], [1, 1, 1, 1]), timeout=30
    )
    assert plain.status_code == 200


def test_unused_sessions_are_reclaimed_after_their_first_use_deadline(tmp_path: Path) -> None:
    """NEW_SESSION costs a caller nothing: a session no request uses holds its slot briefly.

    Before SERVE_SESSION_FIRST_USE_SECONDS, two empty opens held both slots for the
    whole TTL (ten minutes here) and every other caller got 429.
    """
    server = start_sessions_server(
        tmp_path,
        SERVE_SESSION_TTL_SECONDS="600",
        SERVE_MAX_SESSIONS="2",
        SERVE_SESSION_FIRST_USE_SECONDS="1",
    )
    try:
        server.wait_ready()
        used = open_session(server)
        assert say(server, used, "kept")["remembered"] == ["kept"]
        unused = open_session(server)
        refused = invoke(server, {"requestType": "NEW_SESSION"}, "NEW_SESSION")
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert "SERVE_MAX_SESSIONS" in error and "SERVE_SESSION_FIRST_USE_SECONDS" in error, error
        time.sleep(1.5)
        # The unused one's slot is free at once; the used one lasts its TTL.
        fresh = open_session(server)
        assert say(server, used, "still")["remembered"] == ["kept", "still"]
        gone = invoke(server, {"inputs": "late"}, unused)
        assert gone.status_code == 400
        assert "SERVE_SESSION_FIRST_USE_SECONDS" in gone.json()["error"]
        assert say(server, fresh, "new")["remembered"] == ["new"]
        assert unused not in server.output and used not in server.output  # ids are not logged
    finally:
        server.stop()
