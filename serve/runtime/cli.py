"""The `serve` command: what SageMaker runs (`docker run IMAGE serve`)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from serve.errors import ServeError
from serve.runtime.server import Server
from serve.settings import Settings, unread_variables

log = logging.getLogger("serve")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="serve",
        description="Serve a Triton model repository the way SageMaker expects. "
        "Configured by environment variables (see docs/configuration.md).",
    )
    # SageMaker passes "serve" as the container's argument; accept and ignore it.
    parser.add_argument("command", nargs="?", choices=["serve"], help=argparse.SUPPRESS)
    parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        settings = Settings.from_environ(os.environ)
        for line in unread_variables(os.environ).values():
            log.warning("%s", line)
        server = Server(settings)
        signal.signal(signal.SIGTERM, server.request_stop)
        signal.signal(signal.SIGINT, server.request_stop)
        code = server.run()
    except ServeError as error:
        log.error("%s", error.message)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
