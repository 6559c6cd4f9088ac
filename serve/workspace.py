"""The run's own files: the prepared repository, the front's config and sockets.

Everything `serve` writes for one run lives under one folder it owns, which
is removed when `serve` exits, so a restarted container never sees a stale
repository.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)


class Workspace:
    def __init__(self, configured: Path | None):
        if configured is None:
            self.root = Path(tempfile.mkdtemp(prefix="serve-"))
        else:
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
