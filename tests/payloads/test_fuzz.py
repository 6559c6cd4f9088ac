"""Malformed bodies and headers thrown at the payload adapters (hypothesis).

Whatever arrives, the caller gets a 2xx or a 4xx with a JSON error, never a
5xx, and the server keeps serving.
"""

from __future__ import annotations

import io
import json
import string

import numpy as np
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ServeProcess

CONTENT_TYPES = [
    "application/json",
    "application/jsonlines",
    "text/csv",
    "text/csv; header=present",
    "text/csv; charset=latin-1",
    "application/x-npy",
    "text/plain",
    "text/plain; charset=nonsense",
    "application/octet-stream",
    "image/jpeg",
    "application/vnd.sagemaker-triton.binary+json;json-header-size=0",
    "application/vnd.sagemaker-triton.binary+json;json-header-size=5",
    "",
]
ACCEPTS = [
    "",
    "*/*",
    "application/json",
    "application/json; format=v2",
    "application/json; format=nonsense",
    "text/csv",
    "application/x-npy",
    "text/plain",
    "application/jsonlines",
    "text/event-stream",
    "image/png",
    "text/csv;q=0.5, application/json;q=abc",
]
# Not the streaming model: a valid record would make it stream for a second.
TARGETS = [None, "ncf_food", "echo", "twin", "twin_pinned", "unknown"]

header_text = st.text(alphabet=string.printable[:95], max_size=80).map(str.strip)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_keys = st.sampled_from(
    ["inputs", "instances", "parameters", "user_id", "item_id", "A", "B"]
) | st.text(max_size=6)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(json_keys, children, max_size=4)
    ),
    max_leaves=20,
)
v2_inputs = st.lists(
    st.fixed_dictionaries(
        {"name": st.sampled_from(["user_id", "item_id", "A", "INPUT", "x"])},
        optional={
            "shape": st.lists(st.integers(-2, 3), max_size=3) | json_scalars,
            "datatype": st.sampled_from(["INT64", "FP32", "BYTES", "BOOL", "nope"]) | json_scalars,
            "data": st.lists(json_scalars, max_size=4) | json_scalars,
            "parameters": st.dictionaries(st.text(max_size=5), json_scalars, max_size=2),
        },
    ),
    max_size=3,
)


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


bodies = st.one_of(
    st.binary(min_size=1, max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"inputs": v2_inputs}).map(lambda v: json.dumps(v).encode()),
    st.lists(
        st.lists(st.integers(-5, 3000) | st.text(string.printable[:62], max_size=4), max_size=9),
        min_size=1,
        max_size=5,
    ).map(lambda rows: "\n".join(",".join(map(str, r)) for r in rows).encode()),
    st.lists(st.integers(-3, 2100), min_size=1, max_size=12).map(
        lambda v: npy(np.array(v).reshape(-1, 2) if len(v) % 2 == 0 else np.array(v))
    ),
    st.sampled_from([npy(np.zeros((2, 2), dtype=np.float16)), npy(np.array(["a", "b"]))]),
)


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    body=bodies,
    content_type=st.sampled_from(CONTENT_TYPES) | header_text,
    accept=st.sampled_from(ACCEPTS) | header_text,
    target=st.sampled_from(TARGETS),
    attributes=st.none() | header_text,
)
def test_malformed_requests_get_4xx_with_json_never_5xx(
    payload_server: ServeProcess,
    body: bytes,
    content_type: str,
    accept: str,
    target: str | None,
    attributes: str | None,
) -> None:
    headers = {"Content-Type": content_type, "Accept": accept}
    if target is not None:
        headers["X-Amzn-SageMaker-Custom-Attributes"] = f"target_model={target}"
    elif attributes is not None:
        headers["X-Amzn-SageMaker-Custom-Attributes"] = attributes
    response = requests.post(
        f"{payload_server.url}/invocations", data=body, headers=headers, timeout=30
    )
    assert response.status_code < 500, (response.status_code, response.text, headers, body)
    if response.status_code >= 400:
        assert response.headers["Content-Type"].startswith("application/json"), response.text
        assert json.loads(response.content)["error"], response.text


def test_the_server_survived_the_fuzzing(payload_server: ServeProcess) -> None:
    # Runs after the property test in this module: still healthy, still right.
    assert payload_server.ping_status() == 200
    response = requests.post(
        f"{payload_server.url}/invocations", data="42,7", headers={"Content-Type": "text/csv"}
    )
    assert response.status_code == 200 and float(response.text) > 0
