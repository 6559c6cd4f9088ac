"""The SageMaker Python SDK as a client of a real `serve`, through the project's AWS stand-in.

The SDK (2.x, see pyproject.toml's `sdk` extra) lives in .venv-sdk, made by
set-up: it pins importlib-metadata<7, which this environment's Triton wheel
refuses. So the SDK's code runs in a child process with that environment's
Python, against the stand-in (tests/build/fake_aws.py, moto over real HTTP),
which passes InvokeEndpoint on to a `serve` the test started, as SageMaker
passes it to a container.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from tests.build.conftest import (  # noqa: F401  (fake_aws_url: a fixture of the tests here)
    ACCOUNT,
    REGION,
    create_fake_endpoint,
    fake_aws_url,
)
from tests.conftest import REPO_ROOT

SDK_PYTHON = REPO_ROOT / ".venv-sdk" / "bin" / "python"
IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/sagemaker-triton:test"


@pytest.fixture(scope="session")
def sdk_python() -> Path:
    if not SDK_PYTHON.is_file():
        pytest.fail(f"{SDK_PYTHON} is missing: run `make setup` (build/setup.sh makes it)")
    return SDK_PYTHON


@pytest.fixture(scope="session")
def sdk_env(
    fake_aws_url: str,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    """The environment of an SDK process: the stand-in's endpoint and fake credentials only."""
    missing = tmp_path_factory.mktemp("sdk-env") / "no-aws-config"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "SAGEMAKER_", "SERVE_"))
    }
    env.update(
        AWS_ENDPOINT_URL=fake_aws_url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION=REGION,
        AWS_CONFIG_FILE=str(missing),
        AWS_SHARED_CREDENTIALS_FILE=str(missing),
        AWS_EC2_METADATA_DISABLED="true",
        SAGEMAKER_SUPPRESS_V2_WARNING="1",
        # A call that fails fails the test at once: no retries against the stand-in.
        AWS_MAX_ATTEMPTS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def run_in_sdk(
    python: Path, args: Sequence[str], env: Mapping[str, str], cwd: Path, timeout: float = 300
) -> str:
    """Run the SDK's Python with `args`; its stdout, or the failure with both streams."""
    done = subprocess.run(
        [str(python), *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise AssertionError(
            f"the SDK process failed ({done.returncode}):\n{done.stdout[-4000:]}\n"
            f"{done.stderr[-8000:]}"
        )
    return done.stdout


def run_container(
    fake_aws_url: str,  # noqa: F811
    url: str,
    mode: str = "SingleModel",
    models_dir: Path | None = None,
    image: str = IMAGE,
) -> None:
    """Tell the stand-in that `image`, in `mode`, runs as the serve at `url`."""
    spec = {"image": image, "mode": mode, "url": url, "models_dir": str(models_dir or "")}
    request = urllib.request.Request(
        f"{fake_aws_url}/_fake/containers", data=json.dumps(spec).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


def create_endpoint(fake_aws_url: str, name: str) -> None:  # noqa: F811
    """An InService endpoint of IMAGE (one model), made directly through the stand-in's API."""
    create_fake_endpoint(
        fake_aws_url, name, {"Image": IMAGE, "ModelDataUrl": "s3://bucket/model.tar.gz"}
    )
