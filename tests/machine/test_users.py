"""serve.machine.users: which user Triton runs as, and what that user can read."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

from serve.errors import ArtifactError, ConfigError
from serve.machine.users import DEFAULT_TRITON_USER, RunAs, triton_user

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root can run a child as another user")


def daemon() -> RunAs:
    """A user every Debian and Ubuntu system has, of a group of its own."""
    entry = pwd.getpwnam("daemon")
    return RunAs("daemon", entry.pw_uid, entry.pw_gid)


@as_root
def test_a_named_user_is_the_one_triton_runs_as() -> None:
    assert triton_user("daemon") == daemon()


@as_root
def test_nginx_workers_user_is_refused() -> None:
    # nobody:nogroup may connect to serve's internal sockets (0660, group nogroup).
    with pytest.raises(ConfigError, match="SERVE_TRITON_USER=nobody: nginx's workers run as"):
        triton_user("nobody")


@as_root
def test_root_keeps_triton_root() -> None:
    assert triton_user("root") is None


@as_root
def test_a_named_user_that_does_not_exist_stops_start_up() -> None:
    with pytest.raises(ConfigError, match="SERVE_TRITON_USER=no-such-user: there is no such user"):
        triton_user("no-such-user")


@as_root
def test_unset_means_triton_server_where_it_exists() -> None:
    try:
        entry = pwd.getpwnam(DEFAULT_TRITON_USER)
    except KeyError:
        # A host without NVIDIA's user (this one, CI): Triton stays serve's user.
        assert triton_user(None) is None
    else:
        expected = RunAs(DEFAULT_TRITON_USER, entry.pw_uid, entry.pw_gid)
        assert triton_user(None) == expected


def test_files_only_root_may_read_are_refused_by_name(enterable_tmp: Path) -> None:
    tmp_path = enterable_tmp
    model = tmp_path / "open" / "add"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text("")
    (model / "config.pbtxt").write_text("")
    (tmp_path / "open").chmod(0o755)
    daemon().check_readable(model)

    (model / "1" / "model.py").chmod(0o600)
    with pytest.raises(ArtifactError) as refused:
        daemon().check_readable(model)
    assert f"cannot read {model / '1' / 'model.py'} (mode -rw-------)" in refused.value.message
    assert "SERVE_TRITON_USER=root" in refused.value.message

    (model / "1" / "model.py").chmod(0o644)
    (tmp_path / "open").chmod(0o700)
    with pytest.raises(ArtifactError, match=f"cannot enter {tmp_path / 'open'} "):
        daemon().check_readable(model)


@as_root
def test_serve_that_is_not_root_runs_triton_as_itself() -> None:
    # A local run as an ordinary user: it cannot change user, and names none.
    python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    assert python is not None
    probe = "from serve.machine.users import triton_user; print(triton_user('triton-server'))"
    result = subprocess.run(
        [python, "-c", probe],
        env={"PYTHONPATH": str(Path(__file__).parents[2]), "PATH": "/usr/bin:/bin"},
        user="daemon",
        group="daemon",
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout == "None\n"
