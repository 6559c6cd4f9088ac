"""buildspec.yml: its shape, and its phases run for real against the fake AWS and docker.

CodeBuild (buildspec 0.2) runs every command of a build in one shell, phase
after phase; the run test does the same with /bin/sh, so what it checks is
what CodeBuild would send to ECR and docker.
"""

from __future__ import annotations

import base64
import os
import shlex
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import yaml

from tests.build.conftest import ACCOUNT, REGISTRY, REPO_ROOT, DockerRecorder

BUILDSPEC = REPO_ROOT / "buildspec.yml"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def load() -> dict:
    return yaml.safe_load(BUILDSPEC.read_text())


def commands(phase: str) -> list[str]:
    return load()["phases"][phase]["commands"]


def programs(phase: str) -> list[str]:
    """The first word of each command, after any VAR=... assignment."""
    result = []
    for command in commands(phase):
        words = shlex.split(command)
        while words and "=" in words[0] and not words[0].startswith("-"):
            words = words[1:]
        result.append(" ".join(words[:2]))
    return result


def test_version_and_variables() -> None:
    spec = load()
    assert str(spec["version"]) == "0.2"
    assert {"IMAGE_REPO_NAME", "IMAGE_TAG", "TRITON_VERSION"} <= set(spec["env"]["variables"])
    text = BUILDSPEC.read_text()
    for variable in ("AWS_DEFAULT_REGION", "AWS_ACCOUNT_ID", "CODEBUILD_RESOLVED_SOURCE_VERSION"):
        assert f"${variable}" in text or f"${{{variable}" in text


def test_install_phase_installs_the_tooling() -> None:
    assert commands("install") == ["pip install --quiet '.[tools]'"]


def test_each_phase_calls_the_build_commands_a_person_runs() -> None:
    assert "smtriton login" in programs("pre_build")
    assert programs("build") == ["smtriton image"]
    assert programs("post_build")[-1] == "smtriton push"
    everything = " ".join(" ".join(commands(phase)) for phase in load()["phases"])
    assert "docker " not in everything, "docker is called only through smtriton"
    assert "aws ecr" not in everything


def test_build_passes_the_build_arguments_and_both_tags() -> None:
    (build,) = commands("build")
    words = shlex.split(build)
    assert words[words.index("--triton-version") + 1] == "$TRITON_VERSION"
    assert words[words.index("--base-image") + 1] == "$BASE_IMAGE"
    tags = [words[i + 1] for i, word in enumerate(words) if word == "--tag"]
    assert tags == ["$IMAGE_TAG", "$GIT_SHA"]


def run_phases(
    phases: list[str], env: dict[str, str], docker_bin: Path
) -> subprocess.CompletedProcess[str]:
    script = "set -e\n" + "\n".join(command for phase in phases for command in commands(phase))
    variables = {name: str(value) for name, value in load()["env"]["variables"].items()}
    full_env = {
        **os.environ,
        **variables,
        **env,
        "PATH": os.pathsep.join(
            [str(docker_bin), str(Path(sys.executable).parent), "/usr/bin", "/bin"]
        ),
    }
    return subprocess.run(
        ["/bin/sh", "-c", script],
        cwd=REPO_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.mark.usefixtures("aws_env")
def test_codebuild_run_logs_in_builds_tags_and_pushes(
    fake_docker: DockerRecorder, docker_bin: Path, aws: boto3.Session
) -> None:
    result = run_phases(
        ["pre_build", "build", "post_build"],
        {"AWS_ACCOUNT_ID": ACCOUNT, "CODEBUILD_RESOLVED_SOURCE_VERSION": COMMIT},
        docker_bin,
    )
    assert result.returncode == 0, result.stderr

    token = aws.client("ecr").get_authorization_token()["authorizationData"][0]
    expected_password = base64.b64decode(token["authorizationToken"]).decode().split(":", 1)[1]
    sha = COMMIT[:12]
    remote = f"{REGISTRY}/sagemaker-triton"
    login = ["login", "--username", "AWS", "--password-stdin", REGISTRY]
    assert fake_docker.argvs() == [
        login,
        [
            "build",
            "--file",
            "Dockerfile",
            "--build-arg",
            "BASE_IMAGE=nvcr.io/nvidia/tritonserver",
            "--build-arg",
            "TRITON_VERSION=24.10",
            "--tag",
            "sagemaker-triton:latest",
            "--tag",
            f"sagemaker-triton:{sha}",
            "--platform",
            "linux/amd64",
            ".",
        ],
        login,
        ["tag", "sagemaker-triton:latest", f"{remote}:latest"],
        ["push", f"{remote}:latest"],
        ["tag", f"sagemaker-triton:{sha}", f"{remote}:{sha}"],
        ["push", f"{remote}:{sha}"],
    ]
    logins = [call for call in fake_docker.calls() if call.argv[0] == "login"]
    assert [call.stdin for call in logins] == [expected_password, expected_password]

    repositories = aws.client("ecr").describe_repositories(repositoryNames=["sagemaker-triton"])
    assert repositories["repositories"][0]["repositoryUri"] == remote
    assert f"{remote}:{sha}" in result.stdout


@pytest.mark.usefixtures("aws_env")
def test_post_build_pushes_nothing_after_a_failed_build(
    fake_docker: DockerRecorder, docker_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_DOCKER_FAIL", "build")
    build = run_phases(["build"], {"AWS_ACCOUNT_ID": ACCOUNT, "GIT_SHA": COMMIT[:12]}, docker_bin)
    assert build.returncode != 0
    assert "`docker build` failed with exit code 3" in build.stderr
    # CodeBuild still runs post_build, with CODEBUILD_BUILD_SUCCEEDING=0.
    post_build = run_phases(
        ["post_build"],
        {"AWS_ACCOUNT_ID": ACCOUNT, "GIT_SHA": COMMIT[:12], "CODEBUILD_BUILD_SUCCEEDING": "0"},
        docker_bin,
    )
    assert post_build.returncode != 0
    assert [argv[0] for argv in fake_docker.argvs()] == ["build"]


def test_region_is_the_one_codebuild_sets() -> None:
    for phase in ("pre_build", "post_build"):
        for command in commands(phase):
            if command.startswith("smtriton"):
                assert '--region "$AWS_DEFAULT_REGION"' in command
