"""A session is its opener's alone: callers outside it cannot continue, read or end it.

Each session is a sequence of Triton's sequence batcher, and a plain v2
request names any sequence it likes (`parameters.sequence_id`), as Triton's
own clients do. Sessions and streams therefore get random 63-bit correlation
ids nobody outside can guess, and a plain request naming one that a session
or stream holds is refused; plain sequences keep working as they do with
NVIDIA's image.
"""

from __future__ import annotations

import json

import requests

from tests.conftest import ServeProcess
from tests.sessions.test_sessions import invoke, open_session, say

TARGET = "X-Amzn-SageMaker-Custom-Attributes"
ON_CORRID_MEMORY = {TARGET: "target_model=corrid_memory"}
BINARY_JSON = "application/vnd.sagemaker-triton.binary+json;json-header-size={}"


def v2_text(text: str, **parameters: object) -> dict:
    request: dict = {
        "inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": [text]}]
    }
    if parameters:
        request["parameters"] = parameters
    return request


def binary_text(text: str, **parameters: object) -> tuple[bytes, str]:
    """A binary+json request of `text` with `parameters`, and its Content-Type."""
    data = text.encode()
    header = {
        "inputs": [
            {
                "name": "text",
                "shape": [1, 1],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": 4 + len(data)},
            }
        ],
        "parameters": parameters,
    }
    head = json.dumps(header).encode()
    return head + len(data).to_bytes(4, "little") + data, BINARY_JSON.format(len(head))


def reply_of(response: requests.Response) -> dict:
    """corrid_memory's answer to a v2 request: its correlation id and what it remembers."""
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    return json.loads(output["data"][0])


def test_an_outsider_cannot_continue_read_or_end_a_session(
    sessions_server: ServeProcess,
) -> None:
    """Guessing correlation ids reaches no session (they used to count up from 1)."""
    session = open_session(sessions_server)
    assert say(sessions_server, session, "secret")["remembered"] == ["secret"]
    for guess in range(1, 65):
        for parameters in ({"sequence_id": guess}, {"sequence_id": guess, "sequence_end": True}):
            peek = invoke(sessions_server, v2_text("peek", **parameters))
            assert "secret" not in peek.text, (guess, peek.text)
    # Untouched: nothing was added to its state and it was not ended.
    assert say(sessions_server, session, "still mine")["remembered"] == ["secret", "still mine"]
    assert invoke(sessions_server, {"requestType": "CLOSE"}, session).status_code == 200


def test_a_sequence_id_a_session_holds_is_refused(sessions_server: ServeProcess) -> None:
    """A caller who learnt a session's correlation id still cannot use it: 409."""
    opened = invoke(sessions_server, v2_text("secret"), "NEW_SESSION", **ON_CORRID_MEMORY)
    session = opened.headers["X-Amzn-SageMaker-New-Session-Id"].split(";")[0]
    held = reply_of(opened)["corrid"]
    # Random, and no more than 63 bits.
    assert 64 < held < 2**63
    body, content_type = binary_text("peek", sequence_id=held)
    attempts = [
        invoke(sessions_server, v2_text("peek", sequence_id=held), **ON_CORRID_MEMORY),
        invoke(sessions_server, v2_text("peek", sequence_id=str(held)), **ON_CORRID_MEMORY),
        invoke(
            sessions_server,
            v2_text("", sequence_id=held, sequence_end=True),
            **ON_CORRID_MEMORY,
        ),
        invoke(
            sessions_server,
            {"inputs": "peek", "parameters": {"sequence_id": held}},
            **ON_CORRID_MEMORY,
        ),
        invoke(sessions_server, body, **{"Content-Type": content_type, **ON_CORRID_MEMORY}),
        # An ensemble hands its request's sequence to its steps.
        invoke(
            sessions_server,
            v2_text("peek", sequence_id=held),
            **{TARGET: "target_model=corrid_ensemble"},
        ),
    ]
    for refused in attempts:
        assert refused.status_code == 409, refused.text
        error = refused.json()["error"]
        assert f"sequence_id {held}" in error and "another sequence_id" in error, error
        assert "secret" not in refused.text
    # The session's own requests cannot be steered to another sequence either.
    mine = invoke(sessions_server, v2_text("mine", sequence_id=12345), session, **ON_CORRID_MEMORY)
    assert reply_of(mine) == {"corrid": held, "remembered": ["secret", "mine"]}
    closed = invoke(sessions_server, {"requestType": "CLOSE"}, session, **ON_CORRID_MEMORY)
    assert closed.status_code == 200, closed.text
    # Closed: the id is free again for whoever names it (and holds no state).
    after = invoke(sessions_server, v2_text("x", sequence_id=held), **ON_CORRID_MEMORY)
    assert after.status_code == 400
    assert "START" in after.json()["error"]


def test_plain_sequences_work_as_with_nvidias_image(sessions_server: ServeProcess) -> None:
    """A caller's own sequence_id, START and END reach Triton as they do without serve."""
    sequence = 7
    first = invoke(
        sessions_server,
        v2_text("a", sequence_id=sequence, sequence_start=True),
        **ON_CORRID_MEMORY,
    )
    assert reply_of(first) == {"corrid": sequence, "remembered": ["a"]}
    body, content_type = binary_text("b", sequence_id=sequence)
    second = invoke(sessions_server, body, **{"Content-Type": content_type, **ON_CORRID_MEMORY})
    assert second.status_code == 200, second.text
    last = invoke(
        sessions_server, v2_text("c", sequence_id=sequence, sequence_end=True), **ON_CORRID_MEMORY
    )
    assert reply_of(last) == {"corrid": sequence, "remembered": ["a", "b", "c"]}
    gone = invoke(sessions_server, v2_text("d", sequence_id=sequence), **ON_CORRID_MEMORY)
    assert gone.status_code == 400
