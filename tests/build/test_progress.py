"""Progress where people wait: one line rewritten on a terminal, plain lines in a log."""

from __future__ import annotations

import io
import itertools
import logging
import os
import pty
import select
import subprocess
import sys
import uuid

import pytest
from smtriton.cli import configure_logging
from smtriton.progress import Progress, StillWaiting, poll

from tests.build.conftest import INSTANCE_TYPE, REGISTRY, ROLE_ARN


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def informative() -> None:
    configure_logging(quiet=False)


def test_a_terminal_gets_one_line_per_state_rewritten_in_place() -> None:
    stream, clock = io.StringIO(), Clock()
    progress = Progress("endpoint ncf", stream=stream, clock=clock, interactive=True)
    for now, status in ((0, "Creating"), (15, "Creating"), (75, "Creating"), (80, "InService")):
        clock.now = now
        progress.update(status)
    progress.finish()
    assert stream.getvalue() == (
        "\r\x1b[Ksmtriton: endpoint ncf: Creating (0s)"
        "\r\x1b[Ksmtriton: endpoint ncf: Creating (15s)"
        "\r\x1b[Ksmtriton: endpoint ncf: Creating (1m15s)"
        "\n\r\x1b[Ksmtriton: endpoint ncf: InService (1m20s)\n"
    )


def test_a_log_gets_a_line_per_change_and_one_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    progress = Progress("transform job j", stream=io.StringIO(), clock=clock, interactive=False)
    with caplog.at_level(logging.INFO, logger="smtriton"):
        logging.getLogger("smtriton").addHandler(caplog.handler)
        for now in (0, 10, 20, 59, 61, 62, 130):
            clock.now = now
            progress.update("InProgress")
        clock.now = 140
        progress.update("Completed")
        logging.getLogger("smtriton").removeHandler(caplog.handler)
    assert [r.getMessage() for r in caplog.records] == [
        "transform job j: InProgress (0s)",
        "transform job j: InProgress (1m01s)",
        "transform job j: InProgress (2m10s)",
        "transform job j: Completed (2m20s)",
    ]


def test_quiet_shows_no_progress() -> None:
    configure_logging(quiet=True)
    stream = io.StringIO()
    progress = Progress("endpoint ncf", stream=stream, interactive=True)
    progress.update("Creating")
    progress.finish()
    assert stream.getvalue() == ""


def test_a_wait_that_runs_out_says_how_to_follow_it() -> None:
    ticks = itertools.count(step=40.0)
    progress = Progress("asynchronous inference 7", stream=io.StringIO(), clock=lambda: next(ticks))
    with pytest.raises(StillWaiting) as raised:
        poll(
            progress,
            lambda: ("queued or running", None),
            timeout_s=100,
            poll_s=1,
            still_waiting="the answer will be at s3://b/o/7.out",
            sleep=lambda _: None,
        )
    assert str(raised.value).startswith("asynchronous inference 7 is still queued or running")
    assert str(raised.value).endswith("the answer will be at s3://b/o/7.out")


@pytest.mark.usefixtures("aws_env")
def test_deploy_at_a_terminal_rewrites_its_progress_line() -> None:
    """smtriton deploy with stderr on a pseudo-terminal, as a person runs it."""
    name = f"tty-{uuid.uuid4().hex[:10]}"
    main, secondary = pty.openpty()
    command = [
        sys.executable, "-m", "smtriton", "deploy", "--endpoint-name", name,
        "--image", f"{REGISTRY}/sagemaker-triton:v1", "--role", ROLE_ARN,
        "--instance-type", INSTANCE_TYPE, "--model-data", "s3://b-1/m.tar.gz",
        "--poll-interval", "0.05",
    ]  # fmt: skip
    done = subprocess.run(command, stderr=secondary, stdout=subprocess.PIPE, timeout=60)
    os.close(secondary)
    shown = b""
    while select.select([main], [], [], 0.5)[0]:
        try:
            chunk = os.read(main, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(main)
    assert done.returncode == 0, shown.decode(errors="replace")
    assert done.stdout == f"{name} InService\n".encode()
    text = shown.decode()
    assert f"\r\x1b[Ksmtriton: endpoint {name}: Creating (0s)" in text
    assert f"\r\x1b[Ksmtriton: endpoint {name}: InService" in text
