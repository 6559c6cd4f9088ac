"""Multi-model endpoints share the environment cache and evict it safely."""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Callable
from pathlib import Path

import requests

from tests.artifacts.conftest import BuiltEnvironment
from tests.artifacts.test_serving import invoke, write_env_model
from tests.conftest import ServeProcess

StartServe = Callable[..., ServeProcess]


def upload(opt_ml: Path, key: str, archive: Path) -> str:
    url = opt_ml / "models" / key / "model"
    folder = write_env_model(url.parent / "staging", "m", "$$TRITON_MODEL_DIRECTORY/env.tar.gz")
    shutil.copy(archive, folder / "env.tar.gz")
    shutil.move(str(folder), url)
    return str(url)


def load(server: ServeProcess, name: str, url: str) -> requests.Response:
    return requests.post(f"{server.url}/models", json={"model_name": name, "url": url}, timeout=120)


def test_unused_environments_are_evicted_when_disk_runs_short_never_used_ones(
    opt_ml: Path, start_serve: StartServe, tmp_path: Path, serving_env: BuiltEnvironment
) -> None:
    # Two archives of the same environment with different bytes: two cache entries.
    other = tmp_path / "other-env.tar.gz"
    other.write_bytes(gzip.compress(gzip.decompress(serving_env.archive.read_bytes()), mtime=1))
    cache = tmp_path / "env-cache"
    server = start_serve(
        opt_ml,
        SAGEMAKER_MULTI_MODEL="true",
        SERVE_ENV_CACHE=str(cache),
        # More free space than any disk has: every load must make room first.
        SERVE_ENV_CACHE_MIN_FREE_BYTES=str(1 << 60),
    ).wait_ready()

    response = load(server, "first", upload(opt_ml, "first", serving_env.archive))
    assert response.status_code == 200, response.text
    (first_env,) = [p for p in cache.iterdir() if p.is_dir()]
    assert load(server, "second", upload(opt_ml, "second", other)).status_code == 200
    # The first model still runs in its environment: eviction left it alone.
    assert first_env.is_dir()
    assert invoke(server, "first").status_code == 200
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 2

    assert requests.delete(f"{server.url}/models/first", timeout=60).status_code == 200
    assert load(server, "third", upload(opt_ml, "third", other)).status_code == 200
    # Unused now, the first environment made room; the one in use stays.
    assert not first_env.exists()
    assert invoke(server, "second").status_code == 200
    assert invoke(server, "third").status_code == 200
    assert "evicted" in server.output
