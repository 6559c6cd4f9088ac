"""The language-model settings at start-up: a wrong declaration stops serve, saying why."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from serve.errors import ConfigError
from serve.settings import Settings
from tests.conftest import ServeProcess, write_add_model

StartServe = Callable[..., ServeProcess]


@pytest.mark.parametrize(
    ("env", "said"),
    [
        (
            {"SERVE_TEXT_GENERATION_MODELS": "add,llama"},
            "SERVE_TEXT_GENERATION_MODELS names llama, which the model repository does not "
            "hold; it holds: add",
        ),
        (
            {"SERVE_TEXT_GENERATION_MODELS": "add", "SERVE_CHAT_TEMPLATE": "chat.jinja"},
            "SERVE_CHAT_TEMPLATE=chat.jinja is not a file (read relative to the model's folder",
        ),
    ],
    ids=["unknown model", "missing template"],
)
def test_a_wrong_declaration_stops_serve_with_the_reason(
    opt_ml: Path, start_serve: StartServe, env: dict[str, str], said: str
) -> None:
    write_add_model(opt_ml / "model")
    server = start_serve(opt_ml, **env)
    assert server.wait_exit(60) == 1
    assert said in server.output
    assert "Traceback" not in server.output


def test_text_generation_models_belong_to_single_model_endpoints() -> None:
    environ = {"SAGEMAKER_MULTI_MODEL": "true", "SERVE_TEXT_GENERATION_MODELS": "a"}
    with pytest.raises(ConfigError, match="names models of a single-model endpoint"):
        Settings.from_environ(environ)
    with pytest.raises(ConfigError, match="is not one of: auto, tensorrt_llm, vllm"):
        Settings.from_environ({"SERVE_TEXT_GENERATION_INPUTS": "tgi"})
