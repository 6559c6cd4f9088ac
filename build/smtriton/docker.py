"""Every call to the container engine's command line goes through this module.

It runs `docker`, or `podman` where there is no docker (its command line is
the same for build, tag, push and login); CONTAINER_ENGINE names either
outright. The first found on PATH is used, so the tests put a recording
stand-in there and check the exact arguments; no other module builds a
docker command line. Docker's own output (build steps, push progress) goes to
stderr, keeping smtriton's stdout for results that scripts read.
"""

from __future__ import annotations

import io
import logging
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from smtriton.errors import SmtritonError

log = logging.getLogger(__name__)

ENGINES = ("docker", "podman")
DOCKER_MISSING = (
    "neither docker nor podman was found on PATH: install Docker Engine, Docker Desktop "
    "or podman (in CodeBuild, turn on privileged mode) and make sure it runs"
)


def _progress_stream() -> int | None:
    """The file descriptor docker's stdout should go to: ours for stderr, if it has one."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, io.UnsupportedOperation):
        return None


@dataclass(frozen=True)
class Docker:
    """The docker command-line client found on PATH."""

    executable: str

    @classmethod
    def locate(cls, environ: Mapping[str, str] = os.environ) -> Docker:
        """CONTAINER_ENGINE when set, else docker, else podman."""
        wanted = environ.get("CONTAINER_ENGINE")
        if wanted:
            found = shutil.which(wanted)
            if found is None:
                raise SmtritonError(f"CONTAINER_ENGINE={wanted} is not a command on PATH")
            return cls(found)
        for engine in ENGINES:
            found = shutil.which(engine)
            if found is not None:
                return cls(found)
        raise SmtritonError(DOCKER_MISSING)

    def run(self, args: Sequence[str], *, stdin_text: str | None = None) -> None:
        """Run `docker ARGS`; a non-zero exit becomes an error naming the subcommand."""
        name = Path(self.executable).name
        log.info("$ %s %s", name, shlex.join(args))
        try:
            completed = subprocess.run(
                [self.executable, *args],
                input=stdin_text,
                stdin=None if stdin_text is not None else subprocess.DEVNULL,
                stdout=_progress_stream(),
                text=True,
                check=False,
            )
        except OSError as error:
            raise SmtritonError(f"cannot run {self.executable}: {error}") from None
        if completed.returncode != 0:
            raise SmtritonError(
                f"`{name} {args[0]}` failed with exit code {completed.returncode} "
                "(its output is above)"
            )

    def build(
        self,
        *,
        context: Path,
        dockerfile: Path,
        references: Sequence[str],
        build_args: Mapping[str, str],
        platform: str | None,
        pull: bool,
    ) -> None:
        args = ["build", "--file", str(dockerfile)]
        for name, value in build_args.items():
            args += ["--build-arg", f"{name}={value}"]
        for reference in references:
            args += ["--tag", reference]
        if platform:
            args += ["--platform", platform]
        if pull:
            args.append("--pull")
        args.append(str(context))
        self.run(args)

    def tag(self, source: str, target: str) -> None:
        self.run(["tag", source, target])

    def push(self, reference: str) -> None:
        self.run(["push", reference])

    def login(self, registry: str, username: str, password: str) -> None:
        """Log in with the password on stdin, so it never shows in `ps` or logs."""
        self.run(
            ["login", "--username", username, "--password-stdin", registry],
            stdin_text=password,
        )
