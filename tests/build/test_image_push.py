"""smtriton image, login and push: the exact docker commands, and ECR through the fake AWS."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from pathlib import Path

import boto3
import pytest

from tests.build.conftest import (
    REGISTRY,
    REPO_ROOT,
    CliResult,
    DockerRecorder,
    write_dockerfile,
)

Smtriton = Callable[..., CliResult]
DLC_ACCOUNT = "763104351884"


def ecr_password(aws: boto3.Session, region: str | None = None) -> str:
    ecr = aws.client("ecr", region_name=region or aws.region_name)
    token = ecr.get_authorization_token()["authorizationData"][0]["authorizationToken"]
    username, password = base64.b64decode(token).decode().split(":", 1)
    assert username == "AWS"
    return password


# --- image --------------------------------------------------------------------------------


def test_image_builds_with_the_given_arguments(
    smtriton: Smtriton, fake_docker: DockerRecorder, tmp_path: Path
) -> None:
    context = tmp_path / "context"
    write_dockerfile(context)
    result = smtriton(
        "image",
        "--context",
        str(context),
        "--repository",
        "team/triton",
        "--tag",
        "v1",
        "--tag",
        "abc123",
        "--triton-version",
        "24.09",
        "--base-image",
        f"{DLC_ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/sagemaker-tritonserver",
        "--build-arg",
        "EXTRA=1",
        "--pull",
    )
    assert result.code == 0, result.err
    assert fake_docker.argvs() == [
        [
            "build",
            "--file",
            str(context / "Dockerfile"),
            "--build-arg",
            f"BASE_IMAGE={DLC_ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/sagemaker-tritonserver",
            "--build-arg",
            "TRITON_VERSION=24.09",
            "--build-arg",
            "EXTRA=1",
            "--tag",
            "team/triton:v1",
            "--tag",
            "team/triton:abc123",
            "--platform",
            "linux/amd64",
            "--pull",
            str(context),
        ]
    ]
    assert result.out.split() == ["team/triton:v1", "team/triton:abc123"]
    assert "fake docker: build done" in result.err, "docker's output reaches the user on stderr"


def test_image_leaves_defaults_to_the_dockerfile_and_tags_the_commit(
    smtriton: Smtriton, fake_docker: DockerRecorder
) -> None:
    result = smtriton("image", "--context", str(REPO_ROOT), "--platform", "")
    assert result.code == 0, result.err
    (argv,) = fake_docker.argvs()
    assert "--build-arg" not in argv and "--platform" not in argv
    tags = [argv[i + 1] for i, word in enumerate(argv) if word == "--tag"]
    assert tags[0] == "sagemaker-triton:latest"
    assert re.fullmatch(r"sagemaker-triton:[0-9a-f]{12}(-dirty)?", tags[1]), tags


def test_image_outside_a_checkout_tags_latest_and_says_so(
    smtriton: Smtriton, fake_docker: DockerRecorder, tmp_path: Path
) -> None:
    write_dockerfile(tmp_path / "plain")
    result = smtriton("image", "--context", str(tmp_path / "plain"))
    assert result.code == 0, result.err
    (argv,) = fake_docker.argvs()
    assert [argv[i + 1] for i, word in enumerate(argv) if word == "--tag"] == [
        "sagemaker-triton:latest"
    ]
    assert "not a git checkout: tagging 'latest' only" in result.err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--tag=-bad"], "invalid tag '-bad'"),
        (["--tag", "a", "--tag", "a"], "tags repeat"),
        (["--repository", "Upper/Case", "--tag", "a"], "invalid repository name 'Upper/Case'"),
        (["--tag", "a", "--triton-version", "2.51"], "is not an NGC release like 24.10"),
        (["--tag", "a", "--base-image", "nvcr.io/nvidia/tritonserver:24.10-py3"], "without tag"),
        (["--tag", "a", "--build-arg", "NOVALUE"], "is not NAME=VALUE"),
        (["--tag", "a", "--file", "/nonexistent/Dockerfile"], "no Dockerfile at"),
    ],
)
def test_image_rejects_bad_options_before_docker_runs(
    smtriton: Smtriton,
    fake_docker: DockerRecorder,
    options: list[str],
    message: str,
) -> None:
    result = smtriton("image", "--context", str(REPO_ROOT), *options)
    assert result.code == 1
    assert message in result.err
    assert "Traceback" not in result.err
    assert fake_docker.argvs() == []


def test_a_failing_docker_build_is_reported_with_its_exit_code(
    smtriton: Smtriton, fake_docker: DockerRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_DOCKER_FAIL", "build")
    result = smtriton("image", "--context", str(REPO_ROOT), "--tag", "x")
    assert result.code == 1
    assert "fake docker: build failed" in result.err
    assert "smtriton image: error: `docker build` failed with exit code 3" in result.err
    assert result.out == ""


def test_missing_docker_is_a_clear_error(
    smtriton: Smtriton, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    result = smtriton("image", "--context", str(REPO_ROOT), "--tag", "x")
    assert result.code == 1
    assert "neither docker nor podman was found on PATH" in result.err
    assert "Traceback" not in result.err


def test_podman_builds_where_there_is_no_docker(
    smtriton: Smtriton,
    fake_docker: DockerRecorder,
    docker_bin: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (docker_bin / "docker").rename(docker_bin / "podman")
    monkeypatch.setenv("PATH", str(docker_bin))
    result = smtriton("image", "--context", str(REPO_ROOT), "--tag", "x")
    assert result.code == 0, result.err
    assert [argv[0] for argv in fake_docker.argvs()] == ["build"]
    assert "$ podman build" in result.err


def test_container_engine_names_the_engine_outright(
    smtriton: Smtriton, fake_docker: DockerRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONTAINER_ENGINE", "no-such-engine")
    result = smtriton("image", "--context", str(REPO_ROOT), "--tag", "x")
    assert result.code == 1
    assert "CONTAINER_ENGINE=no-such-engine is not a command on PATH" in result.err
    assert fake_docker.argvs() == []


# --- push ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("aws_env")
def test_push_creates_the_repository_logs_in_tags_and_pushes(
    smtriton: Smtriton, fake_docker: DockerRecorder, aws: boto3.Session
) -> None:
    ecr = aws.client("ecr")
    with pytest.raises(ecr.exceptions.RepositoryNotFoundException):
        ecr.describe_repositories(repositoryNames=["push-new"])

    result = smtriton("push", "--repository", "push-new", "--tag", "v1", "--tag", "0a1b2c3d4e5f")
    assert result.code == 0, result.err

    (repository,) = ecr.describe_repositories(repositoryNames=["push-new"])["repositories"]
    assert repository["imageScanningConfiguration"] == {"scanOnPush": True}
    remote = f"{REGISTRY}/push-new"
    assert fake_docker.argvs() == [
        ["login", "--username", "AWS", "--password-stdin", REGISTRY],
        ["tag", "push-new:v1", f"{remote}:v1"],
        ["push", f"{remote}:v1"],
        ["tag", "push-new:0a1b2c3d4e5f", f"{remote}:0a1b2c3d4e5f"],
        ["push", f"{remote}:0a1b2c3d4e5f"],
    ]
    assert fake_docker.calls()[0].stdin == ecr_password(aws)
    assert result.out.split() == [f"{remote}:v1", f"{remote}:0a1b2c3d4e5f"]
    assert f"created ECR repository {remote}" in result.err


@pytest.mark.usefixtures("aws_env")
def test_push_to_an_existing_repository_reuses_it(
    smtriton: Smtriton, fake_docker: DockerRecorder, aws: boto3.Session
) -> None:
    ecr = aws.client("ecr")
    ecr.create_repository(repositoryName="push-existing")
    result = smtriton(
        "push", "--repository", "push-existing", "--source-repository", "local-name", "--tag", "t"
    )
    assert result.code == 0, result.err
    assert "created ECR repository" not in result.err
    remote = f"{REGISTRY}/push-existing"
    assert fake_docker.argvs()[1:] == [
        ["tag", "local-name:t", f"{remote}:t"],
        ["push", f"{remote}:t"],
    ]
    names = [r["repositoryName"] for r in ecr.describe_repositories()["repositories"]]
    assert names.count("push-existing") == 1


@pytest.mark.usefixtures("aws_env")
def test_a_failing_push_stops_before_the_next_tag(
    smtriton: Smtriton, fake_docker: DockerRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_DOCKER_FAIL", "push")
    result = smtriton("push", "--repository", "push-fails", "--tag", "a", "--tag", "b")
    assert result.code == 1
    assert "`docker push` failed with exit code 3" in result.err
    assert [argv[0] for argv in fake_docker.argvs()] == ["login", "tag", "push"]


# --- login --------------------------------------------------------------------------------


@pytest.mark.usefixtures("aws_env")
def test_login_covers_own_registry_and_an_ecr_base_image(
    smtriton: Smtriton, fake_docker: DockerRecorder, aws: boto3.Session
) -> None:
    result = smtriton(
        "login",
        "--for-image",
        f"{DLC_ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/sagemaker-tritonserver",
        "--for-image",
        "nvcr.io/nvidia/tritonserver",
    )
    assert result.code == 0, result.err
    dlc_registry = f"{DLC_ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com"
    assert fake_docker.argvs() == [
        ["login", "--username", "AWS", "--password-stdin", REGISTRY],
        ["login", "--username", "AWS", "--password-stdin", dlc_registry],
    ]
    assert {call.stdin for call in fake_docker.calls()} == {ecr_password(aws)}
    assert result.out.split() == [REGISTRY, dlc_registry]
    assert "nvcr.io/nvidia/tritonserver is not in ECR" in result.err


@pytest.mark.usefixtures("aws_env")
def test_login_to_a_base_image_in_another_region_uses_that_regions_token(
    smtriton: Smtriton, fake_docker: DockerRecorder, aws: boto3.Session
) -> None:
    image = f"{DLC_ACCOUNT}.dkr.ecr.us-west-2.amazonaws.com/sagemaker-tritonserver"
    result = smtriton("login", "--for-image", image)
    assert result.code == 0, result.err
    assert fake_docker.argvs()[1] == [
        "login",
        "--username",
        "AWS",
        "--password-stdin",
        f"{DLC_ACCOUNT}.dkr.ecr.us-west-2.amazonaws.com",
    ]
    assert fake_docker.calls()[1].stdin == ecr_password(aws, "us-west-2")


def test_login_rejects_a_malformed_account(smtriton: Smtriton, fake_docker: DockerRecorder) -> None:
    result = smtriton("login", "--account", "12345")
    assert result.code == 1
    assert "'12345' is not a 12-digit AWS account id" in result.err
    assert fake_docker.argvs() == []
