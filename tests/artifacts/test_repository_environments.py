"""EXECUTION_ENV_PATH in preparation: one cache for every model, configs rewritten, stubs given.

Environments here are conda-pack-shaped folders without an interpreter:
preparation only checks and unpacks them. `test_serving.py` runs real ones.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

from serve.artifacts.archives import ExtractionLimits
from serve.artifacts.environments import EnvironmentCache
from serve.artifacts.repository import Preparation, prepare_single_model_repository
from serve.errors import ArtifactError
from serve.triton import model_config
from tests.artifacts.conftest import PYTHON_VERSION, make_environment, pack_folder
from tests.conftest import write_add_model

OTHER_PYTHON = "3.99"


def fake_stub(path: Path, exit_code: int = 1, message: str = "") -> Path:
    """A stand-in for triton_python_backend_stub: run bare, the real one exits 1."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f'#!/bin/sh\necho "{message}" >&2\necho "$LD_LIBRARY_PATH" >&2\nexit {exit_code}\n'
    )
    path.chmod(0o755)
    return path


def preparation(tmp_path: Path, **stubs: Path) -> Preparation:
    available = {PYTHON_VERSION: fake_stub(tmp_path / "stubs" / PYTHON_VERSION / "stub")}
    available.update({version.replace("_", "."): stub for version, stub in stubs.items()})
    return Preparation(
        gpu_count=0,
        environments=EnvironmentCache(tmp_path / "cache", ExtractionLimits()),
        python_stubs=available,
        default_python=PYTHON_VERSION,
    )


def add_env_model(repository: Path, name: str, value: str) -> Path:
    folder = write_add_model(repository, name=name)
    with (folder / "config.pbtxt").open("a") as config:
        config.write(
            f'parameters {{ key: "EXECUTION_ENV_PATH" value {{ string_value: "{value}" }} }}\n'
        )
    return folder


def env_archive(tmp_path: Path, name: str, **environment: object) -> Path:
    folder = make_environment(tmp_path / "envs" / name, **environment)  # type: ignore[arg-type]
    return pack_folder(folder, tmp_path / "archives" / f"{name}.tar.gz")


def prepared_env_path(model: Path) -> str:
    config = model_config.read_config(model / "config.pbtxt")
    return config.parameters["EXECUTION_ENV_PATH"].string_value


def prepare(model_dir: Path, tmp_path: Path, prep: Preparation, default: str | None = None):
    work = tmp_path / "work"
    shutil.rmtree(work, ignore_errors=True)
    return prepare_single_model_repository(
        model_dir, work / "repository", default, prep, work / "archives"
    )


def test_models_naming_the_same_archive_share_one_extraction_and_a_restart_reuses_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    archive = env_archive(tmp_path, "shared")
    model_dir = tmp_path / "model"
    inside = add_env_model(model_dir, "inside", "$$TRITON_MODEL_DIRECTORY/env.tar.gz")
    shutil.copy(archive, inside / "env.tar.gz")
    add_env_model(model_dir, "beside", "$$TRITON_MODEL_DIRECTORY/../shared-env.tar.gz")
    shutil.copy(archive, model_dir / "shared-env.tar.gz")
    original = (inside / "config.pbtxt").read_text()
    first = preparation(tmp_path)
    caplog.set_level(logging.INFO, logger="serve")

    prepared = prepare(model_dir, tmp_path, first, default="inside")

    environments = [model.environment for model in prepared.models]
    assert all(env is not None for env in environments)
    assert len({env.path for env in environments if env}) == 1
    unpacked = environments[0].path if environments[0] else None
    assert unpacked is not None and unpacked.parent == tmp_path / "cache"
    for model in prepared.models:
        assert prepared_env_path(model.path) == str(unpacked)
        # The prepared config is a rewritten copy; the user's stays as shipped.
        assert not (model.path / "config.pbtxt").is_symlink()
    assert (inside / "config.pbtxt").read_text() == original
    assert (first.environments.misses, first.environments.hits) == (1, 1)  # type: ignore[union-attr]
    assert "2 model(s) use 1 environment(s); 1 unpacked now, 0 from the cache" in caplog.text

    caplog.clear()
    restart = preparation(tmp_path)
    prepare(model_dir, tmp_path, restart, default="inside")
    assert (restart.environments.misses, restart.environments.hits) == (0, 2)  # type: ignore[union-attr]
    assert "1 unpacked now, 1 from the cache" not in caplog.text
    assert "2 model(s) use 1 environment(s); 0 unpacked now, 1 from the cache" in caplog.text


def test_an_environment_for_a_python_without_a_stub_names_both_versions(tmp_path: Path) -> None:
    archive = env_archive(tmp_path, "py399", python_version=OTHER_PYTHON)
    add_env_model(tmp_path / "model", "wrong", str(archive))
    with pytest.raises(ArtifactError) as caught:
        prepare(tmp_path / "model", tmp_path, preparation(tmp_path))
    assert f"built for Python {OTHER_PYTHON}" in caught.value.message
    assert f"stubs only for Python {PYTHON_VERSION}" in caught.value.message
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.suffix != ".lock"] == []


def test_an_environment_without_activate_is_refused(tmp_path: Path) -> None:
    archive = env_archive(tmp_path, "no-activate", activate=False)
    add_env_model(tmp_path / "model", "bare", str(archive))
    with pytest.raises(ArtifactError, match="has no bin/activate"):
        prepare(tmp_path / "model", tmp_path, preparation(tmp_path))


def test_another_python_gets_its_stub_in_the_model_folder(tmp_path: Path) -> None:
    stub = fake_stub(tmp_path / "stubs" / OTHER_PYTHON / "triton_python_backend_stub")
    archive = env_archive(tmp_path, "py399", python_version=OTHER_PYTHON)
    add_env_model(tmp_path / "model", "other", str(archive))
    add_env_model(tmp_path / "model", "same", str(env_archive(tmp_path, "same")))

    prepared = prepare(
        tmp_path / "model", tmp_path, preparation(tmp_path, **{"3_99": stub}), "same"
    )

    other, same = (
        prepared.path / name / "triton_python_backend_stub" for name in ("other", "same")
    )
    assert not same.exists()
    # A real, executable file in the model's folder (not the version folder)
    # that starts the 3.99 stub with the environment's libpython first.
    assert other.is_file() and not other.is_symlink()
    assert os.access(other, os.X_OK)
    text = other.read_text()
    assert f"exec {stub}" in text
    assert f"{prepared_env_path(prepared.path / 'other')}/lib" in text
    assert not list(prepared.path.glob("*/1/triton_python_backend_stub"))


def test_a_stub_that_cannot_start_is_an_error_at_preparation(tmp_path: Path) -> None:
    stub = fake_stub(
        tmp_path / "stubs" / OTHER_PYTHON / "stub", 127, "libpython3.99.so.1.0: cannot open"
    )
    archive = env_archive(tmp_path, "py399", python_version=OTHER_PYTHON)
    add_env_model(tmp_path / "model", "other", str(archive))
    with pytest.raises(ArtifactError) as caught:
        prepare(tmp_path / "model", tmp_path, preparation(tmp_path, **{"3_99": stub}))
    assert f"the Python {OTHER_PYTHON} stub {stub} does not start" in caught.value.message
    assert "libpython3.99.so.1.0: cannot open" in caught.value.message
    assert "must carry lib/libpython3.99.so.1.0" in caught.value.message


def test_an_unpacked_environment_folder_is_named_by_its_absolute_path(tmp_path: Path) -> None:
    folder = add_env_model(tmp_path / "model", "local", "$$TRITON_MODEL_DIRECTORY/env")
    make_environment(folder / "env")

    prepared = prepare(tmp_path / "model", tmp_path, preparation(tmp_path))

    assert prepared_env_path(prepared.path / "local") == str(folder / "env")
    assert prepared.models[0].environment is None
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").glob("*.used"))


def test_without_a_cache_the_value_is_left_to_triton(tmp_path: Path) -> None:
    add_env_model(tmp_path / "model", "plain", "$$TRITON_MODEL_DIRECTORY/env.tar.gz")
    prepared = prepare(tmp_path / "model", tmp_path, Preparation(gpu_count=0))
    assert prepared_env_path(prepared.path / "plain") == "$$TRITON_MODEL_DIRECTORY/env.tar.gz"
    assert (prepared.path / "plain" / "config.pbtxt").is_symlink()


def test_models_naming_the_same_file_hash_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from serve.artifacts import environments

    hashed: list[Path] = []
    real_sha256 = environments._sha256

    def counting_sha256(path: Path) -> str:
        hashed.append(path)
        return real_sha256(path)

    monkeypatch.setattr(environments, "_sha256", counting_sha256)
    archive = env_archive(tmp_path, "shared")
    for name in ("one", "two", "three"):
        add_env_model(tmp_path / "model", name, str(archive))

    prepared = prepare(tmp_path / "model", tmp_path, preparation(tmp_path), "one")

    assert hashed == [archive]
    assert len({model.environment.sha256 for model in prepared.models if model.environment}) == 1
