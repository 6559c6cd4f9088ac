"""Every path written into nginx.conf is quoted; a workspace nothing can carry is refused.

nginx's configuration is text: a path written bare ends at a space or a `;`,
and what follows is read as directives. serve's workspace (SERVE_WORKDIR, else
a folder in TMPDIR) lands in a dozen of them (pid, temporary folders, the
sockets, the access log). Triton's Python backend starts its stubs through a
shell with the model's path unquoted, so a workspace path with shell syntax
is refused by name before anything starts.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from serve.errors import ConfigError
from serve.front.nginx import nginx_binary
from tests.conftest import ServeProcess, front_config, write_add_model

StartServe = Callable[..., ServeProcess]
# A folder name that, written bare, ends a directive and starts another.
INJECTING = 'w; error_log injected debug; #{x} \\ "q'


def test_paths_in_nginx_conf_are_quoted(enterable_tmp: Path) -> None:
    """nginx itself reads the rendered file: one argument per path, no injected directive.

    (A short base folder: unix socket paths are at most 107 bytes.)
    """
    tmp_path = enterable_tmp
    workdir = tmp_path / INJECTING / "front"
    workdir.mkdir(parents=True)
    front = front_config(workdir, bidirectional=True)
    config = front.write()
    checked = subprocess.run(
        [str(nginx_binary()), "-t", "-c", str(config), "-p", str(workdir)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    assert not (workdir / "injected").exists() and not (workdir.parent / "injected").exists()
    rendered = config.read_text()
    assert f'pid "{tmp_path}/w; error_log injected debug; #{{x}} \\\\ \\"q/front/nginx.pid";' in (
        rendered
    )


def test_a_path_nginx_cannot_carry_is_refused_at_render(tmp_path: Path) -> None:
    front = front_config(tmp_path / "cost$host", control_socket=tmp_path / "control.sock")
    with pytest.raises(ConfigError, match="SERVE_WORKDIR"):
        front.render()


def test_a_workdir_with_shell_or_nginx_syntax_is_refused_by_name(
    opt_ml: Path, start_serve: StartServe, enterable_tmp: Path
) -> None:
    """It used to reach nginx (which read `error_log` as a directive) and Triton's shell."""
    write_add_model(opt_ml / "model")
    for name in (INJECTING, "cost$host", "line\nbreak", "a b"):
        server = start_serve(opt_ml, SERVE_WORKDIR=str(enterable_tmp / name))
        assert server.wait_exit(30) == 1
        output = server.output
        assert "SERVE_WORKDIR" in output and "starting nginx" not in output, output
        assert "Traceback" not in output
