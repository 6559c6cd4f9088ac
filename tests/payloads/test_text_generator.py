"""The text-generation example (streaming_repository/text_generator) through serve.

Its weights are random (build/examples/make_text_generator.py), so the text
is gibberish; what is checked is that the real code path streams and that
the streamed pieces are exactly what the same pipeline generates in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO_ROOT, ServeProcess, free_port, serve_env
from tests.payloads.test_streaming import stream_chunks

REPOSITORY = REPO_ROOT / "streaming_repository"
GENERATOR = REPOSITORY / "text_generator" / "1" / "generator"


@pytest.fixture(scope="module")
def generator_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    if not (GENERATOR / "model.safetensors").is_file():
        subprocess.run(
            [sys.executable, "build/examples/make_text_generator.py"], cwd=REPO_ROOT, check=True
        )
    root = tmp_path_factory.mktemp("generator")
    opt_ml = root / "opt_ml"
    opt_ml.mkdir()
    (opt_ml / "model").symlink_to(REPOSITORY)
    port = free_port()
    server = ServeProcess(serve_env(opt_ml, port), port, root)
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def expected_text(prompt: str, new_tokens: int) -> str:
    """The pipeline's own text, in a subprocess: transformers stays off this one's path."""
    script = (
        "import json, sys; from transformers import pipeline\n"
        f"g = pipeline('text-generation', model={str(GENERATOR)!r}, "
        f"tokenizer={str(GENERATOR)!r}, device='cpu')\n"
        f"r = g({prompt!r}, max_new_tokens={new_tokens}, return_full_text=False)\n"
        "print(json.dumps(r[0]['generated_text']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(GENERATOR.parent / "packages")},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


def test_tokens_stream_as_the_pipeline_makes_them(generator_server: ServeProcess) -> None:
    response, chunks = stream_chunks(
        generator_server, {"inputs": "The quick", "parameters": {"max_new_tokens": 12}}, {}
    )
    assert response.status == 200
    assert response.getheader("Transfer-Encoding") == "chunked"
    pieces = [
        json.loads(line)["text_output"]
        for line in b"".join(chunk for _, chunk in chunks).decode().splitlines()
    ]
    assert len(pieces) > 1, pieces
    assert "".join(pieces) == expected_text("The quick", 12)


def test_server_sent_events_and_errors(generator_server: ServeProcess) -> None:
    events = requests.post(
        f"{generator_server.url}/invocations",
        data="Streaming sends",
        headers={"Content-Type": "text/plain", "Accept": "text/event-stream"},
        timeout=60,
    )
    assert events.status_code == 200, events.text
    assert events.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert events.text.startswith("data: {")
    several = requests.post(
        f"{generator_server.url}/invocations", json={"inputs": ["a", "b"]}, timeout=60
    )
    assert several.status_code == 400 and "one record" in several.json()["error"]


def test_weights_are_made_not_committed() -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", str(GENERATOR / "model.safetensors")],
        cwd=REPO_ROOT,
        capture_output=True,
    )
    assert ignored.returncode == 0, "the random weights are made by set-up, never committed"
    assert Path(GENERATOR / "config.json").is_file()
