"""`smtriton package`: model folders (and their environments) into one model.tar.gz.

The archive has the layout the image serves: one folder per model at its
root (SageMaker unpacks it into /opt/ml/model). A Python-backend model given
an environment (`--env MODEL=ENV`) gets it as `MODEL/env.tar.gz`, named by
`EXECUTION_ENV_PATH: $$TRITON_MODEL_DIRECTORY/env.tar.gz` in its config;
models sharing one environment share one copy. ENV is an environment archive,
or an environment folder packed here with conda-pack (conda) or venv-pack
(a `venv --copies`).

Before anything is uploaded the archive goes through the image's own checks,
imported from `serve`: safe extraction, the repository layout, every config
parsed with Triton's schema, every environment unpacked and checked against
the Python versions the image has stubs for.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from serve.artifacts.archives import ARCHIVE_SUFFIXES, JUNK_NAMES, ExtractionLimits, safe_extract
from serve.artifacts.environments import EnvironmentCache
from serve.artifacts.repository import (
    ENV_PARAMETER,
    Preparation,
    PreparedRepository,
    model_folders,
    prepare_single_model_repository,
)
from serve.errors import ServeError
from serve.triton import model_config
from serve.triton.model_config import CONFIG_FILE
from smtriton.aws import AwsOptions, add_aws_arguments, open_session
from smtriton.errors import ConfigError, SmtritonError
from smtriton.s3 import upload_file, upload_tree

log = logging.getLogger(__name__)

# The image's Python (NVIDIA's Triton 24.10 image); its stub is the default.
IMAGE_PYTHON = "3.10"
ENV_FILE = "env.tar.gz"
ENV_VALUE = f"$$TRITON_MODEL_DIRECTORY/{ENV_FILE}"
_SKIPPED_NAMES = JUNK_NAMES | {".ipynb_checkpoints", ".DS_Store"}


@dataclass(frozen=True)
class PackageConfig:
    models: tuple[Path, ...]
    """Model folders (with config.pbtxt), or repositories holding them."""
    output: Path
    environments: dict[str, str] = field(default_factory=dict)
    """Model name -> environment archive or folder."""
    pythons: tuple[str, ...] = (IMAGE_PYTHON,)
    """Python versions the image has stubs for; the first is its default."""
    default_model: str | None = None
    upload: str | None = None
    uncompressed: bool = False
    """Upload the checked repository's files under the --upload prefix, not the archive."""
    aws: AwsOptions = field(default_factory=AwsOptions)

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("name at least one model folder")
        if not self.output.name.endswith(ARCHIVE_SUFFIXES):
            raise ConfigError(f"--output {self.output} must end in .tar.gz, .tgz or .tar")
        if self.uncompressed and not (self.upload and self.upload.endswith("/")):
            raise ConfigError(
                "--uncompressed uploads the repository's files: give --upload s3://bucket/prefix/"
            )
        for version in self.pythons:
            parts = version.split(".")
            if len(parts) != 2 or not all(part.isdigit() for part in parts):
                raise ConfigError(f"--python {version!r} is not a Python version like 3.10")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> PackageConfig:
        environments = {}
        for item in args.env or ():
            model, separator, env = item.partition("=")
            if not separator or not model or not env:
                raise ConfigError(f"--env {item!r} must be MODEL=ENV (an archive or a folder)")
            environments[model] = env
        return cls(
            models=tuple(Path(model) for model in args.models),
            output=Path(args.output),
            environments=environments,
            pythons=tuple(args.python) if args.python else (IMAGE_PYTHON,),
            default_model=args.default_model,
            upload=args.upload,
            uncompressed=args.uncompressed,
            aws=AwsOptions.from_args(args),
        )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "package",
        help="pack model folders and their environments into a checked model.tar.gz",
        description="Pack model folders (one folder per model at the archive's root) and "
        "optional environments into model.tar.gz, check it with the image's own checks, "
        "and optionally upload it to S3.",
    )
    parser.add_argument(
        "models", nargs="+", metavar="MODEL", help="model folder, or a folder of model folders"
    )
    parser.add_argument(
        "-o", "--output", default="model.tar.gz", help="archive to write (default: %(default)s)"
    )
    parser.add_argument(
        "--env",
        action="append",
        metavar="MODEL=ENV",
        help="give Python-backend MODEL the environment ENV: an environment archive, or a "
        "conda environment folder (packed with conda-pack) or venv (packed with venv-pack); "
        "repeat for more models",
    )
    parser.add_argument(
        "--python",
        action="append",
        metavar="X.Y",
        help=f"a Python version the image has a stub for (default: {IMAGE_PYTHON}); "
        "repeat for more, the first being the image's default",
    )
    parser.add_argument(
        "--default-model",
        help="check that this model (SAGEMAKER_TRITON_DEFAULT_MODEL_NAME) is in the package",
    )
    parser.add_argument("--upload", metavar="S3_URI", help="upload the archive there")
    parser.add_argument(
        "--uncompressed",
        action="store_true",
        help="upload the checked repository's files under the --upload prefix instead of the "
        "archive (deploy --model-data PREFIX/: SageMaker copies them as they are, nothing to "
        "unpack; AWS's advice for large models)",
    )
    add_aws_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = PackageConfig.from_args(args)
    archive = package(config)
    if config.upload and config.uncompressed:
        print(upload_uncompressed(config, archive))
    elif config.upload:
        print(upload_file(open_session(config.aws), archive, config.upload))
    else:
        print(archive)
    return 0


def upload_uncompressed(config: PackageConfig, archive: Path) -> str:
    """The checked archive's files, unpacked here, uploaded under the --upload prefix.

    What goes up is what the image's checks passed, file for file (links
    already stored as the files they name). S3 keeps no empty folders: an
    ensemble's empty version folder is left behind, and the image adds it
    back when it prepares the repository.
    """
    assert config.upload is not None
    session = open_session(config.aws)
    with tempfile.TemporaryDirectory(prefix="smtriton-upload-") as scratch:
        repository = Path(scratch) / "repository"
        safe_extract(archive, repository, ExtractionLimits())
        return upload_tree(session, repository, config.upload)


def package(config: PackageConfig) -> Path:
    """Write and check the archive; returns its path. Nothing is left on failure."""
    models = _collect_models(config.models)
    unknown = sorted(set(config.environments) - set(models))
    if unknown:
        raise ConfigError(
            f"--env names {', '.join(unknown)}, not among the models: {', '.join(models)}"
        )
    if config.default_model is not None and config.default_model not in models:
        raise ConfigError(
            f"--default-model {config.default_model!r} is not among the models: {', '.join(models)}"
        )
    config.output.parent.mkdir(parents=True, exist_ok=True)
    partial = config.output.with_name(f".{config.output.name}.partial")
    with tempfile.TemporaryDirectory(prefix="smtriton-package-") as scratch:
        try:
            members = _members(models, config.environments, Path(scratch) / "staged")
            _write_archive(partial, members)
            prepared = verify(partial, config, Path(scratch) / "verify")
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    os.replace(partial, config.output)
    environments = {m.environment.sha256 for m in prepared.models if m.environment}
    log.info(
        "wrote %s (%d bytes): %s; %d environment(s); checked as the image checks it",
        config.output,
        config.output.stat().st_size,
        ", ".join(m.name for m in prepared.models),
        len(environments),
    )
    return config.output


def verify(archive: Path, config: PackageConfig, scratch: Path) -> PreparedRepository:
    """Unpack and prepare `archive` as the image does; `SmtritonError` says what it would refuse."""
    limits = ExtractionLimits()
    stubs = {version: Path(f"/image/stubs/{version}") for version in config.pythons}
    preparation = Preparation(
        # Keep KIND_GPU as written: the endpoint has the GPUs, not this machine.
        gpu_count=1,
        environments=EnvironmentCache(scratch / "environments", limits),
        python_stubs=stubs,
        default_python=config.pythons[0],
        extraction_limits=limits,
        start_stubs=False,
    )
    try:
        safe_extract(archive, scratch / "model", limits)
        names = [folder.name for folder in model_folders(scratch / "model")]
        default = config.default_model
        if default is None and len(names) > 1:
            log.info(
                "%d models: the endpoint needs SAGEMAKER_TRITON_DEFAULT_MODEL_NAME "
                "(one of %s) unless it is a multi-model endpoint",
                len(names),
                ", ".join(names),
            )
            default = names[0]
        return prepare_single_model_repository(
            scratch / "model", scratch / "repository", default, preparation
        )
    except ServeError as error:
        raise SmtritonError(f"the image would refuse this package: {error.message}") from None


@dataclass(frozen=True)
class _Member:
    """One file of the archive: where it comes from, and its name inside."""

    source: Path
    name: str


def _collect_models(paths: Sequence[Path]) -> dict[str, Path]:
    """Model name -> folder, from model folders and from folders of model folders."""
    models: dict[str, Path] = {}
    for path in paths:
        if not path.is_dir():
            raise ConfigError(f"{path} is not a folder")
        found = [path] if (path / CONFIG_FILE).is_file() else model_folders(path)
        if not found:
            raise ConfigError(
                f"{path} is neither a model folder (config.pbtxt) nor a folder of model folders"
            )
        for folder in found:
            name = folder.resolve().name
            if name in models:
                raise ConfigError(f"two models named {name!r}: {models[name]} and {folder}")
            models[name] = folder
    return models


def _members(models: dict[str, Path], environments: dict[str, str], staged: Path) -> list[_Member]:
    """Every file to archive, with configs rewritten to name the environments given."""
    staged.mkdir(parents=True)
    members: list[_Member] = []
    env_homes: dict[Path, str] = {}
    for name, folder in models.items():
        env = environments.get(name)
        for path in _files(folder):
            relative = path.relative_to(folder).as_posix()
            if env is not None and relative in (CONFIG_FILE, ENV_FILE):
                continue
            members.append(_Member(path, f"{name}/{relative}"))
        if env is None:
            continue
        archive = _environment_archive(Path(env), staged / f"{name}-{ENV_FILE}")
        key = archive.resolve()
        home = env_homes.setdefault(key, name)
        if home == name:
            members.append(_Member(archive, f"{name}/{ENV_FILE}"))
            value = ENV_VALUE
        else:
            value = f"$$TRITON_MODEL_DIRECTORY/../{home}/{ENV_FILE}"
        config_path = staged / f"{name}-{CONFIG_FILE}"
        _config_with_environment(folder / CONFIG_FILE, config_path, name, value)
        members.append(_Member(config_path, f"{name}/{CONFIG_FILE}"))
    return members


def _files(folder: Path) -> Iterator[Path]:
    """The folder's files and subfolders (an ensemble's version folder is empty, yet needed)."""
    for root, subfolders, files in os.walk(folder, followlinks=True):
        subfolders[:] = sorted(d for d in subfolders if d not in _SKIPPED_NAMES)
        for name in subfolders:
            yield Path(root, name)
        for name in sorted(files):
            if name not in _SKIPPED_NAMES and not name.endswith(".pyc"):
                yield Path(root, name)


def _environment_archive(env: Path, packed: Path) -> Path:
    """`env` itself when it is an archive; else the folder packed with conda-pack or venv-pack."""
    if env.is_file():
        if not env.name.endswith(ARCHIVE_SUFFIXES):
            raise ConfigError(f"environment {env} is neither a .tar.gz archive nor a folder")
        return env
    if not env.is_dir():
        raise ConfigError(f"environment {env} does not exist")
    if (env / "conda-meta").is_dir():
        tool, command = "conda-pack", ["conda-pack", "-p", str(env), "-o", str(packed)]
        hint = "install it (`conda install -c conda-forge conda-pack`) or pass an archive"
    elif (env / "pyvenv.cfg").is_file():
        tool, command = "venv-pack", ["venv-pack", "-p", str(env), "-o", str(packed)]
        hint = (
            "install it (`pip install venv-pack`; the venv must be made with "
            "`python -m venv --copies`) or pass an archive"
        )
    else:
        raise ConfigError(
            f"environment {env} is neither a conda environment (conda-meta/) nor a virtual "
            "environment (pyvenv.cfg); pass an environment archive instead"
        )
    if shutil.which(tool) is None:
        raise SmtritonError(f"packing {env} needs {tool}, which is not on PATH: {hint}")
    log.info("packing %s with %s", env, tool)
    result = subprocess.run(command, capture_output=True, text=True, errors="replace", check=False)
    if result.returncode != 0 or not packed.is_file():
        output = (result.stderr.strip() or result.stdout.strip())[-2000:]
        raise SmtritonError(f"{tool} could not pack {env} (exit {result.returncode}): {output}")
    return packed


def _config_with_environment(source: Path, target: Path, name: str, value: str) -> None:
    if not source.is_file():
        raise ConfigError(
            f"model {name!r} has no {CONFIG_FILE}; a model given an environment needs one"
        )
    try:
        config = model_config.read_config(source)
    except ServeError as error:
        raise SmtritonError(error.message) from None
    if not model_config.is_python_backend(config):
        log.warning(
            "model %r uses backend %r; EXECUTION_ENV_PATH is read by the Python backend "
            "and Python-based backends only",
            name,
            config.backend or config.platform,
        )
    config.parameters[ENV_PARAMETER].string_value = value
    model_config.write_config(config, target)


def _write_archive(path: Path, members: list[_Member]) -> None:
    """A gzip tar with plain, owner-neutral entries; links are stored as the files they name."""

    def neutral(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    with tarfile.open(path, "w:gz", dereference=True) as tar:
        for member in members:
            tar.add(member.source, arcname=member.name, recursive=False, filter=neutral)
