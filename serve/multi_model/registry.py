"""SageMaker multi-model endpoints on Triton: the /models contract.

SageMaker asks the container to load a model by name from a folder under
/opt/ml/models, lists, describes and unloads models, and invokes them by
name. Each upload is prepared like a single-model repository (files linked,
configs rewritten for the host) into the one repository Triton serves, under
names derived from SageMaker's model name:

- the upload's entry model (its only model, or the one no other model in the
  upload uses, an ensemble typically) is named exactly like the SageMaker
  model (SageMaker's names are hashes), so nginx can send
  `/models/NAME/invoke` straight to Triton; other names get a hashed Triton
  name and are invoked through the control app;
- the upload's other models (ensemble steps) are named `NAME~step` (a step
  named with characters nginx would not route gets a hashed name); '~' can
  not appear in a name nginx routes directly, so steps are never public.

Loads, unloads and lookups of one model are serialised by a per-name lock;
different models load concurrently.

However a load fails (a refusal, SERVE_MODEL_LOAD_TIMEOUT, Triton gone, a full
disk, any exception), Triton is told to let go of what it loaded and the
prepared files are removed only once it has: registry, Triton and disk agree
when the caller gets its answer, and a retry starts clean. Triton finishes a
load before it unloads, so letting go may take as long as the load itself.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import hashlib
import http.client
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from serve.artifacts.paths import check_name, control_character, inside, is_inside
from serve.artifacts.repository import (
    CONTENT_NAME_FIX,
    Preparation,
    model_sources,
    prepare_model,
    shown_path,
)
from serve.errors import (
    ArtifactError,
    BadRequest,
    GatewayTimeout,
    InsufficientMemory,
    ModelAlreadyLoaded,
    ModelNotFound,
    ServeError,
    Unavailable,
    is_out_of_space,
    out_of_space,
)
from serve.machine import host
from serve.sagemaker.contract import DIRECT_MODEL_NAME, full_match
from serve.sagemaker.custom_attributes import sets_custom_attributes
from serve.triton import model_config
from serve.triton.client import TritonClient, TritonReply, error_message, triton_failure
from serve.triton.model_config import CONFIG_FILE

log = logging.getLogger(__name__)

# Names nginx routes straight to Triton: SageMaker's own names are hashes.
DIRECT_NAME = full_match(DIRECT_MODEL_NAME)
# Triton neither decodes model names in its URLs nor needs them encoded when
# they keep to these characters; '~' joins an upload's name to its steps'.
STEP_SEPARATOR = "~"
# How long a load or unload waits for Triton to let go of an earlier failed load of
# the same name before it answers 503 (try again later).
SETTLE_SECONDS = 5.0
PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def longest_answer(load_timeout: float) -> float:
    """The longest a /models call may take: what nginx waits for the control app.

    A load settles an earlier failure (SETTLE_SECONDS), prepares and loads
    within `load_timeout`, and on failure gives Triton as long again to let
    go; an unload waits as long for Triton. A few seconds more for the rest.
    """
    return 2 * load_timeout + SETTLE_SECONDS + 5


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    name: str
    url: str
    # Triton names of the upload's models, entry model last.
    triton_names: tuple[str, ...]
    prepared: tuple[Path, ...]
    # sha256 of the cached environments its models run in (never evicted while loaded).
    environments: frozenset[str] = frozenset()

    def describe(self) -> dict[str, str]:
        return {"modelName": self.name, "modelUrl": self.url}


class ModelRegistry:
    def __init__(
        self,
        models_dir: Path,
        repository: Path,
        staging: Path,
        triton: TritonClient,
        preparation: Preparation,
        env_cache_min_free_bytes: int,
        load_timeout: float,
    ):
        self._models_dir = models_dir.resolve()
        # SERVE_MODEL_LOAD_TIMEOUT: for a load, and again for Triton to let go of one.
        self._load_timeout = load_timeout
        self._env_cache_min_free_bytes = env_cache_min_free_bytes
        # Preparation (and so environment eviction) runs one upload at a time,
        # so an environment being unpacked for a load is never evicted.
        self._preparing = threading.Lock()
        self._repository = repository
        self._staging = staging
        self._triton = triton
        self._preparation = preparation
        self._loaded: dict[str, LoadedModel] = {}
        # Failed loads Triton had not let go of in time; their files stay until it does.
        self._stranded: dict[str, LoadedModel] = {}
        self._busy: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    # -- the contract -----------------------------------------------------

    def load(self, name: str, url: str) -> LoadedModel:
        _check_name(name)
        with self._exclusive(name):
            self._settle(name)
            if name in self._loaded:
                raise ModelAlreadyLoaded(f"model {name!r} is already loaded")
            source = self._check_url(url)
            started = time.monotonic()
            deadline = started + self._load_timeout
            try:
                with self._preparing:
                    self._make_room()
                    model = self._prepare(name, url, source)  # removes its files on failure
            except OSError as exc:
                if is_out_of_space(exc):
                    raise out_of_space(
                        Path(exc.filename or self._repository), f"preparing model {name!r}"
                    ) from exc
                raise
            try:
                for name_in_triton in model.triton_names:
                    self._triton_load(name, name_in_triton, deadline)
            except BaseException as exc:
                released = self._abandon(model)
                raise self._load_failure(name, exc, released) from exc
            with self._lock:
                self._loaded[name] = model
            log.info("loaded model %r from %s in %.2f s", name, url, time.monotonic() - started)
            return model

    def unload(self, name: str) -> None:
        with self._exclusive(name):
            self._settle(name)
            model = self.get(name)
            if not self._release(model, time.monotonic() + self._load_timeout):
                raise GatewayTimeout(
                    f"Triton did not let go of model {name!r} within {self._load_timeout:.0f} s "
                    "(SERVE_MODEL_LOAD_TIMEOUT); it stays loaded, DELETE it again later"
                )
            self._discard(model)
            with self._lock:
                del self._loaded[name]
            log.info("unloaded model %r", name)

    def get(self, name: str) -> LoadedModel:
        with self._lock:
            model = self._loaded.get(name)
        if model is None:
            raise ModelNotFound(f"model {name!r} is not loaded")
        return model

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._loaded)

    def restore(self, alive: Callable[[], bool]) -> tuple[list[str], list[str]]:
        """After Triton restarted (serve/runtime/recovery.py): load every model again.

        Returns the names loaded again, and those Triton refused this time, which
        are unloaded as a failed load is (a later load of the name starts clean).
        Failed loads stranded in the old Triton are gone with it: their files go.
        Stops early once `alive` says this Triton died too; the next restart tries
        again. Each model is held as a load holds it, so a DELETE waits for it.
        """
        with self._lock:
            stranded = list(self._stranded)
        for name in stranded:
            with self._exclusive(name):
                model = self._stranded.pop(name, None)
                if model is not None:
                    self._discard(model)
        restored: list[str] = []
        dropped: list[str] = []
        for name in self.names():
            if not alive():
                break
            with self._exclusive(name):
                with self._lock:
                    model = self._loaded.get(name)
                if model is None:
                    continue  # unloaded meanwhile
                try:
                    deadline = time.monotonic() + self._load_timeout
                    for name_in_triton in model.triton_names:
                        self._triton_load(name, name_in_triton, deadline)
                except (OSError, http.client.HTTPException) as exc:
                    log.warning(
                        "Triton stopped answering while model %r loaded again (%s)", name, exc
                    )
                    break
                except (ServeError, TimeoutError) as exc:
                    log.error(
                        "model %r did not load again after Triton's restart (%s); it is "
                        "unloaded: load it again",
                        name,
                        exc,
                    )
                    self._abandon(model)
                    with self._lock:
                        del self._loaded[name]
                    dropped.append(name)
                    continue
                restored.append(name)
        return restored, dropped

    def page(self, token: str | None, size: int = PAGE_SIZE) -> dict[str, object]:
        """One page of GET /models; the token is where the next page starts."""
        start = _decode_token(token)
        with self._lock:
            names = sorted(self._loaded)
            page = [self._loaded[n].describe() for n in names if n > start][:size]
        result: dict[str, object] = {"models": page}
        if len(page) == size and page[-1]["modelName"] != names[-1]:
            result["nextPageToken"] = base64.urlsafe_b64encode(
                page[-1]["modelName"].encode()
            ).decode()
        return result

    # -- preparation ------------------------------------------------------

    def _check_url(self, url: object) -> Path:
        if not isinstance(url, str):
            raise ArtifactError(f"url {url!r} must be a string, the folder SageMaker unpacked into")
        _check_characters("url", url)
        source = Path(url)
        if not source.is_absolute():
            raise ArtifactError(f"url {url!r} must be an absolute path under {self._models_dir}")
        resolved = source.resolve()
        if not is_inside(resolved, self._models_dir):
            raise ArtifactError(f"url {url!r} is outside {self._models_dir}; refusing to load it")
        if not resolved.is_dir():
            raise ArtifactError(f"url {url!r} is not a folder; SageMaker unpacks models there")
        return resolved

    def _prepare(self, name: str, url: str, source: Path) -> LoadedModel:
        """Unpack archives, find the upload's models and prepare them under Triton names."""
        _refuse_links_outside(source, self._models_dir)
        staging = inside(self._staging, triton_name(name))
        shutil.rmtree(staging, ignore_errors=True)
        prepared: list[Path] = []
        environments: set[str] = set()
        try:
            if (source / CONFIG_FILE).is_file():  # one model's files, directly in the url
                sources = {_model_name(source): source}
            else:
                limits = self._preparation.extraction_limits
                sources = model_sources(source, staging, limits)
            if not sources:
                raise ArtifactError(
                    f"no model in {url}: it needs a config.pbtxt, model folders, or a model.tar.gz"
                )
            _check_steps(sources, source, staging)
            entry = _entry_model(sources, url)
            base = triton_name(name, routed=not _sets_custom_attributes(sources[entry]))
            renames = {
                original: base if original == entry else _step_name(base, original)
                for original in sources
            }
            for original, folder in sources.items():
                target = inside(self._repository, renames[original], what="model name")
                prepared.append(target)
                model = prepare_model(folder, target, renames[original], self._preparation)
                if model.environment is not None:
                    environments.add(model.environment.sha256)
                if model.config is not None:
                    _rename(model.config, renames[original], renames)
                    (target / CONFIG_FILE).unlink()
                    model_config.write_config(model.config, target / CONFIG_FILE)
        except BaseException:
            for path in (*prepared, staging):
                shutil.rmtree(path, ignore_errors=True)
            raise
        steps = [renames[original] for original in sources if original != entry]
        return LoadedModel(name, url, (*steps, base), (*prepared, staging), frozenset(environments))

    def _make_room(self) -> None:
        """Evict unused environments, least recently used first, when disk runs short."""
        cache = self._preparation.environments
        if cache is None or not cache.root.is_dir():
            return
        short = self._env_cache_min_free_bytes - shutil.disk_usage(cache.root).free
        if short <= 0:
            return
        with self._lock:
            held = (*self._loaded.values(), *self._stranded.values())
            in_use = {sha for model in held for sha in model.environments}
        freed = cache.evict(short, in_use)
        log.info(
            "environment cache: %d bytes short of SERVE_ENV_CACHE_MIN_FREE_BYTES; "
            "evicted %d bytes (%d environments in use kept)",
            short,
            freed,
            len(in_use),
        )

    def _discard(self, model: LoadedModel) -> None:
        for path in model.prepared:
            shutil.rmtree(path, ignore_errors=True)

    # -- Triton -----------------------------------------------------------

    def _triton_load(self, name: str, name_in_triton: str, deadline: float) -> None:
        """Have Triton load one model; raises TimeoutError once `deadline` has passed."""
        oom_kills_before = host.oom_kill_count()
        reply = self._triton.request(
            "POST",
            f"/v2/repository/models/{name_in_triton}/load",
            body=b"{}",
            timeout=_remaining(deadline),
        )
        if reply.status == 200:
            return
        failure = triton_failure(reply.status, reply.body)
        # Triton reports a Python-backend stub killed by the OOM killer as an
        # unhealthy stub, not as out of memory; the kernel's count tells.
        killed_for_memory = host.oom_kill_count() > oom_kills_before
        if isinstance(failure, InsufficientMemory) or killed_for_memory:
            raise InsufficientMemory(f"not enough memory to load model {name!r}: {failure.message}")
        raise ArtifactError(f"model {name!r} failed to load: {failure.message}")

    def _release(self, model: LoadedModel, deadline: float) -> bool:
        """Unload every model of the upload; True once Triton has let go of them all.

        An unload waits while Triton is still loading the model (after a load
        that timed out): until `deadline`, then False. Triton gone (serve stops
        with it) holds nothing any more: True.
        """
        wanted = set(model.triton_names)
        busy = wanted
        try:
            for name_in_triton in reversed(model.triton_names):
                self._triton.request(
                    "POST",
                    f"/v2/repository/models/{name_in_triton}/unload",
                    body=json.dumps({"parameters": {"unload_dependents": True}}).encode(),
                    timeout=_remaining(deadline),
                )
            while True:
                reply = self._triton.request(
                    "POST", "/v2/repository/index", timeout=_remaining(deadline)
                )
                index = model_index(reply)
                if index is not None:
                    busy = {
                        m["name"]
                        for m in index
                        if m["name"] in wanted and m.get("state") != "UNAVAILABLE"
                    }
                if not busy or time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
        except TimeoutError:
            pass
        except (OSError, http.client.HTTPException) as exc:
            log.warning("Triton did not answer while unloading model %r (%s)", model.name, exc)
            return True
        if busy:
            log.warning("Triton still holds %s of model %r", ", ".join(sorted(busy)), model.name)
        return not busy

    def _abandon(self, model: LoadedModel) -> bool:
        """After a failed load: Triton lets go of the upload, then its files go; True if so."""
        if self._release(model, time.monotonic() + self._load_timeout):
            self._discard(model)
            return True
        log.error(
            "model %r: Triton did not let go of a failed load within %.0f s; its files stay "
            "until it does (the next load or DELETE of that name tries again)",
            model.name,
            self._load_timeout,
        )
        with self._lock:
            self._stranded[model.name] = model
        return False

    def _settle(self, name: str) -> None:
        """Finish cleaning up an earlier failed load of `name`; 503 while Triton still holds it."""
        with self._lock:
            model = self._stranded.get(name)
        if model is None:
            return
        if not self._release(model, time.monotonic() + min(SETTLE_SECONDS, self._load_timeout)):
            raise Unavailable(
                f"Triton still holds model {name!r} from an earlier load that failed; "
                "try again later"
            )
        self._discard(model)
        with self._lock:
            del self._stranded[name]

    def _load_failure(self, name: str, exc: BaseException, released: bool) -> BaseException:
        """What the caller of a failed load gets: a status SageMaker acts on."""
        if isinstance(exc, TimeoutError):
            after = "was unloaded" if released else "is unloaded once Triton has loaded it"
            return GatewayTimeout(
                f"model {name!r} did not finish loading within {self._load_timeout:.0f} s "
                f"(SERVE_MODEL_LOAD_TIMEOUT) and {after}; raise the setting, or make the "
                "model load faster"
            )
        if isinstance(exc, (OSError, http.client.HTTPException)):
            return Unavailable(
                f"Triton stopped answering while loading model {name!r} ({exc!r}); "
                "see the container log"
            )
        return exc

    @contextlib.contextmanager
    def _exclusive(self, name: str) -> Iterator[None]:
        with self._lock:
            lock = self._busy.setdefault(name, threading.Lock())
        with lock:
            yield


def model_index(reply: TritonReply) -> list[dict[str, str]] | None:
    """Triton's repository index, or None when it could not read its repository.

    Seen once in a storm of concurrent loads and unloads (an error's JSON object
    read as the list): most likely Triton's listing failed while another unload
    removed that model's prepared folder. The next poll is asked for.
    """
    if reply.status == 200:
        index = json.loads(reply.body)
        if isinstance(index, list):
            return index
    log.info("Triton could not list its models (%s); asking again", error_message(reply.body))
    return None


def _remaining(deadline: float) -> float:
    """Seconds left until `deadline`; TimeoutError once none are."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the deadline has passed")
    return left


def triton_name(name: str, routed: bool = True) -> str:
    """The entry model's name in Triton: SageMaker's own when nginx can route it.

    `routed` False gives a name nginx's straight route to Triton does not find,
    for models the payload service must answer (those that set the answer's
    custom attributes: serve/sagemaker/custom_attributes.py): Triton's refusal of the
    straight try sends the invocation there.
    """
    if routed and DIRECT_NAME.match(name):
        return name
    return "model-" + hashlib.sha256(name.encode()).hexdigest()[:32]


def _step_name(base: str, original: str) -> str:
    """The Triton name (and folder) of an upload's step `original`: `base~original`.

    A step named with other characters than DIRECT_NAME's gets a hashed name
    instead: Triton's Python backend starts a model's stub through a shell with
    the model's path unquoted, so a name from content holding `;` or `$(...)`
    would be run as a command there.
    """
    if DIRECT_NAME.match(original):
        return f"{base}{STEP_SEPARATOR}{original}"
    return f"{base}{STEP_SEPARATOR}step-" + hashlib.sha256(original.encode()).hexdigest()[:32]


def _sets_custom_attributes(folder: Path) -> bool:
    config = folder / CONFIG_FILE
    return config.is_file() and sets_custom_attributes(model_config.read_config(config))


def _check_name(name: object) -> None:
    """The caller's model_name: the rule every name taken from the upload follows too."""
    check_name(name, "model_name", "send the name SageMaker gave")


def _check_characters(field: str, value: str) -> None:
    """Refuse control characters (NUL among them) and lone surrogates in the url.

    JSON carries both (`\\u0000`, `\\ud800`), but no path holds a NUL, UTF-8
    cannot encode a surrogate, and a line break would forge log lines.
    """
    character = control_character(value)
    if character is not None:
        raise ArtifactError(
            f"{field} {value!r} holds {character!r}, a control character or half of "
            "a surrogate pair; send the name and folder SageMaker gave"
        )


def _refuse_links_outside(folder: Path, root: Path) -> None:
    """Refuse an upload holding a symbolic link that leads outside `root` (the models root).

    The same rule as for links in an archive: the prepared repository links to
    the files the upload's links resolve to, and a link out would serve any
    file of the machine as part of a model. Linked folders are followed, so
    links inside them count too; each real folder is walked once.
    """
    walked: set[Path] = set()
    for current, subfolders, files in os.walk(folder, followlinks=True):
        real = Path(current).resolve()
        if real in walked:
            subfolders[:] = []
            continue
        walked.add(real)
        for name in (*subfolders, *files):
            entry = Path(current, name)
            if entry.is_symlink() and not is_inside(entry, root):
                raise ArtifactError(
                    f"{entry.relative_to(folder)} in {folder} is a symbolic link to "
                    f"{os.readlink(entry)!r}, which leads outside {root}; upload the files "
                    "themselves, or links that stay under it"
                )


def _model_name(folder: Path) -> str:
    config = folder / CONFIG_FILE
    if config.is_file():
        parsed = model_config.read_config(config)
        if parsed.name:
            return check_name(parsed.name, f"{CONFIG_FILE} names the model", CONTENT_NAME_FIX)
    return folder.name


def _check_steps(sources: dict[str, Path], source: Path, staging: Path) -> None:
    """Every ensemble step of the upload names one of its own models, by a plain name.

    Steps are renamed with the upload's models (`NAME~step`); a step naming any
    other model would reach another upload's models, or the repository's
    folders by a path.
    """
    for folder in sources.values():
        config_path = folder / CONFIG_FILE
        if not config_path.is_file():
            continue
        where = shown_path(config_path, source, staging)
        for step in model_config.read_config(config_path).ensemble_scheduling.step:
            check_name(step.model_name, f"{where}: ensemble step", CONTENT_NAME_FIX)
            if step.model_name not in sources:
                raise ArtifactError(
                    f"{where}: ensemble step {step.model_name!r} names no model of this upload "
                    f"(it holds {', '.join(sorted(sources))}); an upload's ensembles use its "
                    "own models: upload the step with the ensemble"
                )


def _entry_model(sources: dict[str, Path], url: str) -> str:
    """The model to invoke: the only one, or the one no other model of the upload uses."""
    if len(sources) == 1:
        return next(iter(sources))
    used: set[str] = set()
    for folder in sources.values():
        if (folder / CONFIG_FILE).is_file():
            config = model_config.read_config(folder / CONFIG_FILE)
            used.update(step.model_name for step in config.ensemble_scheduling.step)
    entries = [name for name in sources if name not in used]
    if len(entries) != 1:
        names = ", ".join(entries) or "none"
        raise ArtifactError(
            f"{url} holds several models and no single one to invoke (candidates: {names}); "
            "upload one model, or an ensemble with its steps"
        )
    return entries[0]


def _rename(config: model_config.ModelConfig, name: str, renames: dict[str, str]) -> None:
    config.name = name
    for step in config.ensemble_scheduling.step:
        step.model_name = renames.get(step.model_name, step.model_name)


def _decode_token(token: str | None) -> str:
    if not token:
        return ""
    try:
        return base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"next_page_token {token!r} is not a token this endpoint issued") from exc
