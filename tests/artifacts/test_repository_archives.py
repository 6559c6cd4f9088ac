"""Model archives in /opt/ml/model: unpacked into the workspace, their models served.

Preparation is exercised directly here (fast); `test_serving.py` runs the
same layouts through real Triton.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
from pathlib import Path

import pytest

from serve.artifacts.archives import ExtractionLimits
from serve.artifacts.repository import Preparation, prepare_single_model_repository
from serve.errors import ArtifactError, ConfigError
from serve.settings import Settings
from tests.artifacts.conftest import member, pack_folder, write_tar
from tests.conftest import write_add_model

CPU_HOST = Preparation(gpu_count=0)


def tree_digest(root: Path) -> dict[str, str]:
    """Every entry under `root`: file contents, link targets, folders."""
    digest = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        if path.is_symlink():
            digest[relative] = f"-> {path.readlink()}"
        elif path.is_file():
            digest[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            digest[relative] = "dir"
    return digest


def repository_archive(tmp_path: Path, archive: Path, names: list[str], wrapper: str = "") -> Path:
    """An archive of add models, at its root or inside one `wrapper` folder."""
    stage = tmp_path / "stage" / archive.name
    root = stage / wrapper if wrapper else stage
    for name in names:
        write_add_model(root, name=name)
    return pack_folder(stage, archive)


def prepare(model_dir: Path, tmp_path: Path, default: str | None = None, **preparation: object):
    return prepare_single_model_repository(
        model_dir,
        tmp_path / "work" / "repository",
        default,
        Preparation(gpu_count=0, **preparation),  # type: ignore[arg-type]
        tmp_path / "work" / "archives",
    )


def test_archives_in_both_layouts_join_the_folders_beside_them(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    write_add_model(model_dir, name="folder_model")
    repository_archive(tmp_path, model_dir / "model.tar.gz", ["flat_a", "flat_b"])
    repository_archive(tmp_path, model_dir / "wrapped.tgz", ["wrapped"], wrapper="models")
    before = tree_digest(model_dir)

    prepared = prepare(model_dir, tmp_path, default="wrapped")

    assert [m.name for m in prepared.models] == ["folder_model", "flat_a", "flat_b", "wrapped"]
    assert prepared.default_model == "wrapped"
    archives = tmp_path / "work" / "archives"
    model_py = prepared.path / "wrapped" / "1" / "model.py"
    assert model_py.resolve().is_relative_to(archives / "wrapped.tgz" / "models" / "wrapped")
    assert (prepared.path / "flat_a" / "config.pbtxt").resolve().is_relative_to(archives)
    # The user's folder is read, never written: no extraction lands there.
    assert tree_digest(model_dir) == before


def test_an_archive_of_one_models_files_is_that_model(tmp_path: Path) -> None:
    folder = write_add_model(tmp_path / "stage", name="single")
    pack_folder(folder, tmp_path / "model" / "model.tar.gz")

    prepared = prepare(tmp_path / "model", tmp_path)

    assert prepared.default_model == "single"
    assert (prepared.path / "single" / "1" / "model.py").is_file()


def test_only_archives_and_the_default_name_rules_apply_to_their_models(tmp_path: Path) -> None:
    repository_archive(tmp_path, tmp_path / "model" / "model.tar", ["alpha", "beta"])
    with pytest.raises(ConfigError, match=r"holds 2 model folders \(alpha, beta\)"):
        prepare(tmp_path / "model", tmp_path)


def test_a_model_in_a_folder_and_in_an_archive_is_refused(tmp_path: Path) -> None:
    write_add_model(tmp_path / "model", name="twice")
    repository_archive(tmp_path, tmp_path / "model" / "model.tar.gz", ["twice"])
    with pytest.raises(ArtifactError, match=r"model .twice. is both .* in archive .*model.tar.gz"):
        prepare(tmp_path / "model", tmp_path)
    assert not any((tmp_path / "work" / "archives").iterdir())


def test_a_hostile_archive_stops_preparation_and_leaves_nothing(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    # Unpacked first (name order), so the refusal must also remove it.
    repository_archive(tmp_path, model_dir / "a-good.tar.gz", ["good"])
    write_tar(
        model_dir / "b-evil.tar.gz",
        [member("evil/config.pbtxt", b'backend: "python"'), member("../../escaped", b"x")],
    )
    before = tree_digest(tmp_path)

    with pytest.raises(ArtifactError) as caught:
        prepare(model_dir, tmp_path)

    assert "b-evil.tar.gz" in caught.value.message
    assert "'../../escaped' has '..'" in caught.value.message
    assert list((tmp_path / "work" / "archives").iterdir()) == []
    after = tree_digest(tmp_path)
    assert {path for path in after if not path.startswith("work")} == set(before)


def test_an_archive_without_models_is_refused_by_name(tmp_path: Path) -> None:
    write_tar(tmp_path / "model" / "notes.tar.gz", [member("README.txt", b"no models here")])
    with pytest.raises(ArtifactError, match=r"notes\.tar\.gz holds no model folder"):
        prepare(tmp_path / "model", tmp_path)


def test_an_environment_a_model_names_beside_the_models_is_not_a_model_archive(
    tmp_path: Path,
) -> None:
    folder = write_add_model(tmp_path / "model", name="uses_env")
    with (folder / "config.pbtxt").open("a") as config:
        config.write(
            'parameters { key: "EXECUTION_ENV_PATH" '
            'value { string_value: "$$TRITON_MODEL_DIRECTORY/../shared-env.tar.gz" } }\n'
        )
    write_tar(tmp_path / "model" / "shared-env.tar.gz", [member("bin/activate", b"")])

    # No environment cache: the value is left to Triton, but still not a model archive.
    prepared = prepare(tmp_path / "model", tmp_path)

    assert [m.name for m in prepared.models] == ["uses_env"]
    assert not (tmp_path / "work" / "archives").exists()


def test_archive_limits_come_from_settings(tmp_path: Path) -> None:
    settings = Settings.from_environ(
        {"SERVE_MAX_ARCHIVE_MEMBERS": "3", "SERVE_MAX_ARCHIVE_BYTES": "1000000"}
    )
    assert ExtractionLimits.of(settings) == ExtractionLimits(1_000_000, 3)
    assert ExtractionLimits.of(Settings.from_environ({})) == ExtractionLimits()
    with pytest.raises(ConfigError, match="SERVE_MAX_ARCHIVE_BYTES='lots'"):
        Settings.from_environ({"SERVE_MAX_ARCHIVE_BYTES": "lots"})

    repository_archive(tmp_path, tmp_path / "model" / "model.tar.gz", ["a", "b"])
    with tarfile.open(tmp_path / "model" / "model.tar.gz") as tar:
        assert len(tar.getmembers()) > 3
    with pytest.raises(ArtifactError, match="more than 3 members"):
        prepare(tmp_path / "model", tmp_path, extraction_limits=ExtractionLimits.of(settings))


def test_top_level_config_keeps_its_archives_as_its_own_files(tmp_path: Path) -> None:
    folder = write_add_model(tmp_path / "stage", name="flat")
    shutil.copytree(folder, tmp_path / "model")
    write_tar(tmp_path / "model" / "data.tar.gz", [member("weights.bin", b"\0" * 16)])

    prepared = prepare(tmp_path / "model", tmp_path)

    assert prepared.default_model == "flat"
    assert (prepared.path / "flat" / "data.tar.gz").is_symlink()
    assert not (tmp_path / "work" / "archives").exists()
