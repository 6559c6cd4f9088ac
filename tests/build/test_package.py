"""`smtriton package`: the archive's layout, the image's checks, packing tools, the upload."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Callable
from pathlib import Path

import boto3
import pytest
from google.protobuf import text_format

from serve.triton import model_config
from tests.artifacts.conftest import PYTHON_VERSION, make_environment, pack_folder
from tests.build.conftest import CliResult
from tests.conftest import write_add_model

Smtriton = Callable[..., CliResult]


def env_archive(tmp_path: Path, name: str, **environment: object) -> Path:
    folder = make_environment(tmp_path / "envs" / name, **environment)  # type: ignore[arg-type]
    return pack_folder(folder, tmp_path / "env-archives" / f"{name}.tar.gz")


def archive_names(archive: Path) -> list[str]:
    with tarfile.open(archive) as tar:
        return sorted(member.name for member in tar if member.isfile())


def archived_config(archive: Path, model: str) -> model_config.ModelConfig:
    with tarfile.open(archive) as tar:
        handle = tar.extractfile(f"{model}/config.pbtxt")
        assert handle is not None
        text = handle.read().decode()
    return text_format.Parse(text, model_config.ModelConfig())


def env_value(config: model_config.ModelConfig) -> str:
    return config.parameters["EXECUTION_ENV_PATH"].string_value


def test_models_and_a_shared_environment_in_the_layout_the_image_serves(
    smtriton: Smtriton, tmp_path: Path
) -> None:
    models = tmp_path / "repository"
    first = write_add_model(models, name="first")
    write_add_model(models, name="second")
    (first / "1" / "__pycache__").mkdir()
    (first / "1" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"stale")
    outside = tmp_path / "weights.bin"
    outside.write_bytes(b"\1" * 64)
    (first / "1" / "weights.bin").symlink_to(outside)
    original = (first / "config.pbtxt").read_text()
    env = env_archive(tmp_path, "shared", python_version="3.10")
    output = tmp_path / "out" / "model.tar.gz"

    result = smtriton(
        "package", str(models), "-o", str(output), "--env", f"first={env}", "--env", f"second={env}"
    )

    assert result.code == 0, result.err
    assert result.out.strip() == str(output)
    assert archive_names(output) == [
        "first/1/model.py",
        "first/1/weights.bin",
        "first/config.pbtxt",
        "first/env.tar.gz",
        "second/1/model.py",
        "second/config.pbtxt",
    ]
    assert env_value(archived_config(output, "first")) == "$$TRITON_MODEL_DIRECTORY/env.tar.gz"
    assert (
        env_value(archived_config(output, "second"))
        == "$$TRITON_MODEL_DIRECTORY/../first/env.tar.gz"
    )
    with tarfile.open(output) as tar:
        # The link is stored as the file it names: the image refuses links that leave.
        assert tar.getmember("first/1/weights.bin").isreg()
        assert tar.getmember("first/config.pbtxt").uname == ""
    assert (first / "config.pbtxt").read_text() == original
    assert "checked as the image checks it" in result.err
    assert "1 environment(s)" in result.err


def test_an_ensembles_empty_version_folder_is_kept(smtriton: Smtriton, tmp_path: Path) -> None:
    write_add_model(tmp_path / "repository", name="step")
    ensemble = tmp_path / "repository" / "pipeline"
    (ensemble / "1").mkdir(parents=True)
    (ensemble / "config.pbtxt").write_text(
        'name: "pipeline"\nplatform: "ensemble"\nmax_batch_size: 8\n'
        'input [ { name: "A", data_type: TYPE_FP32, dims: [ 4 ] } ]\n'
        'output [ { name: "C", data_type: TYPE_FP32, dims: [ 4 ] } ]\n'
        'ensemble_scheduling { step [ { model_name: "step", model_version: -1, '
        'input_map { key: "A", value: "A" }, input_map { key: "B", value: "A" }, '
        'output_map { key: "C", value: "C" } } ] }\n'
    )
    output = tmp_path / "model.tar.gz"

    result = smtriton(
        "package", str(tmp_path / "repository"), "-o", str(output), "--default-model", "pipeline"
    )

    assert result.code == 0, result.err
    with tarfile.open(output) as tar:
        assert tar.getmember("pipeline/1").isdir()


def test_an_environment_for_a_python_the_image_lacks_is_refused_and_nothing_written(
    smtriton: Smtriton, tmp_path: Path
) -> None:
    write_add_model(tmp_path / "repository", name="add")
    env = env_archive(tmp_path, "future", python_version="3.99")
    output = tmp_path / "model.tar.gz"

    result = smtriton(
        "package", str(tmp_path / "repository" / "add"), "-o", str(output), "--env", f"add={env}"
    )

    assert result.code == 1
    assert "the image would refuse this package" in result.err
    assert "built for Python 3.99" in result.err
    assert "stubs only for Python 3.10" in result.err
    assert not output.exists()
    assert list(output.parent.glob(".model.tar.gz.partial*")) == []


def test_more_image_pythons_and_the_default_model_are_checked(
    smtriton: Smtriton, tmp_path: Path
) -> None:
    write_add_model(tmp_path / "repository", name="add")
    write_add_model(tmp_path / "repository", name="other")
    env = env_archive(tmp_path, "py312", python_version="3.12")
    output = tmp_path / "model.tar.gz"
    base = ["package", str(tmp_path / "repository"), "-o", str(output), "--env", f"add={env}"]

    assert smtriton(*base, "--python", "3.10", "--python", "3.12").code == 0
    missing = smtriton(*base, "--python", "3.12", "--default-model", "absent")
    assert missing.code == 1
    assert "--default-model 'absent' is not among the models: add, other" in missing.err
    wrong_env = smtriton(*base[:-2], "--env", f"nope={env}")
    assert wrong_env.code == 1
    assert "--env names nope, not among the models: add, other" in wrong_env.err


def test_a_config_the_image_cannot_parse_is_refused_with_its_line(
    smtriton: Smtriton, tmp_path: Path
) -> None:
    folder = write_add_model(tmp_path / "repository", name="add")
    (folder / "config.pbtxt").write_text('name: "add"\nbackend: "python"\nmax_batch_size: lots\n')

    result = smtriton("package", str(folder), "-o", str(tmp_path / "model.tar.gz"))

    assert result.code == 1
    assert "config.pbtxt:3: not a valid Triton model configuration" in result.err


def test_a_virtual_environment_is_packed_with_venv_pack(
    smtriton: Smtriton, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--copies", "--without-pip", str(venv)], check=True
    )
    folder = write_add_model(tmp_path / "repository", name="add")
    output = tmp_path / "model.tar.gz"

    result = smtriton(
        "package",
        str(folder),
        "-o",
        str(output),
        "--env",
        f"add={venv}",
        "--python",
        PYTHON_VERSION,
    )

    assert result.code == 0, result.err
    assert "packing" in result.err and "venv-pack" in result.err
    with tarfile.open(output) as tar:
        handle = tar.extractfile("add/env.tar.gz")
        assert handle is not None
        with tarfile.open(fileobj=handle) as env:
            assert "bin/activate" in env.getnames()


CONDA_PACK_STAND_IN = """\
#!{python}
import io, sys, tarfile
args = sys.argv[1:]
prefix, output = args[args.index("-p") + 1], args[args.index("-o") + 1]
with tarfile.open(output, "w:gz") as tar:
    for name, data in (("bin/activate", b""), ("lib/python3.10/site-packages/x.py", b"")):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
print("packed", prefix)
"""


def test_a_conda_environment_needs_conda_pack_and_is_packed_with_it(
    smtriton: Smtriton, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conda_env = tmp_path / "conda-env"
    (conda_env / "conda-meta").mkdir(parents=True)
    folder = write_add_model(tmp_path / "repository", name="add")
    output = tmp_path / "model.tar.gz"
    args = ["package", str(folder), "-o", str(output), "--env", f"add={conda_env}"]
    tools = tmp_path / "bin"
    tools.mkdir()
    monkeypatch.setenv("PATH", str(tools))

    missing = smtriton(*args)
    assert missing.code == 1
    assert "needs conda-pack, which is not on PATH" in missing.err

    script = tools / "conda-pack"
    script.write_text(CONDA_PACK_STAND_IN.format(python=sys.executable))
    script.chmod(0o755)
    packed = smtriton(*args)
    assert packed.code == 0, packed.err
    assert "add/env.tar.gz" in archive_names(output)


@pytest.mark.usefixtures("aws_env")
def test_upload_puts_the_checked_archive_in_s3(
    smtriton: Smtriton, tmp_path: Path, aws: boto3.Session
) -> None:
    bucket = f"models-{uuid.uuid4().hex[:12]}"
    aws.client("s3").create_bucket(Bucket=bucket)
    folder = write_add_model(tmp_path / "repository", name="add")
    output = tmp_path / "model.tar.gz"

    result = smtriton("package", str(folder), "-o", str(output), "--upload", f"s3://{bucket}/v1/")

    assert result.code == 0, result.err
    assert result.out.strip() == f"s3://{bucket}/v1/model.tar.gz"
    stored = aws.client("s3").get_object(Bucket=bucket, Key="v1/model.tar.gz")["Body"].read()
    assert stored == output.read_bytes()


@pytest.mark.usefixtures("aws_env")
def test_uncompressed_upload_puts_the_checked_files_under_an_empty_prefix(
    smtriton: Smtriton, tmp_path: Path, aws: boto3.Session
) -> None:
    bucket = f"models-{uuid.uuid4().hex[:12]}"
    s3 = aws.client("s3")
    s3.create_bucket(Bucket=bucket)
    repository = tmp_path / "repository"
    first = write_add_model(repository, name="first")
    second = write_add_model(repository, name="second")
    (second / "1" / "model.py").unlink()
    (second / "1" / "model.py").symlink_to(first / "1" / "model.py")
    (first / "1" / "notes.pyc").write_bytes(b"stale")
    upload = ("--uncompressed", "--upload", f"s3://{bucket}/ncf/v1/")

    result = smtriton("package", str(repository), "-o", str(tmp_path / "m.tar.gz"), *upload)

    assert result.code == 0, result.err
    assert result.out.strip() == f"s3://{bucket}/ncf/v1/"
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == [
        "ncf/v1/first/1/model.py",
        "ncf/v1/first/config.pbtxt",
        "ncf/v1/second/1/model.py",
        "ncf/v1/second/config.pbtxt",
    ]
    # The link is stored as the file it names: S3 has no links.
    linked = s3.get_object(Bucket=bucket, Key="ncf/v1/second/1/model.py")["Body"].read()
    assert linked == (first / "1" / "model.py").read_bytes()
    assert "uploading 4 files" in result.err

    # SageMaker copies every object under the prefix: a second upload there is refused.
    again = smtriton("package", str(repository), "-o", str(tmp_path / "m.tar.gz"), *upload)
    assert again.code == 1
    assert f"s3://{bucket}/ncf/v1/ already holds objects" in again.err
    assert len(s3.list_objects_v2(Bucket=bucket)["Contents"]) == 4


def test_uncompressed_needs_a_prefix_to_upload_to(smtriton: Smtriton, tmp_path: Path) -> None:
    folder = write_add_model(tmp_path / "repository", name="add")
    for upload in ((), ("--upload", "s3://bucket-1/model.tar.gz")):
        result = smtriton("package", str(folder), "--uncompressed", *upload)
        assert result.code == 1
        assert "--uncompressed uploads the repository's files" in result.err
