"""Turning what SageMaker hands over into a Triton model repository.

The user's folder is never modified: preparation builds a separate prepared
repository whose files are links to the user's, and whose `config.pbtxt`
files are rewritten copies where the host needs a change (KIND_GPU on a host
without a GPU). Triton only ever reads the prepared repository.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from serve import model_config
from serve.errors import ArtifactError, ConfigError
from serve.model_config import CONFIG_FILE, ModelConfig

log = logging.getLogger(__name__)

# A model.tar.gz unpacked on macOS or from a notebook drags these along.
IGNORED_FOLDERS = {"__MACOSX", "__pycache__", "lost+found"}


@dataclasses.dataclass(frozen=True)
class PreparedModel:
    name: str
    path: Path
    # None for models that rely on Triton's config auto-completion.
    config: ModelConfig | None


@dataclasses.dataclass(frozen=True)
class PreparedRepository:
    """The repository Triton serves and the model /invocations runs."""

    path: Path
    default_model: str
    models: tuple[PreparedModel, ...]


def model_folders(model_dir: Path) -> list[Path]:
    """The folders Triton would treat as models (hidden and junk folders skipped)."""
    return sorted(
        entry
        for entry in model_dir.iterdir()
        if entry.is_dir() and not entry.name.startswith(".") and entry.name not in IGNORED_FOLDERS
    )


def prepare_single_model_repository(
    model_dir: Path, destination: Path, default_model_name: str | None, gpu_count: int
) -> PreparedRepository:
    """Prepare `model_dir` (SageMaker's /opt/ml/model) for a single-model endpoint.

    The default model is chosen as NVIDIA's serve script chooses it, except that
    a `config.pbtxt` at the top level, a common packaging mistake the official
    image refuses, is served as the one model it describes.
    """
    if not model_dir.is_dir():
        raise ArtifactError(
            f"model directory {model_dir} does not exist; SageMaker unpacks ModelDataUrl "
            "there, and a local run mounts the model repository there"
        )
    destination.mkdir(parents=True, exist_ok=True)
    if (model_dir / CONFIG_FILE).is_file():
        config = model_config.read_config(model_dir / CONFIG_FILE)
        name = config.name or model_dir.name
        log.warning(
            "%s holds config.pbtxt at its top level; serving it as the single model %r "
            "(package the model inside a folder named after it to silence this)",
            model_dir,
            name,
        )
        model = prepare_model(model_dir, destination / name, name, gpu_count)
        return PreparedRepository(destination, name, (model,))

    folders = model_folders(model_dir)
    if not folders:
        raise ArtifactError(
            f"no model found in {model_dir}: it needs one folder per model, each with "
            "a config.pbtxt and numbered version folders"
        )
    names = [folder.name for folder in folders]
    if default_model_name is not None:
        if default_model_name not in names:
            raise ConfigError(
                f"SAGEMAKER_TRITON_DEFAULT_MODEL_NAME={default_model_name!r} has no folder in "
                f"{model_dir}; folders found: {', '.join(names)}"
            )
        default = default_model_name
    elif len(folders) == 1:
        default = names[0]
        log.info("no SAGEMAKER_TRITON_DEFAULT_MODEL_NAME given; serving the only model %r", default)
    else:
        raise ConfigError(
            f"{model_dir} holds {len(folders)} model folders ({', '.join(names)}); set "
            "SAGEMAKER_TRITON_DEFAULT_MODEL_NAME to the one /invocations should run "
            "(an ensemble's name to run the ensemble)"
        )
    models = tuple(
        prepare_model(folder, destination / folder.name, folder.name, gpu_count)
        for folder in folders
    )
    return PreparedRepository(destination, default, models)


def prepare_model(source: Path, target: Path, name: str, gpu_count: int) -> PreparedModel:
    """Mirror one model folder as links, rewriting its config where the host needs it."""
    _link_tree(source, target)
    config_path = source / CONFIG_FILE
    if not config_path.is_file():
        return PreparedModel(name, target, None)
    config = model_config.read_config(config_path)
    if gpu_count == 0 and model_config.move_gpu_instances_to_cpu(config):
        log.warning(
            "model %r asks for KIND_GPU instances but this host has no GPU; "
            "serving it on the CPU (%s is unchanged)",
            name,
            config_path,
        )
        (target / CONFIG_FILE).unlink()
        model_config.write_config(config, target / CONFIG_FILE)
    return PreparedModel(name, target, config)


def _link_tree(source: Path, target: Path) -> None:
    """Recreate `source`'s folders under `target`, each file a link to the original."""
    source = source.resolve()
    for folder, subfolders, files in os.walk(source, followlinks=True):
        relative = Path(folder).relative_to(source)
        (target / relative).mkdir(parents=True, exist_ok=True)
        subfolders[:] = [name for name in subfolders if name != "__pycache__"]
        for name in files:
            (target / relative / name).symlink_to(Path(folder, name).resolve())
