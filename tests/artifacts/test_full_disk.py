"""A full file system while unpacking: 507 with the path and the sizes, nothing left behind.

serve runs in a mount namespace of the test's own where a 16 MiB tmpfs holds
its workspace (where model archives are unpacked) and its environment cache,
and loads archives that unpack to more than that.
"""

from __future__ import annotations

import io
import re
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import requests

from tests.artifacts.test_serving import write_env_model
from tests.conftest import ServeProcess, own_tmpfs, write_add_model
from tests.multi_model.test_multi_model import invoke, load, upload_add

StartServe = Callable[..., ServeProcess]
DISK_BYTES = 16 * 1024 * 1024
# Zeros compress to almost nothing: a small archive that unpacks past the disk.
BIG_FILE_BYTES = 24 * 1024 * 1024

SMALL_DISK = own_tmpfs('"$SMALL_DISK"', DISK_BYTES)


def big_archive(path: Path, members: dict[str, bytes]) -> Path:
    """A tar.gz of `members` plus a file of zeros larger than the small disk."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in {**members, "weights.bin": bytes(BIG_FILE_BYTES)}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if name.endswith("activate") else 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def test_unpacking_onto_a_full_disk_is_507_and_leaves_nothing(
    opt_ml: Path, start_serve: StartServe, enterable_tmp: Path
) -> None:
    disk = enterable_tmp / "disk"
    disk.mkdir()
    server = start_serve(
        opt_ml,
        wrapper=SMALL_DISK,
        SMALL_DISK=str(disk),
        SAGEMAKER_MULTI_MODEL="true",
        SERVE_WORKDIR=str(disk / "work"),
        SERVE_ENV_CACHE=str(disk / "envs"),
    ).wait_ready()
    # The tmpfs as serve sees it, in its mount namespace.
    seen = Path(f"/proc/{server.process.pid}/root") / disk.relative_to("/")
    assert seen.stat().st_dev != disk.stat().st_dev

    # A model archive: unpacked into serve's workspace.
    url = opt_ml / "models" / "big" / "model"
    url.mkdir(parents=True)
    model = write_add_model(opt_ml / "staging", name="big")
    members = {
        f"big/{path.relative_to(model)}": path.read_bytes()
        for path in model.rglob("*")
        if path.is_file()
    }
    big_archive(url / "model.tar.gz", members)
    response = load(server, "big", str(url))
    assert response.status_code == 507, response.text
    error = response.json()["error"]
    assert "model.tar.gz" in error and str(disk) in error, error
    assert re.search(r"\d+ of \d+ bytes free", error), error
    uploads = seen / "work" / "run" / "uploads"
    assert not uploads.exists() or not any(uploads.rglob("*")), list(uploads.rglob("*"))

    # An environment archive: unpacked into the environment cache.
    env_url = opt_ml / "models" / "env" / "model"
    folder = write_env_model(env_url.parent / "staging", "m", "$$TRITON_MODEL_DIRECTORY/env.tar.gz")
    big_archive(folder / "env.tar.gz", {"bin/activate": b"# activate\n"})
    shutil.move(str(folder), env_url)
    response = load(server, "env", str(env_url))
    assert response.status_code == 507, response.text
    error = response.json()["error"]
    assert "env.tar.gz" in error and str(disk / "envs") in error, error
    assert not [p for p in (seen / "envs").iterdir() if not p.name.endswith(".lock")]

    # Nothing was loaded, and a model that fits loads.
    assert requests.get(f"{server.url}/models", timeout=5).json() == {"models": []}
    assert load(server, "small", upload_add(opt_ml, "small")).status_code == 200
    assert invoke(server, "small").status_code == 200
