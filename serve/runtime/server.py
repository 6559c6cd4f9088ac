"""One run of `serve`: prepare, start the front and Triton, supervise, stop.

Order matters. The front (nginx and the control app) starts before Triton so
that SageMaker's first pings get a quick "not ready" instead of a refused
connection while models load. Stopping runs the other way: nginx stops
taking new requests and finishes the ones in flight, then Triton stops,
all inside SageMaker's 30 s SIGTERM-to-SIGKILL window.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from waitress.server import create_server

from serve.artifacts.repository import (
    PreparedRepository,
    prepare_single_model_repository,
    server_preparation,
)
from serve.control.app import create_control_app
from serve.control.execution_parameters import ExecutionParameters
from serve.control.state import Phase, ServerState
from serve.errors import ConfigError, ServeError
from serve.front.nginx import FrontConfig, FrontModel, nginx_argv, worker_count
from serve.machine import host
from serve.machine.sockets import restrict_socket
from serve.machine.users import RunAs, triton_user
from serve.multi_model.registry import ModelRegistry
from serve.payloads.body import Spool
from serve.payloads.formats import takes_bytes
from serve.payloads.limits import PayloadLimits
from serve.payloads.llm.generate import TextModel, text_models
from serve.payloads.service import PayloadService, SessionHandlers
from serve.payloads.signature import ModelSignature
from serve.payloads.writers import listening_socket, writer_argv, writer_count, writes_json
from serve.runtime.ports import LoopbackPorts, refuse_ports_in_use
from serve.runtime.processes import ManagedProcess
from serve.runtime.recovery import TritonRecovery
from serve.runtime.workspace import Workspace
from serve.sagemaker.custom_attributes import sets_custom_attributes
from serve.sessions.bidirectional import BidirectionalServer, StreamLimits
from serve.sessions.invocations import SessionInvocations
from serve.sessions.registry import SessionRegistry
from serve.settings import Settings
from serve.triton import model_config
from serve.triton.client import TritonClient
from serve.triton.command import MAX_INPUT_FLAG, TritonCommand, merge_additional_args
from serve.triton.install import STUB_NAME, TritonInstall, locate_triton
from serve.triton.metrics import TritonMetrics
from serve.triton.model_config import ModelConfig

if TYPE_CHECKING:  # prometheus_client is imported only when the front's metrics are on
    from serve.front.metrics import MetricsEndpoint

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1
READINESS_POLL_SECONDS = 0.5


class ControlServer:
    """The control app under waitress, on a unix socket, in a thread of ours."""

    def __init__(self, app: object, socket_path: Path):
        socket_path.parent.mkdir(parents=True, exist_ok=True)
        self._server = create_server(
            app, unix_socket=str(socket_path), unix_socket_perms="600", threads=4
        )
        # nginx's unprivileged workers connect to it, and no one else.
        restrict_socket(socket_path)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="control", daemon=True)

    def _run(self) -> None:
        try:
            self._server.run()
        except (OSError, ValueError):
            # waitress's loop fails on the socket that stop() closed under it.
            if not self._closing.is_set():
                raise

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._closing.set()
        self._server.close()


class Server:
    def __init__(self, settings: Settings):
        self.settings = settings
        # This process's cgroup memory limit, read when serve starts (run()).
        self.memory = host.MemoryShare()
        self.state = ServerState()
        self._stop_requested = threading.Event()
        # The user Triton and model code run as (serve/machine/users.py); set by run().
        self.run_as: RunAs | None = None
        # The front's own metrics (serve/front/metrics.py); None while SERVE_METRICS_PORT is off.
        self._metrics: MetricsEndpoint | None = None

    def request_stop(self, signum: int, _frame: FrameType | None = None) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        self._stop_requested.set()

    def run(self) -> int:
        """Serve until stopped or until a child fails; returns the exit code."""
        # SAGEMAKER_TRITON_ADDITIONAL_ARGS: refused flags stop here, merged ones become settings.
        self.settings = merge_additional_args(self.settings)
        refuse_ports_in_use(self.settings.public_ports())
        install = locate_triton(self.settings.triton_bin)
        model_python = self.settings.model_python
        if model_python is not None and not os.access(model_python, os.X_OK):
            raise ConfigError(
                f"SERVE_MODEL_PYTHON={model_python} is not an executable Python; name the "
                "interpreter whose packages your models import (the image's is /usr/bin/python3)"
            )
        gpus = host.gpu_count(self.settings.visible_devices)
        log.info("Triton %s; %d GPU(s) visible", install.binary, gpus)
        # An inference component's copy (or `docker run --memory`) has a memory limit:
        # what serve sizes by memory is fitted to it before anything starts.
        self.memory = host.memory_share()
        self.settings = host.fit_to_memory(self.settings, self.memory)
        # Triton, its stubs and model code run as triton-server when serve is root.
        self.run_as = triton_user(self.settings.triton_user)
        # Model preparation (archives, environment cache, per-model stubs): artifacts/repository.py.
        self.preparation = server_preparation(self.settings, install, gpus, self.run_as)
        with Workspace(self.settings.workdir) as workspace, self._loopback_ports() as loopback:
            if self.settings.multi_model:
                log.info("multi-model endpoint: models load from %s", self.settings.models_dir)
                workspace.repository.mkdir(parents=True)
                return self._serve(install, workspace, loopback, gpus, None)
            repository = prepare_single_model_repository(
                self.settings.model_dir,
                workspace.repository,
                self.settings.default_model_name,
                self.preparation,
                workspace.archives,
            )
            log.info(
                "serving %s; /invocations runs %r",
                ", ".join(m.name for m in repository.models),
                repository.default_model,
            )
            return self._serve(install, workspace, loopback, gpus, repository)

    def _serve(
        self,
        install: TritonInstall,
        ws: Workspace,
        loopback: LoopbackPorts,
        gpus: int,
        repository: PreparedRepository | None,
    ) -> int:
        """Start the front, then Triton, on a prepared repository (None: multi-model)."""
        settings = self.settings
        configs = [m.config for m in repository.models if m.config] if repository else []
        shm = host.plan_python_shm(
            configs, settings.shm_default_byte_size, gpus, memory=self.memory
        )
        triton_port = loopback.reserve("Triton's internal HTTP endpoint")
        triton_metrics = self._triton_metrics(loopback, ws.repository)
        triton_client = TritonClient(triton_port)
        bidirectional_port = None
        if settings.bidirectional_streaming and repository is not None:
            bidirectional_port = self._triton_grpc_port(loopback)
        cpus = host.cpu_share().count
        front = FrontConfig(
            settings=settings,
            workdir=ws.front,
            triton_port=triton_port,
            control_socket=ws.control_socket,
            default_model=repository.default_model if repository else None,
            models=_front_models(
                repository, settings.v2_json_min_values, settings.text_generation_models
            ),
            bidirectional=bidirectional_port is not None,
            worker_processes=worker_count(settings.nginx_workers, cpus),
            v2_json_writers=self._writers(cpus),
        )
        backends = install.backends_folder(ws.backends, settings.extra_backends)
        if self.run_as is not None:
            self.run_as.check_runnable(backends / "python" / STUB_NAME)
        command = TritonCommand(
            binary=install.binary,
            repository=ws.repository,
            backends_dir=backends,
            http_port=triton_port,
            load_models=("*",) if repository else (),
            settings=settings,
            shm_default_byte_size=shm.region_bytes,
            gpu_count=gpus,
            loopback_metrics_port=triton_metrics.port if triton_metrics else None,
            limits_input_size=install.accepts(MAX_INPUT_FLAG),
            loopback_grpc_port=None if settings.allow_grpc else bidirectional_port,
        )
        running = _Running()
        try:
            nginx = self._start_front(running, front, ws, triton_client, triton_metrics, repository)
            running.triton = triton = self._start_triton(command, shm, ws)
            if bidirectional_port is not None:
                # After every fork: a process that forks while gRPC's threads run can
                # abort in the child (seen: Triton killed by SIGABRT before its exec).
                running.bidirectional = BidirectionalServer(
                    front.bidirectional_socket(), bidirectional_port, StreamLimits.of(settings)
                )
                running.bidirectional.start()
            children = [triton, nginx, *running.writers]
            ping = front.ping_path()
            recovery = None
            if running.registry is not None:
                recovery = TritonRecovery(
                    lambda: self._start_triton(command, shm, ws),
                    running.registry,
                    triton_client,
                    self.state,
                    settings.triton_restarts,
                )

            def replace(child: ManagedProcess) -> ManagedProcess | None:
                """A multi-model endpoint's Triton starts again after a crash."""
                if recovery is None or child is not running.triton:
                    return None
                restarted = recovery.replace(child)
                if restarted is not None:
                    running.triton = restarted
                return restarted

            def ready() -> bool:
                # READY (the control app's answers, the front's load counts) once Triton's
                # metrics listen too; nginx's /ping asks Triton itself, so its first 200
                # may come a moment before them.
                return triton_client.is_ready(ping) and (
                    triton_metrics is None or triton_metrics.listening()
                )

            return self._supervise(children, ready, replace)
        finally:
            self._stop(running)

    def _start_front(
        self,
        running: _Running,
        front: FrontConfig,
        ws: Workspace,
        triton_client: TritonClient,
        triton_metrics: TritonMetrics | None,
        repository: PreparedRepository | None,
    ) -> ManagedProcess:
        """The front's metrics, the control app, the payload services, then nginx (returned).

        Each is recorded in `running` as it starts, so a failure stops what did.
        """
        settings = self.settings
        registry = None
        execution_parameters = None
        if repository is None:
            registry = ModelRegistry(
                settings.models_dir,
                ws.repository,
                ws.root / "uploads",
                triton_client,
                # An upload's environments lie in the models root, as its files do.
                dataclasses.replace(self.preparation, environments_root=settings.models_dir),
                settings.env_cache_min_free_bytes,
                settings.model_load_timeout,
            )
            running.registry = registry
        else:
            execution_parameters = ExecutionParameters(
                settings, triton_client, repository.default_model
            )
        exposition = triton_exposition = None
        if triton_metrics is not None and settings.allow_metrics:
            # SAGEMAKER_TRITON_METRICS_PORT: nginx serves Triton's own, relabelled.
            triton_exposition = triton_metrics.exposition
        access_log = front.access_log()
        if access_log is not None:
            # The front's metrics (front/metrics.py): nginx's access log, followed off
            # the hot path.
            from serve.front.metrics import MetricsEndpoint

            self._metrics = MetricsEndpoint(
                settings.serve_metrics_port,
                access_log,
                front.pid_file(),
                startup_models=len(repository.models) if repository else 0,
                metrics_path=settings.metrics_path,
            )
            if self.preparation.environments is not None:
                self._metrics.metrics.watch_environment_cache(self.preparation.environments)
            if triton_metrics is not None and settings.metrics_path is not None:
                exposition = self._metrics.public(triton_metrics).exposition
            self._metrics.start()
        running.control = ControlServer(
            create_control_app(
                self.state, registry, execution_parameters, exposition, triton_exposition
            ),
            ws.control_socket,
        )
        running.control.start()
        # The payload service: content types, Accept, Triton's refusals, streams.
        spool = ws.front / "payload_bodies"
        folders = {m.name: m.path for m in repository.models} if repository else {}
        text = _text_models(folders, settings) if repository else {}
        running.payloads = PayloadService(
            front.payload_socket(),
            front.triton_port,
            Spool(spool, settings.body_buffer_bytes),
            registry,
            settings.invocation_timeout,
            # Stateful sessions on /invocations (serve/sessions/), single-model endpoints.
            self._session_handlers() if repository else None,
            text_models=text,
            max_tokens=settings.text_generation_max_tokens,
            limits=PayloadLimits.of(settings),
        )
        running.payloads.start()
        # The writers build the same text models from their folders.
        text_folders = {name: folders[name] for name in text}
        for number, path in enumerate(front.writer_sockets()):
            # serve listens and the writer inherits the socket: ready before nginx starts.
            with listening_socket(path) as listener:
                running.writers.append(
                    ManagedProcess(
                        f"v2 JSON writer {number}",
                        writer_argv(listener, path, front.triton_port, spool, text_folders),
                        # Each reads its settings from the environment: the fitted buffer.
                        env={
                            **os.environ,
                            "SERVE_BODY_BUFFER_BYTES": str(settings.body_buffer_bytes),
                        },
                        pass_fds=(listener.fileno(),),
                    )
                )
        running.nginx = nginx = ManagedProcess("nginx", nginx_argv(front.write()))
        return nginx

    def _writers(self, cpus: int) -> int:
        """v2 JSON writer processes: SERVE_V2_JSON_WRITERS, else by CPUs and memory."""
        chosen = self.settings.v2_json_writers
        by_cpus = writer_count(chosen, cpus)
        if chosen is not None:
            return by_cpus
        count = self.memory.writers(by_cpus)
        if count < by_cpus:
            log.info(
                "%d v2 JSON writer(s) rather than %d: %s allows one per %d bytes",
                count,
                by_cpus,
                self.memory.describe(),
                host.WRITER_MEMORY_BYTES,
            )
        return count

    def _session_handlers(self) -> SessionHandlers:
        """Stateful sessions on /invocations (serve/sessions/), for the payload service."""
        sessions = SessionRegistry(
            self.settings.session_ttl,
            self.settings.max_sessions,
            first_use=self.settings.session_first_use,
        )
        return lambda adapter: SessionInvocations(adapter, sessions)

    def _start_triton(
        self, command: TritonCommand, shm: host.ShmPlan, ws: Workspace
    ) -> ManagedProcess:
        """Triton, with the models' Python first on its PATH and OpenMP threads shared out,
        as `run_as` when there is one (with a home of its own in the workspace)."""
        env = _triton_environment(self.settings.model_python, self._omp_threads(shm))
        if self.run_as is not None:
            env["HOME"] = str(ws.home(self.run_as))
            env["USER"] = env["LOGNAME"] = self.run_as.name
        return ManagedProcess(
            "tritonserver",
            command.argv(),
            env=env,
            run_as=self.run_as,
            shared_memory=command.shm_regions(),
        )

    def _loopback_ports(self) -> LoopbackPorts:
        """Where Triton's internal endpoints listen: neither public port nor Triton's
        public gRPC and metrics ports, even while closed (a user may open them)."""
        settings = self.settings
        taken = {settings.port, settings.grpc_port, settings.metrics_port}
        taken.add(settings.serve_metrics_port or settings.port)
        return LoopbackPorts(settings.safe_port_range, taken)

    def _triton_grpc_port(self, loopback: LoopbackPorts) -> int:
        """Triton's gRPC port for bidirectional streams (serve/sessions/bidirectional.py).

        Triton's HTTP routes cannot carry a sequence to a decoupled model; its gRPC
        stream can. The public one when SAGEMAKER_TRITON_ALLOW_GRPC opens it, else
        one on loopback.
        """
        settings = self.settings
        if settings.allow_grpc:
            return settings.grpc_port
        return loopback.reserve("Triton's internal gRPC endpoint (bidirectional streams)")

    def _triton_metrics(self, loopback: LoopbackPorts, repository: Path) -> TritonMetrics | None:
        """Triton's metrics on a loopback port of their own; None while nothing serves them.

        The front serves them on GET /metrics (SERVE_METRICS_PATH) and on
        SAGEMAKER_TRITON_METRICS_PORT (SAGEMAKER_TRITON_ALLOW_METRICS), labelled
        with the folder the models came from rather than `repository`, serve's copy.
        """
        settings = self.settings
        if settings.metrics_path is None and not settings.allow_metrics:
            return None
        port = loopback.reserve("Triton's metrics")
        source = settings.models_dir if settings.multi_model else settings.model_dir
        return TritonMetrics(port, repository, source)

    def _omp_threads(self, shm: host.ShmPlan) -> int | None:
        """OMP_NUM_THREADS for Triton and its stubs, unless the user set it (or one instance)."""
        if self.settings.omp_num_threads is not None:
            return None
        cpus = host.cpu_share()
        threads = host.threads_per_instance(cpus, shm.instances)
        if threads is not None:
            log.info(
                "OMP_NUM_THREADS=%d for Triton and each of its %d Python-backend model "
                "instances (%s); set OMP_NUM_THREADS to choose",
                threads,
                shm.instances,
                cpus.describe(),
            )
        return threads

    def _supervise(
        self,
        children: list[ManagedProcess],
        ready: Callable[[], bool],
        replace: Callable[[ManagedProcess], ManagedProcess | None],
    ) -> int:
        """Watch `children` until a stop is asked for; a child that exits stops serve
        unless `replace` gives one in its place."""
        started = time.monotonic()
        next_check = started
        while not self._stop_requested.wait(POLL_SECONDS):
            for index, child in enumerate(children):
                code = child.poll()
                if code is not None:
                    # Its workers or stubs go at once: an nginx worker would keep the port.
                    child.kill_group()
                    replacement = replace(child)
                    if replacement is not None:
                        children[index] = replacement
                        continue
                    # /ping's callers get one line; the log gets the child's last output.
                    self.state.set(Phase.FAILED, f"{child.exit_summary()}; see the container log")
                    log.error("%s; stopping", child.describe_exit())
                    return code if code > 0 else 128 - code if code < 0 else 1
            phase, _ = self.state.snapshot()
            now = time.monotonic()
            if phase is Phase.STARTING and now >= next_check:
                next_check = now + READINESS_POLL_SECONDS
                if ready():
                    self.state.set(Phase.READY, "serving")
                    log.info("ready after %.1f s", now - started)
                    if self._metrics is not None:
                        self._metrics.models_loaded_at_start(now - started)
                elif now - started > self.settings.startup_timeout:
                    reason = (
                        f"Triton was not ready after {self.settings.startup_timeout:.0f} s "
                        "(SERVE_STARTUP_TIMEOUT)"
                    )
                    self.state.set(Phase.FAILED, reason)
                    log.error("%s; stopping", reason)
                    return 1
        return 0

    def _stop(self, running: _Running) -> None:
        """nginx drains in-flight requests first, then Triton stops, within the deadline."""
        self.state.set(Phase.STOPPING, "shutting down")
        deadline = time.monotonic() + self.settings.shutdown_timeout
        # Open streams would hold nginx's graceful stop: they end first (1001, going
        # away), their sequences ended while Triton still runs.
        if running.bidirectional is not None:
            running.bidirectional.stop()
        if running.nginx is not None:
            running.nginx.stop(signal.SIGQUIT, deadline - 2)
        # Triton waits for open HTTP connections before it stops: close the services'.
        for writer in running.writers:
            writer.stop(signal.SIGTERM, deadline - 1)
        if running.payloads is not None:
            running.payloads.stop()
        if running.triton is not None:
            running.triton.stop(signal.SIGTERM, deadline)
        if running.control is not None:
            running.control.stop()
        if self._metrics is not None:
            self._metrics.stop()
        log.info("stopped")


@dataclasses.dataclass
class _Running:
    """What one run has started so far; stopped in reverse by `Server._stop`."""

    # A multi-model endpoint's models (not a process: nothing to stop).
    registry: ModelRegistry | None = None
    control: ControlServer | None = None
    payloads: PayloadService | None = None
    bidirectional: BidirectionalServer | None = None
    writers: list[ManagedProcess] = dataclasses.field(default_factory=list)
    nginx: ManagedProcess | None = None
    triton: ManagedProcess | None = None


def _front_models(
    repository: PreparedRepository | None, json_min_values: int, text_models: tuple[str, ...] = ()
) -> tuple[FrontModel, ...]:
    """The models nginx routes by target_model=NAME, and which need the payload services."""
    if repository is None:
        return ()
    stateful = model_config.stateful_models(
        {m.name: m.config for m in repository.models if m.config is not None}
    )
    return tuple(
        FrontModel(
            m.name,
            decoupled=bool(m.config and m.config.model_transaction_policy.decoupled),
            custom_attributes=bool(m.config and sets_custom_attributes(m.config)),
            writes_json=writes_json(m.config, json_min_values),
            takes_bytes=_takes_bytes(m.config),
            text_generation=m.name in text_models,
            stateful=m.name in stateful,
        )
        for m in repository.models
    )


def _text_models(folders: dict[str, Path], settings: Settings) -> dict[str, TextModel]:
    """The declared text-generation models (SERVE_TEXT_GENERATION_MODELS) among the model
    `folders`, each template's source logged once here (the writers build the same models
    quietly)."""
    models = text_models(folders, settings)
    for name, model in models.items():
        if model.template is None:
            log.warning(
                "text-generation model %r ships no chat template (no tokenizer_config.json "
                "with chat_template in its folder, and SERVE_CHAT_TEMPLATE unset): its chat "
                "requests will be refused; completions and TGI requests are served",
                name,
            )
        else:
            log.info("text-generation model %r: chat template from %s", name, model.template.source)
    return models


def _takes_bytes(config: ModelConfig | None) -> bool:
    """Whether the model may take a body's raw bytes (the payload rule: formats.takes_bytes).

    A model without a config (or with a wrong one) is sent to Triton first: its
    refusal still reaches the payload service, which reads Triton's config.
    """
    if config is None:
        return False
    try:
        return takes_bytes(ModelSignature.from_config(config))
    except ServeError:
        return False


def _triton_environment(model_python: Path | None, omp_threads: int | None) -> dict[str, str]:
    """Triton's environment, which its Python-backend stubs inherit.

    The stub embeds Python and locates its prefix through `python3` on PATH, so
    the folder of the models' interpreter (SERVE_MODEL_PYTHON, else the one
    running `serve`) goes first. `omp_threads`, if given, becomes OMP_NUM_THREADS.
    """
    env = dict(os.environ)
    python = model_python or Path(sys.executable)
    env["PATH"] = os.pathsep.join([str(python.parent), env.get("PATH", "")])
    if omp_threads is not None:
        env["OMP_NUM_THREADS"] = str(omp_threads)
    return env
