"""The user Triton, its Python-backend stubs and model code run as, when serve runs as root.

NVIDIA's images have a `triton-server` user (uid 1000) but run everything as
root. Model code is code from the artifact: as root it could rewrite
`/opt/ml/model`, serve's prepared repository and nginx's configuration,
connect to serve's internal sockets (which trust the front's headers) or
read other models' files. Run as an ordinary user it can write only where
that user may: its home (a folder of the run's own), /tmp and /dev/shm.
Archive scripts (an environment's `conda-unpack`) and the stub check, which
run code from the artifact or from Triton's installation (NVIDIA gives that
to uid 1000), run as the same user.

The drop happens only when serve is root and the user exists: a process that
is not root cannot change its user (and is no more privileged than that user
anyway), and a workstation or CI host without the user keeps running as
before. `SERVE_TRITON_USER=root` turns the drop off for models that truly
need root; a name given explicitly must exist.
"""

from __future__ import annotations

import dataclasses
import grp
import logging
import os
import pwd
import stat
from collections.abc import Collection
from pathlib import Path
from typing import TypedDict

from serve.errors import ArtifactError, ConfigError
from serve.machine.sockets import NGINX_WORKER_GROUP, NGINX_WORKER_USER

log = logging.getLogger(__name__)

# The user NVIDIA's build.py creates (uid and gid 1000) in every Triton image.
DEFAULT_TRITON_USER = "triton-server"
KEEP_ROOT = "root"
# The setting that names the user (serve/settings.py), named in every refusal.
SETTING = "SERVE_TRITON_USER"
_READ = 0o4
_ENTER = 0o1


class PopenUser(TypedDict, total=False):
    """`subprocess.Popen`'s arguments that choose the child's user (none: the parent's)."""

    user: int
    group: int
    extra_groups: list[int]


def popen_user(run_as: RunAs | None) -> PopenUser:
    """The arguments that start a child as `run_as` (None: as serve's own user).

    No supplementary groups: root's (and nginx's `nogroup`, which may connect
    to serve's internal sockets) must not come along.
    """
    if run_as is None:
        return {}
    return {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}


@dataclasses.dataclass(frozen=True)
class RunAs:
    """An unprivileged user (and its primary group alone) that a child process becomes."""

    name: str
    uid: int
    gid: int

    def may(self, path: Path, access: int) -> bool:
        """Whether this user has `access` (rwx bits, 0o4 read, 0o1 enter) on `path`.

        From the mode bits, as the kernel decides for a process of this uid and
        gid (access control lists aside); `path`'s links are followed.
        """
        status = path.stat()
        if status.st_uid == self.uid:
            bits = status.st_mode >> 6
        elif status.st_gid == self.gid:
            bits = status.st_mode >> 3
        else:
            bits = status.st_mode
        return bits & access == access

    def closed_folder(self, path: Path) -> Path | None:
        """The first folder on the way to `path` (itself excluded) this user cannot enter."""
        for folder in reversed(path.resolve().parents):
            if not self.may(folder, _ENTER):
                return folder
        return None

    def check_readable(self, source: Path, skip: Collection[Path] = ()) -> None:
        """Refuse a model folder (or file) that this user cannot read, naming what and how.

        `source`'s files, its folders and the folders above it: the prepared
        repository links to them, so Triton opens the originals. `skip`: files
        serve reads for Triton (an environment archive it unpacks).
        """
        skipped = {path.resolve() for path in skip}
        closed = self.closed_folder(source)
        if closed is not None:
            self._refuse(closed, "enter")
        if source.is_file():
            if not self.may(source, _READ):
                self._refuse(source, "read")
            return
        for walked, _, files in os.walk(source, followlinks=True):
            if not self.may(Path(walked), _READ | _ENTER):
                self._refuse(Path(walked), "read")
            for name in files:
                path = Path(walked, name)
                if path.exists() and path.resolve() not in skipped and not self.may(path, _READ):
                    self._refuse(path, "read")

    def check_runnable(self, program: Path) -> None:
        """Refuse to start Triton on a program of its (the Python-backend stub) that this
        user cannot run: every Python model would fail to load, with an obscure error.

        Triton run as root once chmods a stub it could not start to `u=x`
        (through links too), which leaves it to root alone.
        """
        if program.exists() and not self.may(program, _ENTER):
            mode = stat.filemode(program.stat().st_mode)
            raise ConfigError(
                f"Triton runs as {self.name} (uid {self.uid}) and cannot run "
                f"{program.resolve()} (mode {mode}); chmod 755 it, or set "
                f"{SETTING}={KEEP_ROOT} to run Triton and model code as root"
            )

    def _refuse(self, path: Path, what: str) -> None:
        mode = stat.filemode(path.stat().st_mode)
        raise ArtifactError(
            f"Triton runs as {self.name} (uid {self.uid}) and cannot {what} {path} "
            f"(mode {mode}); let others read the model's files (chmod -R a+rX before "
            f"packing them), or set {SETTING}={KEEP_ROOT} to run Triton and model code as root"
        )


def triton_user(configured: str | None) -> RunAs | None:
    """The user to run Triton as, or None to run it as serve's own user.

    `configured`: the setting's value (None: unset, meaning `triton-server`
    where that user exists).
    """
    if os.geteuid() != 0:
        if configured is not None:
            log.info(
                "%s=%s: serve is not root, so Triton runs as serve's own user",
                SETTING,
                configured,
            )
        return None
    if configured == KEEP_ROOT:
        log.warning(
            "%s=%s: Triton and model code run as root and can change anything in the container",
            SETTING,
            KEEP_ROOT,
        )
        return None
    name = configured or DEFAULT_TRITON_USER
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        if configured is None:
            log.info("no %s user here: Triton runs as root like serve", name)
            return None
        raise ConfigError(
            f"{SETTING}={configured}: there is no such user; name an existing user, "
            f"or {KEEP_ROOT} to run Triton and model code as root"
        ) from None
    if entry.pw_uid == 0:
        return None
    if name == NGINX_WORKER_USER or entry.pw_gid == _group_id(NGINX_WORKER_GROUP):
        raise ConfigError(
            f"{SETTING}={name}: nginx's workers run as {NGINX_WORKER_USER}:"
            f"{NGINX_WORKER_GROUP}, which may connect to serve's internal sockets; "
            f"name a user of another group ({DEFAULT_TRITON_USER} in NVIDIA's images)"
        )
    return RunAs(name, entry.pw_uid, entry.pw_gid)


def _group_id(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None
