"""The run's own files: the prepared repository, the front's config and sockets.

Everything `serve` writes for one run lives under one folder it owns, which
is removed when `serve` exits, so a restarted container never sees a stale
repository.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path
from types import TracebackType

from serve.errors import ConfigError
from serve.machine.users import RunAs
from serve.settings import check_workspace_path

log = logging.getLogger(__name__)


class Workspace:
    def __init__(self, configured: Path | None):
        if configured is None:
            # The checks SERVE_WORKDIR gets, on the folder TMPDIR leads to.
            check_workspace_path(Path(tempfile.gettempdir()) / "serve-x", "TMPDIR")
            self.root = Path(tempfile.mkdtemp(prefix="serve-"))
        else:
            _check_enterable(configured)
            self.root = configured / "run"
            if self.root.exists():
                log.info("removing %s left by an earlier run", self.root)
                shutil.rmtree(self.root)
            self.root.mkdir(parents=True)
        # nginx's unprivileged workers must traverse to the control socket.
        os.chmod(self.root, 0o755)

    @property
    def repository(self) -> Path:
        return self.root / "repository"

    @property
    def archives(self) -> Path:
        """Model archives found in /opt/ml/model, unpacked (the user's folder stays as it is)."""
        return self.root / "archives"

    @property
    def backends(self) -> Path:
        return self.root / "backends"

    def home(self, user: RunAs) -> Path:
        """A home folder of `user`'s own (HOME for Triton and model code, which may cache
        there): the one place under the workspace that user may write."""
        folder = self.root / "home"
        folder.mkdir(mode=0o700, exist_ok=True)
        os.chown(folder, user.uid, user.gid)
        return folder

    @property
    def front(self) -> Path:
        return self.root / "front"

    @property
    def control_socket(self) -> Path:
        return self.root / "front" / "control.sock"

    def __enter__(self) -> Workspace:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _check_enterable(configured: Path) -> None:
    """Refuse a SERVE_WORKDIR that nginx's workers could not reach.

    Run as root, nginx's workers drop to nobody, yet they connect to the
    sockets and write the temporary files under the workdir; behind a folder
    only its owner may enter (a home folder, pytest's tmp) every request that
    needs them would fail with 503 while /ping says all is well.
    """
    if os.geteuid() != 0:
        return
    folder = configured.resolve()
    for parent in (*reversed(folder.parents), folder):
        if parent.exists() and not parent.stat().st_mode & stat.S_IXOTH:
            raise ConfigError(
                f"SERVE_WORKDIR={configured}: nginx's workers run as nobody and cannot "
                f"enter {parent} (mode {stat.filemode(parent.stat().st_mode)}); allow "
                f"them (chmod o+x {parent}) or choose a folder under /tmp"
            )
