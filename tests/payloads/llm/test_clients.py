"""The language-model clients SageMaker users have, unchanged, against a real serve and Triton.

Each client (clients.py) runs in the clients' own environment (.venv-llm,
made by set-up: their pins conflict with nvidia-pytriton's) and calls
InvokeEndpoint or InvokeEndpointWithResponseStream on the AWS stand-in
(tests/build/fake_aws.py), which passes the invocation to the serve of
tests/payloads/llm/conftest.py as SageMaker passes it to a container, and
frames a streamed answer as SageMaker does (PayloadParts of AWS's event-stream
encoding). The model echoes its prompt's words, so what each client got can be
checked exactly: the chat schema's clients get the model's chat template
applied to their messages.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.build.conftest import (  # noqa: F401  (aws_env, fake_aws_url, smtriton: fixtures)
    ACCOUNT,
    INSTANCE_TYPE,
    REGION,
    CliResult,
    aws_env,
    create_fake_endpoint,
    deploy_with,
    fake_aws_url,
    smtriton,
)
from tests.conftest import REPO_ROOT, ServeProcess
from tests.payloads.llm.conftest import echoed, rendered
from tests.sdk.conftest import run_container

CLIENTS_PYTHON = REPO_ROOT / ".venv-llm" / "bin" / "python"
SCRIPT = Path(__file__).with_name("clients.py")
IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/sagemaker-triton:llm"
MESSAGES = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Which server runs here?"},
]
CHAT_PROMPT = rendered(MESSAGES)


@pytest.fixture(scope="module")
def endpoint(
    text_server: ServeProcess,
    fake_aws_url: str,  # noqa: F811
) -> Iterator[str]:
    if not CLIENTS_PYTHON.is_file():
        pytest.fail(f"{CLIENTS_PYTHON} is missing: run `make setup` (build/setup.sh makes it)")
    name = f"llm-{os.getpid()}"
    create_fake_endpoint(
        fake_aws_url, name, {"Image": IMAGE, "ModelDataUrl": "s3://bucket/model.tar.gz"}
    )
    run_container(fake_aws_url, text_server.url, image=IMAGE)
    yield name


def run_client(client: str, endpoint: str, stream: bool, aws: str, tmp: Path) -> dict[str, Any]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "SAGEMAKER_", "SERVE_", "OPENAI_"))
    }
    env.update(
        AWS_ENDPOINT_URL=aws,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION=REGION,
        AWS_CONFIG_FILE=str(tmp / "none"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp / "none"),
        AWS_EC2_METADATA_DISABLED="true",
        AWS_MAX_ATTEMPTS="1",
        # LiteLLM fetches a price list at import unless told to use its own copy.
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        HOME=str(tmp),
    )
    done = subprocess.run(
        [str(CLIENTS_PYTHON), str(SCRIPT), client, endpoint, "stream" if stream else "whole"],
        env=env,
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=240,
    )
    if done.returncode != 0:
        raise AssertionError(f"{client} failed ({done.returncode}):\n{done.stderr[-6000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


STREAMS = pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])


@STREAMS
def test_openai_types_validate_every_answer_and_chunk(
    endpoint: str,
    fake_aws_url: str,  # noqa: F811
    tmp_path: Path,
    stream: bool,
) -> None:
    got = run_client("openai_types", endpoint, stream, fake_aws_url, tmp_path)
    texts = [echoed(CHAT_PROMPT, 8, seed=7), echoed(CHAT_PROMPT, 8, seed=8)]
    assert got["texts"] == texts
    made = sum(len(text.split()) for text in texts)
    assert got["usage"] == {
        "prompt_tokens": len(CHAT_PROMPT.split()),
        "completion_tokens": made,
        "total_tokens": len(CHAT_PROMPT.split()) + made,
        "completion_tokens_details": None,
        "prompt_tokens_details": None,
    }
    assert got["completion"] == echoed("Triton serves language models", 3)
    if stream:
        assert got["done"] and got["chunks"] > made
        assert got["finished"] == [None] * (len(got["finished"]) - 1) + ["length"]
    else:
        assert got["logprobs"] == len(texts[0].split())


@STREAMS
@pytest.mark.parametrize("client", ["langchain_chat", "litellm_chat", "strands"])
def test_chat_clients(
    endpoint: str,
    fake_aws_url: str,  # noqa: F811
    tmp_path: Path,
    client: str,
    stream: bool,
) -> None:
    got = run_client(client, endpoint, stream, fake_aws_url, tmp_path)
    assert got["text"] == echoed(CHAT_PROMPT, 12)
    if stream and "chunks" in got:
        assert got["chunks"] > 1  # token by token, as the model made them
    if client == "strands":
        usage = got["usage"]
        assert usage["inputTokens"] == len(CHAT_PROMPT.split())
        assert usage["outputTokens"] == len(echoed(CHAT_PROMPT, 12).split())


@STREAMS
@pytest.mark.parametrize("client", ["langchain_tgi", "litellm_tgi"])
def test_tgi_clients(
    endpoint: str,
    fake_aws_url: str,  # noqa: F811
    tmp_path: Path,
    client: str,
    stream: bool,
) -> None:
    got = run_client(client, endpoint, stream, fake_aws_url, tmp_path)
    if client == "langchain_tgi":
        assert got["text"] == echoed("Triton serves language models", 6)
    else:
        # LiteLLM renders the messages into a prompt itself; the model echoes its words.
        assert got["text"].split()[:2] == ["Answer", "briefly."] or "briefly." in got["text"]
        assert len(got["text"].split()) == 6
    if stream:
        assert got["chunks"] > 1


def test_an_inference_components_stream_comes_from_its_own_serve(
    text_server: ServeProcess,
    fake_aws_url: str,  # noqa: F811
    aws_env: dict[str, str],  # noqa: F811
    smtriton: Callable[..., CliResult],  # noqa: F811
) -> None:
    """InvokeEndpointWithResponseStream naming an inference component reaches the serve of
    that component (the stand-in echoes where no serve answers), token by token."""
    endpoint = f"llm-ic-{uuid.uuid4().hex[:8]}"
    component = f"{endpoint}-chat"
    run_container(fake_aws_url, text_server.url, image=IMAGE)
    options = ["--inference-component", component, "--image", IMAGE]
    options += ["--model-data", "s3://bucket/model.tar.gz", "--instance-type", INSTANCE_TYPE]
    deployed = deploy_with(smtriton, endpoint, *options)
    assert deployed.code == 0, deployed.err
    runtime = boto3.client("sagemaker-runtime", region_name=REGION)
    response = runtime.invoke_endpoint_with_response_stream(
        EndpointName=endpoint,
        InferenceComponentName=component,
        ContentType="application/json",
        Body=json.dumps({"messages": MESSAGES, "max_tokens": 12, "stream": True}),
    )
    parts = [event["PayloadPart"]["Bytes"] for event in response["Body"] if "PayloadPart" in event]
    events = b"".join(parts).split(b"\n\n")
    data = [e.strip().removeprefix(b"data:").strip() for e in events if e.strip()]
    assert data[-1] == b"[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == echoed(CHAT_PROMPT, 12)
    assert len(parts) > 1  # as the model made them, not one answer at the end
