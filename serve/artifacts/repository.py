"""Turning what SageMaker hands over into a Triton model repository.

The user's folder is never modified: preparation builds a separate prepared
repository whose files are links to the user's, and whose `config.pbtxt`
files are rewritten copies where the host needs a change (KIND_GPU on a host
without a GPU, an environment archive unpacked into the cache). Model archives
in the user's folder are unpacked into the run's workspace first and their
models join the others. Triton only ever reads the prepared repository.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

from serve.artifacts.archives import (
    ARCHIVE_SUFFIXES,
    ExtractionLimits,
    find_model_archives,
    is_junk,
    model_root,
    safe_extract,
)
from serve.artifacts.environments import (
    MODEL_DIRECTORY_VARIABLE,
    EnvironmentCache,
    PreparedEnvironment,
    inspect_folder,
    resolve_env_path,
)
from serve.artifacts.paths import check_name, inside, is_inside
from serve.errors import ArtifactError, ConfigError
from serve.machine.users import RunAs, popen_user
from serve.settings import Settings
from serve.triton import model_config
from serve.triton.install import RUNNING_PYTHON, STUB_NAME, TritonInstall
from serve.triton.model_config import CONFIG_FILE, ModelConfig

log = logging.getLogger(__name__)

# The config parameter naming a Python-backend model's own environment.
ENV_PARAMETER = "EXECUTION_ENV_PATH"
# What to do about a model name taken from content that serve cannot use.
CONTENT_NAME_FIX = (
    "rename the model (in its config.pbtxt, or its folder) to a plain name, without '/', "
    "'..' or control characters"
)
_STUB_CHECK_TIMEOUT_S = 30


@dataclasses.dataclass(frozen=True)
class Preparation:
    """What preparing any model needs to know about the host and the server; one per run."""

    gpu_count: int
    # Unpacks EXECUTION_ENV_PATH archives once; None leaves them to Triton,
    # which unpacks them again for every model and every load.
    environments: EnvironmentCache | None = None
    # Python "major.minor" -> Python-backend stub (TritonInstall.python_stubs).
    python_stubs: Mapping[str, Path] = dataclasses.field(default_factory=dict)
    # The Python of the stub models run on unless they get one of their own.
    default_python: str = RUNNING_PYTHON
    # Limits for model archives (the cache has its own, usually the same).
    extraction_limits: ExtractionLimits = dataclasses.field(default_factory=ExtractionLimits)
    # Run each stub given to a model once, as Triton will; off where the stubs
    # are another machine's (checking a package for the image).
    start_stubs: bool = True
    # Multi-model uploads: EXECUTION_ENV_PATH must lie in this folder (the models
    # root), so an upload cannot have Triton run, or serve unpack, what lies elsewhere
    # on the host. None: anywhere (the endpoint's own /opt/ml/model).
    environments_root: Path | None = None
    # The user Triton runs as (serve/machine/users.py): it must be able to read every
    # model's files, and the stub check runs as it. None: serve's own user.
    run_as: RunAs | None = None


def server_preparation(
    settings: Settings, install: TritonInstall, gpu_count: int, run_as: RunAs | None = None
) -> Preparation:
    """The run's `Preparation`: limits and environment cache from settings, stubs from Triton."""
    try:
        environments = EnvironmentCache(settings.env_cache, ExtractionLimits.of(settings), run_as)
    except OSError as exc:
        raise ConfigError(
            f"SERVE_ENV_CACHE={settings.env_cache} cannot be used as the environment cache "
            f"({exc}); point it at a writable folder"
        ) from exc
    return Preparation(
        gpu_count=gpu_count,
        environments=environments,
        python_stubs=dict(install.python_stubs),
        default_python=install.default_python,
        extraction_limits=ExtractionLimits.of(settings),
        run_as=run_as,
    )


@dataclasses.dataclass(frozen=True)
class PreparedModel:
    name: str
    path: Path
    # None for models that rely on Triton's config auto-completion.
    config: ModelConfig | None
    # The unpacked environment EXECUTION_ENV_PATH now names, if it named an archive.
    environment: PreparedEnvironment | None = None


@dataclasses.dataclass(frozen=True)
class PreparedRepository:
    """The repository Triton serves and the model /invocations runs."""

    path: Path
    default_model: str
    models: tuple[PreparedModel, ...]


def model_folders(model_dir: Path) -> list[Path]:
    """The folders Triton would treat as models (hidden and junk folders skipped)."""
    return sorted(entry for entry in model_dir.iterdir() if entry.is_dir() and not is_junk(entry))


def prepare_single_model_repository(
    model_dir: Path,
    destination: Path,
    default_model_name: str | None,
    preparation: Preparation,
    archives_dir: Path | None = None,
) -> PreparedRepository:
    """Prepare `model_dir` (SageMaker's /opt/ml/model) for a single-model endpoint.

    Model archives (`model.tar.gz`, `.tgz`, `.tar`) at the top of `model_dir`
    are unpacked into `archives_dir` (default: next to `destination`) and
    their models served with the folders beside them; an archive that some
    model's EXECUTION_ENV_PATH names is an environment and stays as it is.
    The default model is chosen as NVIDIA's serve script chooses it, except
    that a `config.pbtxt` at the top level, a common packaging mistake the
    official image refuses, is served as the one model it describes.
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
        check_name(name, f"{model_dir / CONFIG_FILE} names the model", CONTENT_NAME_FIX)
        log.warning(
            "%s holds config.pbtxt at its top level; serving it as the single model %r "
            "(package the model inside a folder named after it to silence this)",
            model_dir,
            name,
        )
        target = inside(destination, name, what="model name")
        model = prepare_model(model_dir, target, name, preparation)
        return PreparedRepository(destination, name, (model,))

    if archives_dir is None:
        archives_dir = destination.parent / "archives"
    sources = model_sources(model_dir, archives_dir, preparation.extraction_limits)
    if not sources:
        raise ArtifactError(
            f"no model found in {model_dir}: it needs one folder per model, each with "
            "a config.pbtxt and numbered version folders, or a model.tar.gz holding them"
        )
    names = list(sources)
    if default_model_name is not None:
        if default_model_name not in names:
            raise ConfigError(
                f"SAGEMAKER_TRITON_DEFAULT_MODEL_NAME={default_model_name!r} has no folder in "
                f"{model_dir}; folders found: {', '.join(names)}"
            )
        default = default_model_name
    elif len(names) == 1:
        default = names[0]
        log.info("no SAGEMAKER_TRITON_DEFAULT_MODEL_NAME given; serving the only model %r", default)
    else:
        raise ConfigError(
            f"{model_dir} holds {len(names)} model folders ({', '.join(names)}); set "
            "SAGEMAKER_TRITON_DEFAULT_MODEL_NAME to the one /invocations should run "
            "(an ensemble's name to run the ensemble)"
        )
    models = tuple(
        prepare_model(source, inside(destination, name, what="model name"), name, preparation)
        for name, source in sources.items()
    )
    _log_environments(models)
    return PreparedRepository(destination, default, models)


def unpack_model_archive(
    archive: Path, destination: Path, limits: ExtractionLimits
) -> dict[str, Path]:
    """Unpack a model archive into `destination`; its models by name.

    Both layouts users produce work: model folders at the archive's root, or
    one folder around them. An archive of one model's own files (config.pbtxt
    at its root) is that model, named by its config (else by the archive).
    """
    safe_extract(archive, destination, limits)
    root = model_root(destination)
    if (root / CONFIG_FILE).is_file():
        config = model_config.read_config(root / CONFIG_FILE)
        where = f"{archive.name}: {CONFIG_FILE} names the model"
        name = check_name(config.name, where, CONTENT_NAME_FIX) if config.name else None
        name = name or check_name(_archive_stem(archive), f"archive {archive}", CONTENT_NAME_FIX)
        log.info("archive %s holds the files of one model; serving it as %r", archive, name)
        return {name: root}
    folders = model_folders(root)
    if not folders:
        raise ArtifactError(
            f"archive {archive} holds no model folder: put one folder per model (its "
            "config.pbtxt and numbered version folders) at the archive's top, e.g. "
            "`tar -C model_repository -czf model.tar.gz .`"
        )
    return {_folder_name(folder, destination): folder for folder in folders}


def prepare_model(source: Path, target: Path, name: str, preparation: Preparation) -> PreparedModel:
    """Mirror one model folder as links, rewriting its config where the host needs it.

    KIND_GPU instances move to the CPU on a host without a GPU; an
    EXECUTION_ENV_PATH archive is unpacked through the environment cache and
    the config points at the unpacked folder; a model whose environment has
    another Python than the server's default gets that Python's stub.
    A file Triton's user could not read is refused here, by name.
    """
    config_path = source / CONFIG_FILE
    config = model_config.read_config(config_path) if config_path.is_file() else None
    if preparation.run_as is not None:
        preparation.run_as.check_readable(source, _read_by_serve(config, source, preparation))
    _link_tree(source, target)
    if config is None:
        return PreparedModel(name, target, None)
    _give_ensemble_a_version(config, target, name)
    changed = False
    if preparation.gpu_count == 0 and model_config.move_gpu_instances_to_cpu(config):
        log.warning(
            "model %r asks for KIND_GPU instances but this host has no GPU; "
            "serving it on the CPU (%s is unchanged)",
            name,
            config_path,
        )
        changed = True
    environment, env_changed = _prepare_environment(config, source, target, name, preparation)
    if changed or env_changed:
        (target / CONFIG_FILE).unlink()
        model_config.write_config(config, target / CONFIG_FILE)
    return PreparedModel(name, target, config, environment)


def _give_ensemble_a_version(config: ModelConfig, target: Path, name: str) -> None:
    """An ensemble whose version folder is missing gets an empty one (version 1).

    An ensemble's version folder holds nothing, and an uncompressed S3 prefix
    (ModelDataSource, CompressionType None) keeps no empty folder: SageMaker
    copies files only, so the folder never reaches /opt/ml/model, and Triton
    refuses a model without a version.
    """
    if config.platform != "ensemble":
        return
    if any(entry.name.isdigit() and entry.is_dir() for entry in target.iterdir()):
        return
    (target / "1").mkdir()
    log.info(
        "model %r is an ensemble without a version folder (an uncompressed S3 prefix keeps "
        "no empty folders); serving it as version 1",
        name,
    )


def model_sources(model_dir: Path, archives_dir: Path, limits: ExtractionLimits) -> dict[str, Path]:
    """Every model of `model_dir` by name: its folders, then the models of its archives.

    Every name is checked (`paths.check_name`), whether a folder's or a config's.
    """
    sources = {_folder_name(folder, model_dir): folder for folder in model_folders(model_dir)}
    environments = _named_environments(sources.values())
    unpacked: list[Path] = []
    try:
        for archive in find_model_archives(model_dir):
            if archive.resolve() in environments:
                log.info("%s is an environment a model names, not a model archive", archive)
                continue
            destination = inside(archives_dir, archive.name, what="archive name")
            unpacked.append(destination)
            for name, folder in unpack_model_archive(archive, destination, limits).items():
                if name in sources:
                    raise ArtifactError(
                        f"model {name!r} is both {sources[name]} and "
                        f"{folder.relative_to(destination)} in archive {archive}; keep one of them"
                    )
                sources[name] = folder
    except BaseException:
        for destination in unpacked:
            shutil.rmtree(destination, ignore_errors=True)
        raise
    return sources


def _folder_name(folder: Path, root: Path) -> str:
    """A model folder's name, the model's: checked as every name from content is."""
    where = f"model folder {folder.relative_to(root)} in {root}"
    return check_name(folder.name, where, CONTENT_NAME_FIX)


def shown_path(path: Path, *roots: Path) -> str:
    """`path` as a caller knows it: relative to the first of `roots` that holds it.

    An upload's archives are unpacked into a staging folder named after each
    archive, so a file of one shows as `model.tar.gz/<path inside it>`.
    """
    for root in roots:
        if path.is_relative_to(root):
            return str(path.relative_to(root))
    return str(path)


def _named_environments(folders: Iterable[Path]) -> set[Path]:
    """The archives the models in `folders` name as their EXECUTION_ENV_PATH."""
    named = set()
    for folder in folders:
        if (folder / CONFIG_FILE).is_file():
            value = _env_value(model_config.read_config(folder / CONFIG_FILE))
            if value:
                named.add(resolve_env_path(value, folder).resolve())
    return named


def _env_value(config: ModelConfig) -> str:
    if ENV_PARAMETER not in config.parameters:
        return ""
    return config.parameters[ENV_PARAMETER].string_value.strip()


def _read_by_serve(
    config: ModelConfig | None, source: Path, preparation: Preparation
) -> tuple[Path, ...]:
    """The files of model folder `source` that serve reads and Triton does not: the
    environment archive that the cache unpacks."""
    value = _env_value(config) if config is not None else ""
    if not value or preparation.environments is None:
        return ()
    try:
        return (resolve_env_path(value, source),)
    except ArtifactError:
        return ()  # refused where the environment is prepared


def _prepare_environment(
    config: ModelConfig, source: Path, target: Path, name: str, preparation: Preparation
) -> tuple[PreparedEnvironment | None, bool]:
    """Point EXECUTION_ENV_PATH at an unpacked environment; (the environment, config changed).

    The value is resolved against the user's model folder (where the archive
    was shipped), so `$$TRITON_MODEL_DIRECTORY` keeps its meaning although
    Triton sees the prepared copy.
    """
    value = _env_value(config)
    if not value or preparation.environments is None:
        return None, False
    location = resolve_env_path(value, source)
    root = preparation.environments_root
    if root is not None and not is_inside(location, root):
        raise ArtifactError(
            f"model {name!r}: {ENV_PARAMETER} {value!r} names {location}, outside {root}; "
            "an upload's environment ships with it: name it as "
            f"{MODEL_DIRECTORY_VARIABLE}/<archive>"
        )
    parameter = config.parameters[ENV_PARAMETER]
    if location.is_dir():
        python_version = inspect_folder(location, preparation.python_stubs)
        if preparation.run_as is not None:
            preparation.run_as.check_readable(location)
        parameter.string_value = str(location)
        _give_stub(target, name, location, python_version, preparation)
        return None, True
    environment = preparation.environments.materialize(location, preparation.python_stubs)
    parameter.string_value = str(environment.path)
    _give_stub(target, name, environment.path, environment.python_version, preparation)
    return environment, True


def _give_stub(
    target: Path, name: str, environment: Path, python_version: str, preparation: Preparation
) -> None:
    """Give a model whose environment has another Python than the default that Python's stub.

    The Python backend runs `triton_python_backend_stub` from the model's own
    folder when there is one (not from a version folder). It is a small
    script, not a link: before each start Triton runs the stub bare, outside
    the environment, and on any exit code but 1 it chmods it (through a link,
    the installation's own file); and a copied binary loses the libraries its
    RPATH finds next to the original. The script puts the environment's
    libpython first and starts the real stub, and is run once here the way
    Triton will run it, so a stub that cannot start fails now, by name.
    """
    own_stub = target / STUB_NAME
    if own_stub.is_symlink():
        # The user shipped a stub: theirs wins, as a private executable copy.
        shipped = own_stub.resolve()
        own_stub.unlink()
        shutil.copy2(shipped, own_stub)
        own_stub.chmod(0o755)
        log.info("model %r runs on the stub it ships (%s)", name, shipped)
        return
    if python_version == preparation.default_python:
        return
    stub = preparation.python_stubs[python_version]
    library = shlex.quote(str(environment / "lib"))
    own_stub.write_text(
        "#!/bin/sh\n"
        f"# Written by serve: model {name!r} runs on Python {python_version}.\n"
        f'LD_LIBRARY_PATH={library}"${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}"\n'
        "export LD_LIBRARY_PATH\n"
        f'exec {shlex.quote(str(stub))} "$@"\n'
    )
    own_stub.chmod(0o755)
    if not preparation.start_stubs:
        return
    try:
        # As Triton's user: the stub is Triton's (NVIDIA's images give their installation
        # to that user), and it is run the way Triton will run it.
        check = subprocess.run(
            [str(own_stub)],
            **popen_user(preparation.run_as),
            capture_output=True,
            text=True,
            errors="replace",
            timeout=_STUB_CHECK_TIMEOUT_S,
            check=False,
        )
        problem = "" if check.returncode == 1 else check.stderr.strip()[-1000:]
        problem = problem or ("" if check.returncode == 1 else f"exit code {check.returncode}")
    except (OSError, subprocess.TimeoutExpired) as exc:
        problem = str(exc)
    if problem:
        raise ArtifactError(
            f"model {name!r}: the Python {python_version} stub {stub} does not start with "
            f"environment {environment}: {problem}; the environment must carry "
            f"lib/libpython{python_version}.so.1.0 (conda-pack archives do; add it to a "
            "venv-pack one before packing)"
        )
    log.info(
        "model %r runs on Python %s (stub %s; the server's default is %s)",
        name,
        python_version,
        stub,
        preparation.default_python,
    )


def _log_environments(models: tuple[PreparedModel, ...]) -> None:
    environments = [model.environment for model in models if model.environment is not None]
    if environments:
        unpacked = {env.sha256 for env in environments if not env.cache_hit}
        log.info(
            "environments: %d model(s) use %d environment(s); %d unpacked now, %d from the cache",
            len(environments),
            len({env.sha256 for env in environments}),
            len(unpacked),
            len({env.sha256 for env in environments} - unpacked),
        )


def _archive_stem(archive: Path) -> str:
    name = archive.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _link_tree(source: Path, target: Path) -> None:
    """Recreate `source`'s folders under `target`, each file a link to the original.

    A symbolic link to nothing (a model folder packed without the sibling its
    link names, as `tar` packs one of the NCF examples) is an error naming it:
    Triton never finishes loading such a model, so start-up or the load would
    wait out its whole timeout.
    """
    source = source.resolve()
    for folder, subfolders, files in os.walk(source, followlinks=True):
        relative = Path(folder).relative_to(source)
        (target / relative).mkdir(parents=True, exist_ok=True)
        subfolders[:] = [name for name in subfolders if name != "__pycache__"]
        for name in files:
            original = Path(folder, name)
            if not original.exists():
                raise ArtifactError(
                    f"{relative / name} in {source} is a symbolic link to "
                    f"{os.readlink(original)!r}, which does not exist; give the file itself "
                    "(tar --dereference, tarfile.open(..., dereference=True))"
                )
            (target / relative / name).symlink_to(original.resolve())
