"""Who may connect to serve's internal unix sockets: nginx's workers, and no one else.

The services behind them (the control app, the payload service, the v2 JSON
writers, the stream server) trust what arrives there: the model and route in
the front's internal headers, already checked by nginx. Run as root, nginx's
workers drop to NGINX_WORKERS' user and group, so a socket is root's, of
that group, mode 0660; run as another user, the workers are that user and
0600 is enough. Other users of the machine (model code among them) cannot
connect either way.
"""

from __future__ import annotations

import grp
import os
from pathlib import Path

# The user and group nginx's workers run as under root (Debian and Ubuntu name the
# unprivileged group nogroup).
NGINX_WORKER_USER = "nobody"
NGINX_WORKER_GROUP = "nogroup"


def restrict_socket(path: Path) -> None:
    """Let only nginx's workers (and root) connect to the unix socket at `path`."""
    if os.geteuid() == 0:
        os.chown(path, 0, grp.getgrnam(NGINX_WORKER_GROUP).gr_gid)
        os.chmod(path, 0o660)
    else:
        os.chmod(path, 0o600)
