"""What a user sees when AWS is not set up: one line saying what to fix, no traceback,
and nothing started (no docker call, no half-made endpoint)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.build.conftest import ROLE_ARN, CliResult, DockerRecorder, clear_aws_environment

Smtriton = Callable[..., CliResult]

COMMANDS = {
    "push": ["push", "--repository", "r", "--tag", "t"],
    "login": ["login"],
    "deploy": ["deploy", "--name", "e", "--image", "i", "--role", ROLE_ARN],
    "invoke": ["invoke", "--name", "e", "--body", "{}"],
    "delete": ["delete", "--name", "e"],
}


@pytest.fixture
def no_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clear_aws_environment(monkeypatch, tmp_path)


@pytest.mark.usefixtures("no_aws")
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_missing_credentials(
    smtriton: Smtriton,
    fake_docker: DockerRecorder,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    result = smtriton(*COMMANDS[command])
    assert result.code == 1
    assert result.err.strip().endswith(
        f"smtriton {command}: error: no AWS credentials found: set AWS_PROFILE (see `aws "
        "configure`), or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run where an IAM role "
        "is attached"
    )
    assert "Traceback" not in result.err
    assert fake_docker.argvs() == []


@pytest.mark.usefixtures("no_aws")
def test_unknown_region(
    smtriton: Smtriton, fake_docker: DockerRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    result = smtriton(*COMMANDS["push"], "--region", "us-esat-1")
    assert result.code == 1
    assert "smtriton push: error: unknown AWS region 'us-esat-1'" in result.err
    assert fake_docker.argvs() == []


@pytest.mark.usefixtures("no_aws")
def test_no_region(smtriton: Smtriton, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    result = smtriton(*COMMANDS["delete"])
    assert result.code == 1
    assert "no AWS region: pass --region or set AWS_DEFAULT_REGION" in result.err


@pytest.mark.usefixtures("no_aws")
def test_unknown_profile(smtriton: Smtriton) -> None:
    result = smtriton(*COMMANDS["invoke"], "--profile", "nobody")
    assert result.code == 1
    assert "nobody" in result.err and "--profile" in result.err
    assert "Traceback" not in result.err


def test_the_installed_script_reports_errors_the_same_way(tmp_path: Path, docker_bin: Path) -> None:
    """The console script, in a clean environment, as a person would run it."""
    env = {
        "PATH": os.pathsep.join([str(docker_bin), "/usr/bin", "/bin"]),
        "HOME": str(tmp_path),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "FAKE_DOCKER_LOG": str(tmp_path / "docker.jsonl"),
    }
    script = Path(sys.executable).with_name("smtriton")
    result = subprocess.run(
        [str(script), *COMMANDS["push"]], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert result.stderr.startswith("smtriton push: error: no AWS credentials found")
    assert result.stdout == ""
