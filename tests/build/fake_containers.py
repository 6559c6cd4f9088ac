"""What answers behind the AWS stand-in's endpoints, components and jobs: real `serve`s.

SageMaker starts the image for each endpoint variant, inference component
copy, transform job and serverless endpoint, with the model data unpacked
into /opt/ml/model. The stand-in does the same for images it is told it may
run (`POST /_fake/images` with `{"image": IMAGE, "command": [...], "root":
DIR, "env": {...}}`: a command that serves as the image would, such as
`.venv/bin/serve`): it lays out an /opt/ml under ROOT from its own S3 (a
model.tar.gz unpacked, an uncompressed S3Prefix copied key by key, an empty
models/ folder for a multi-model endpoint), starts the command there with the
container's environment and SAGEMAKER_BIND_TO_PORT, and reports the endpoint
(or component, or job) InService only once /ping answers 200, or Failed with
the tail of the container's output when it exits first.

An inference component's copy gets its share of the host as SageMaker gives
it, where this machine lets the stand-in make cgroups (root, a writable cpu
and memory hierarchy): a CPU quota of NumberOfCpuCoresRequired and a memory
limit of MaxMemoryRequiredInMb (else MinMemoryRequiredInMb, the stand-in's
reading of which one SageMaker enforces), so serve meets the limits it
reads. The container's log says which it got.

One shortcut, for a machine with two cores: users of the same container
(same image, model data and environment) share one running copy, where
SageMaker would start one per instance or copy. Each user holds it; the last
to let go stops it (SIGTERM, as SageMaker does, then SIGKILL).

A `serve` someone else started (`POST /_fake/containers`, the older way,
used where a test owns the process) stands in for every container of its
image and mode.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import http.client
import io
import itertools
import os
import signal
import socket
import subprocess
import tarfile
import threading
import time
import urllib.parse
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

from moto.s3.models import s3_backends

ACCOUNT = "123456789012"
_PR_SET_PDEATHSIG = 1
STOP_GRACE_S = 30.0
# What SageMaker's container start sees of the stand-in's own environment.
_KEPT_VARIABLES = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV")


# --- the stand-in's S3, read and written in-process ----------------------------------------------


def parse_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def read_object(uri: str) -> bytes:
    return read_object_and_type(uri)[0]


def read_object_and_type(uri: str) -> tuple[bytes, str | None]:
    """An object's bytes and the Content-Type it was stored with."""
    bucket, key = parse_s3(uri)
    try:
        found = s3_backends[ACCOUNT]["aws"].get_object(bucket, key)
    except Exception as error:  # moto's MissingBucket
        raise LookupError(f"{uri} does not exist") from error
    if found is None:
        raise LookupError(f"{uri} does not exist")
    return bytes(found.value), found.metadata.get("Content-Type")


def list_keys(uri: str) -> list[str]:
    """Keys under an s3://bucket/prefix, sorted."""
    bucket, prefix = parse_s3(uri)
    backend = s3_backends[ACCOUNT]["aws"]
    try:
        keys = backend.get_bucket(bucket).keys
    except Exception as error:  # moto's MissingBucket
        raise LookupError(f"no bucket {bucket}") from error
    return sorted(name for name in list(keys.keys()) if name.startswith(prefix))


def write_object(uri: str, data: bytes, content_type: str | None = None) -> None:
    bucket, key = parse_s3(uri)
    stored = s3_backends[ACCOUNT]["aws"].put_object(bucket, key, data)
    if content_type:
        stored.set_metadata({"Content-Type": content_type})


# --- what a container is ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ContainerSpec:
    """Everything that makes two containers the same: image, mode, model data, environment."""

    image: str
    mode: str = "SingleModel"
    data_url: str = ""
    """s3:// of the model data: a model.tar.gz, an uncompressed prefix, or a models prefix."""
    data_kind: str = "archive"
    """"archive" (unpacked into model/), "prefix" (copied into model/), "models" (multi-model)."""
    environment: tuple[tuple[str, str], ...] = ()
    cpus: float | None = None
    """An inference component's copy: its CPU cores, as a cgroup quota."""
    memory_mb: int | None = None
    """An inference component's copy: its memory, as a cgroup limit."""

    @classmethod
    def of(
        cls,
        container: Mapping[str, Any],
        extra: Mapping[str, str] | None = None,
        resources: Mapping[str, Any] | None = None,
    ) -> ContainerSpec:
        """From a model's container definition or an inference component's container, and
        for a component, its ComputeResourceRequirements."""
        resources = resources or {}
        memory = resources.get("MaxMemoryRequiredInMb") or resources.get("MinMemoryRequiredInMb")
        mode = container.get("Mode", "SingleModel")
        source = (container.get("ModelDataSource") or {}).get("S3DataSource") or {}
        if mode == "MultiModel":
            url, kind = container.get("ModelDataUrl", ""), "models"
        elif source:
            url = source.get("S3Uri", "")
            compressed = source.get("CompressionType", "None") == "Gzip"
            kind = "archive" if compressed else "prefix"
        else:
            url, kind = (
                container.get("ModelDataUrl") or container.get("ArtifactUrl") or "",
                "archive",
            )
        environment = {**(container.get("Environment") or {}), **(extra or {})}
        return cls(
            image=container.get("Image", ""),
            mode=mode,
            data_url=url,
            data_kind=kind,
            environment=tuple(sorted(environment.items())),
            cpus=resources.get("NumberOfCpuCoresRequired"),
            memory_mb=int(memory) if memory else None,
        )


@dataclasses.dataclass
class Container:
    """A `serve` answering for a ContainerSpec, at `url`."""

    spec: ContainerSpec
    url: str
    models_dir: str = ""
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    owners: set[str] = dataclasses.field(default_factory=set)
    error: str | None = None
    """Why it never started (its model data could not be laid out)."""
    groups: list[Path] = dataclasses.field(default_factory=list)
    """The cgroups holding its share of the host, removed once it has stopped."""

    def state(self) -> str:
        """ "ready", "starting", or "failed"."""
        if self.error is not None:
            return "failed"
        if self.process is not None and self.process.poll() is not None:
            return "failed"
        return "ready" if _pings(self.url) else "starting"

    def failure(self) -> str:
        if self.error is not None:
            return self.error
        tail = ""
        if self.log_path is not None:
            with contextlib.suppress(OSError):
                lines = self.log_path.read_text(errors="replace").splitlines()
                tail = " | ".join(line.strip() for line in lines[-5:])
        code = self.process.returncode if self.process is not None else None
        return f"the container exited ({code}) before /ping answered 200: {tail}"

    def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        _remove_groups(self.groups)


def _pings(url: str) -> bool:
    parsed = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=2)
    try:
        connection.request("GET", "/ping")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _stop_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:
        os._exit(1)


@dataclasses.dataclass(frozen=True)
class Runnable:
    """An image the stand-in may run: the command that serves as it, and where."""

    command: tuple[str, ...]
    root: Path
    env: tuple[tuple[str, str], ...] = ()


class Containers:
    """The containers behind the stand-in, by owner ("endpoint/NAME", "component/NAME", ...)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._registered: dict[tuple[str, str], Container] = {}
        self._runnable: dict[str, Runnable] = {}
        self._launched: dict[ContainerSpec, Container] = {}
        self._owned: dict[str, Container] = {}
        self._numbers = itertools.count(1)
        # One long-lived thread starts every process: a parent-death signal is tied to the
        # thread that forked, and the server's request threads end with their request.
        self._launcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="launcher")
        # Stops run off the request path: a container may take seconds to drain.
        self._stopper = ThreadPoolExecutor(max_workers=4, thread_name_prefix="stopper")

    def register_running(self, image: str, mode: str, url: str, models_dir: str) -> None:
        with self._lock:
            self._registered[(image, mode)] = Container(ContainerSpec(image, mode), url, models_dir)

    def allow(self, image: str, command: list[str], root: str, env: Mapping[str, str]) -> None:
        with self._lock:
            self._runnable[image] = Runnable(tuple(command), Path(root), tuple(sorted(env.items())))

    def runs(self, spec: ContainerSpec) -> bool:
        """Whether a real container answers for `spec` (otherwise the runtime echoes)."""
        with self._lock:
            return (spec.image, spec.mode) in self._registered or spec.image in self._runnable

    def acquire(self, owner: str, spec: ContainerSpec) -> Container | None:
        """The container `owner` now uses (started when needed), releasing what it used before."""
        with self._lock:
            registered = self._registered.get((spec.image, spec.mode))
            if registered is not None:
                # The one serve stands for every container of its image and mode, each with
                # its own model data (a multi-model endpoint's prefix, say).
                answering = Container(spec, registered.url, registered.models_dir)
                self._set_owner(owner, answering)
                return answering
            runnable = self._runnable.get(spec.image)
            if runnable is None:
                self.release(owner)
                return None
            container = self._launched.get(spec)
            if container is None or container.state() == "failed":
                container = self._launch(spec, runnable)
                self._launched[spec] = container
            self._set_owner(owner, container)
            return container

    def of(self, owner: str) -> Container | None:
        with self._lock:
            return self._owned.get(owner)

    def release(self, owner: str) -> None:
        with self._lock:
            container = self._owned.pop(owner, None)
            if container is None:
                return
            container.owners.discard(owner)
            if container.owners or container.process is None:
                return
            if self._launched.get(container.spec) is container:
                del self._launched[container.spec]
        self._stopper.submit(container.stop)

    def stop_all(self) -> None:
        with self._lock:
            launched = list(self._launched.values())
            self._launched.clear()
            self._owned.clear()
        for container in launched:
            container.stop()

    def _set_owner(self, owner: str, container: Container) -> None:
        if self._owned.get(owner) is container:
            return
        self.release(owner)
        container.owners.add(owner)
        self._owned[owner] = container

    def _launch(self, spec: ContainerSpec, runnable: Runnable) -> Container:
        folder = runnable.root / f"container-{next(self._numbers)}"
        opt_ml = folder / "opt_ml"
        (opt_ml / "model").mkdir(parents=True)
        (opt_ml / "models").mkdir()
        port = _free_port()
        log_path = folder / "serve.log"
        container = Container(spec, f"http://127.0.0.1:{port}", str(opt_ml / "models"))
        container.log_path = log_path
        try:
            _lay_out_model_data(spec, opt_ml / "model")
        except (LookupError, OSError, tarfile.TarError, ValueError) as error:
            container.error = f"could not download the model data: {error}"
            return container
        env = {key: os.environ[key] for key in _KEPT_VARIABLES if key in os.environ}
        env.update(dict(runnable.env))
        env.update(dict(spec.environment))
        env.update(OPT_ML=str(opt_ml), SAGEMAKER_BIND_TO_PORT=str(port), PYTHONUNBUFFERED="1")
        if spec.mode == "MultiModel":
            env["SAGEMAKER_MULTI_MODEL"] = "true"
        container.groups, note = _share_of_the_host(spec, folder.name)
        wrapper: list[str] = []
        if container.groups:
            joins = " && ".join(f"echo $$ > {group}/cgroup.procs" for group in container.groups)
            wrapper = ["sh", "-c", f'{joins} && exec "$@"', "share"]

        def start() -> subprocess.Popen[bytes]:
            with log_path.open("wb") as log:
                if note:
                    log.write(f"stand-in: {note}\n".encode())
                    log.flush()
                return subprocess.Popen(
                    [*wrapper, *runnable.command],
                    env=env,
                    cwd=folder,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_stop_with_parent,
                )

        container.process = self._launcher.submit(start).result()
        return container


CGROUPS = Path("/sys/fs/cgroup")


def _share_of_the_host(spec: ContainerSpec, name: str) -> tuple[list[Path], str]:
    """Cgroups with a component copy's CPU quota and memory limit, where they can be made.

    Returns the groups and a line for the container's log saying what it got.
    """
    limits: dict[str, dict[str, str]] = {}
    if spec.cpus:
        quota = str(int(spec.cpus * 100000))
        limits["cpu"] = {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": quota}
    if spec.memory_mb:
        limits["memory"] = {"memory.limit_in_bytes": str(spec.memory_mb * 1024 * 1024)}
    if not limits:
        return [], ""
    groups: list[Path] = []
    try:
        for controller, files in limits.items():
            group = CGROUPS / controller / f"fake-aws-{os.getpid()}-{name}"
            group.mkdir()
            groups.append(group)
            for file, value in files.items():
                (group / file).write_text(value)
    except OSError as error:
        _remove_groups(groups)
        return [], f"no cgroups for the component's share here ({error}): it runs unlimited"
    shares = []
    if spec.cpus:
        shares.append(f"a CPU quota of {spec.cpus:g} cores")
    if spec.memory_mb:
        shares.append(f"a memory limit of {spec.memory_mb} MiB")
    return groups, "the component's share of the host: " + " and ".join(shares)


def _remove_groups(groups: list[Path]) -> None:
    """Remove cgroups once their processes have left (the kernel empties them then)."""
    for group in groups:
        deadline = time.monotonic() + 10
        while True:
            try:
                group.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)


def _lay_out_model_data(spec: ContainerSpec, model_dir: Path) -> None:
    """What SageMaker puts into /opt/ml/model before it starts the container."""
    if not spec.data_url or spec.data_kind == "models":
        return
    if spec.data_kind == "archive":
        with tarfile.open(fileobj=io.BytesIO(read_object(spec.data_url))) as archive:
            archive.extractall(model_dir, filter="data")
        return
    # An uncompressed prefix: every object under it, at its path below the prefix.
    prefix = spec.data_url if spec.data_url.endswith("/") else spec.data_url + "/"
    bucket, key_prefix = parse_s3(prefix)
    for key in list_keys(prefix):
        relative = PurePosixPath(key[len(key_prefix) :])
        if key.endswith("/") or not relative.parts:
            continue
        if relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"s3://{bucket}/{key} would land outside /opt/ml/model")
        target = model_dir.joinpath(*relative.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(read_object(f"s3://{bucket}/{key}"))


def wait_ready(container: Container, timeout_s: float) -> str:
    """Poll until the container answers /ping; its final state."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = container.state()
        if state != "starting" or time.monotonic() > deadline:
            return state
        time.sleep(0.2)


CONTAINERS = Containers()
