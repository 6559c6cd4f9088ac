"""The environment cache trusts only a folder serve owns and no one else can write.

Its default lies in the shared temporary folder ($TMPDIR/serve-env-cache), where
any user of the machine could create it first and plant a "complete"
environment (a folder and its `.used` stamp) that serve, as root, would hand
to Triton, or lead it elsewhere with a link.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from serve.artifacts.archives import ExtractionLimits
from serve.artifacts.environments import EnvironmentCache
from serve.errors import ConfigError
from tests.conftest import ServeProcess, write_add_model

StartServe = Callable[..., ServeProcess]


def untrusted_caches(tmp_path: Path) -> dict[str, Path]:
    """Cache folders someone else could have prepared, by what is wrong with each."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    writable = tmp_path / "writable"
    writable.mkdir()
    writable.chmod(0o777)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    linked = tmp_path / "linked"
    linked.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    open_parent = tmp_path / "open-parent"
    open_parent.mkdir()
    open_parent.chmod(0o777)
    caches = {
        "writable by others": writable,
        "a symbolic link": linked,
        "under a folder others can write": open_parent / "cache",
    }
    if os.geteuid() == 0:
        os.chown(foreign, 65534, 65534)
        caches["owned by another user"] = foreign
    return caches


def test_an_untrusted_cache_folder_is_refused(tmp_path: Path) -> None:
    for problem, root in untrusted_caches(tmp_path).items():
        with pytest.raises(ConfigError, match="SERVE_ENV_CACHE") as refused:
            EnvironmentCache(root, ExtractionLimits())
        assert problem in refused.value.message, (problem, refused.value.message)
    created = EnvironmentCache(tmp_path / "fresh" / "cache", ExtractionLimits()).root
    assert created.stat().st_mode & 0o022 == 0


def test_serve_refuses_to_start_on_an_untrusted_cache(
    opt_ml: Path, start_serve: StartServe, tmp_path: Path
) -> None:
    """It used to start, and to take whatever the folder held for an unpacked environment."""
    write_add_model(opt_ml / "model")
    cache = untrusted_caches(tmp_path / "caches")["writable by others"]
    sha = "0" * 64
    (cache / sha / "bin").mkdir(parents=True)
    (cache / f"{sha}.used").write_text("1")
    server = start_serve(opt_ml, SERVE_ENV_CACHE=str(cache))
    assert server.wait_exit(30) == 1
    assert "SERVE_ENV_CACHE" in server.output and "writable by others" in server.output
    assert "Traceback" not in server.output
