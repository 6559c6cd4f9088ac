"""Fixtures for the build/ tooling: a fake AWS over real HTTP and a recording docker.

AWS cannot be reached from CI, so `smtriton` runs against moto's server (plus
the few APIs moto lacks, see fake_aws.py), started once per session on a
free port in its own process group. `docker` is a stand-in script put first
on PATH that records each call's argv and stdin and succeeds, or fails on
request, so the tests check the exact commands a real docker would get.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from smtriton.cli import main

from tests.conftest import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
FAKE_AWS = Path(__file__).with_name("fake_aws.py")
ACCOUNT = "123456789012"
REGION = "us-east-1"
REGISTRY = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/SageMakerExecution"
# moto knows an older list of instance types than SageMaker does (no ml.g5).
INSTANCE_TYPE = "ml.g4dn.xlarge"
LARGER_INSTANCE_TYPE = "ml.g4dn.2xlarge"
AWS_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
)


@pytest.fixture(scope="session")
def fake_aws_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The fake AWS endpoint, one server for the whole session."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("fake_aws") / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(FAKE_AWS), "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            pytest.fail(f"fake AWS exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline:
                os.killpg(process.pid, signal.SIGKILL)
                pytest.fail(f"fake AWS did not answer within 30 s:\n{log_path.read_text()}")
            time.sleep(0.1)
    yield url
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def clear_aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No credentials, profile or region from the machine running the tests."""
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    missing = tmp_path / "no-aws-config"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(missing))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(missing))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def aws_env(fake_aws_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """Point boto3 (in this process and in children) at the fake, with fake credentials."""
    clear_aws_environment(monkeypatch, tmp_path)
    env = {
        "AWS_ENDPOINT_URL": fake_aws_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def aws(aws_env: dict[str, str]) -> boto3.Session:
    """A session for the tests' own look at the fake AWS."""
    return boto3.Session(region_name=REGION)


def create_fake_endpoint(fake_aws_url: str, name: str, container: dict[str, str]) -> str:
    """An InService endpoint NAME of one model with `container`, made through the fake's API."""
    sagemaker = boto3.client(
        "sagemaker",
        endpoint_url=fake_aws_url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    sagemaker.create_model(ModelName=name, ExecutionRoleArn=ROLE_ARN, PrimaryContainer=container)
    sagemaker.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": name,
                "InstanceType": INSTANCE_TYPE,
                "InitialInstanceCount": 1,
            }
        ],
    )
    sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=name)
    for _ in range(10):
        if sagemaker.describe_endpoint(EndpointName=name)["EndpointStatus"] == "InService":
            return name
    pytest.fail("the fake endpoint never came InService")


@dataclass(frozen=True)
class DockerCall:
    argv: list[str]
    stdin: str | None


class DockerRecorder:
    """Reads back what the stand-in docker was asked to do."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path

    def calls(self) -> list[DockerCall]:
        if not self.log_path.exists():
            return []
        return [DockerCall(**json.loads(line)) for line in self.log_path.read_text().splitlines()]

    def argvs(self) -> list[list[str]]:
        return [call.argv for call in self.calls()]


DOCKER_STAND_IN = """\
#!{python}
import json, os, sys

args = sys.argv[1:]
stdin = sys.stdin.read() if "--password-stdin" in args else None
with open(os.environ["FAKE_DOCKER_LOG"], "a") as log:
    log.write(json.dumps({{"argv": args, "stdin": stdin}}) + "\\n")
if args[:1] == [os.environ.get("FAKE_DOCKER_FAIL")]:
    print("fake docker: " + args[0] + " failed", file=sys.stderr)
    sys.exit(3)
print("fake docker: " + " ".join(args[:1]) + " done")
"""


@pytest.fixture
def docker_bin(tmp_path: Path) -> Path:
    """A folder holding the stand-in `docker`."""
    folder = tmp_path / "docker-bin"
    folder.mkdir()
    script = folder / "docker"
    script.write_text(DOCKER_STAND_IN.format(python=sys.executable))
    script.chmod(0o755)
    return folder


@pytest.fixture
def fake_docker(
    docker_bin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> DockerRecorder:
    """Put the stand-in first on PATH (ahead of any real docker)."""
    log_path = tmp_path / "docker-calls.jsonl"
    monkeypatch.delenv("CONTAINER_ENGINE", raising=False)
    monkeypatch.setenv("PATH", f"{docker_bin}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(log_path))
    monkeypatch.delenv("FAKE_DOCKER_FAIL", raising=False)
    return DockerRecorder(log_path)


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str


# What the deploy tests deploy unless they say otherwise.
IMAGE = f"{REGISTRY}/sagemaker-triton:0a1b2c3d4e5f"
MODEL_DATA = "s3://models-bucket/ncf/model.tar.gz"


def deploy_with(
    smtriton: Callable[..., CliResult],
    name: str,
    *options: str,
    defaults: Mapping[str, str] | None = None,
) -> CliResult:
    """`smtriton deploy` of endpoint NAME: the role, a quick poll, IMAGE and `defaults`
    (option -> value) for each that `options` does not give itself."""
    args = ["deploy", "--endpoint-name", name, "--role", ROLE_ARN]
    args += ["--poll-interval", "0.01", "--wait-timeout", "20"]
    for flag, value in {"--image": IMAGE, **(defaults or {})}.items():
        if flag not in options:
            args += [flag, value]
    return smtriton(*args, *options)


def refused_before_anything_is_created(
    aws: boto3.Session, run: Callable[[], CliResult], message: str, endpoint: str = ""
) -> None:
    """`run()` (an smtriton command) stops with `message`, without a traceback, before any
    model is made (or, with `endpoint`, any endpoint of that name)."""
    sagemaker = aws.client("sagemaker")
    models = len(sagemaker.list_models()["Models"])
    result = run()
    assert result.code == 1, result.out
    assert message in result.err
    assert "Traceback" not in result.err
    assert len(sagemaker.list_models()["Models"]) == models
    if endpoint:
        assert sagemaker.list_endpoints(NameContains=endpoint)["Endpoints"] == []


@pytest.fixture
def smtriton(capfd: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run `smtriton ARGS` in this process; returns exit code, stdout and stderr."""

    def run(*args: str) -> CliResult:
        capfd.readouterr()
        code = main(list(args))
        captured = capfd.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def write_dockerfile(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    dockerfile = folder / "Dockerfile"
    dockerfile.write_text(textwrap.dedent("FROM scratch\n"))
    return dockerfile


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)
