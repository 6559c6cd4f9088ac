"""Artifacts through the real `serve` and a real Triton: archives and environments."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import requests

from tests.artifacts.conftest import member, write_tar
from tests.artifacts.test_repository_archives import repository_archive, tree_digest
from tests.conftest import ServeProcess, add_request, write_add_model

StartServe = Callable[..., ServeProcess]


def invoke(server: ServeProcess, model: str | None = None) -> requests.Response:
    path = f"/models/{model}/invoke" if model else "/invocations"
    return requests.post(
        f"{server.url}{path}", json=add_request([1, 2, 3, 4], [10, 20, 30, 40]), timeout=30
    )


def test_archives_in_both_layouts_serve_beside_a_folder(
    opt_ml: Path, start_serve: StartServe, tmp_path: Path
) -> None:
    model_dir = opt_ml / "model"
    write_add_model(model_dir, name="folder_model")
    repository_archive(tmp_path, model_dir / "model.tar.gz", ["flat"])
    repository_archive(tmp_path, model_dir / "wrapped.tar", ["wrapped"], wrapper="repository")
    before = tree_digest(model_dir)

    server = start_serve(opt_ml, SAGEMAKER_TRITON_DEFAULT_MODEL_NAME="wrapped").wait_ready()

    response = invoke(server)
    assert response.status_code == 200, response.text
    assert response.json()["model_name"] == "wrapped"
    assert response.json()["outputs"][0]["data"] == [11, 22, 33, 44]
    # Triton loads every model or start-up fails; this line lists what it was given.
    assert "serving folder_model, flat, wrapped; /invocations runs 'wrapped'" in server.output
    assert tree_digest(model_dir) == before


def test_a_hostile_archive_stops_serve_with_its_name_and_leaves_nothing(
    opt_ml: Path, start_serve: StartServe, tmp_path: Path
) -> None:
    write_add_model(opt_ml / "model", name="fine")
    write_tar(
        opt_ml / "model" / "model.tar.gz",
        [member("add/config.pbtxt", b'backend: "python"'), member("/etc/evil", b"x")],
    )
    workdir = tmp_path / "workdir"

    server = start_serve(opt_ml, SERVE_WORKDIR=str(workdir))

    assert server.wait_exit(60) == 1
    assert "model.tar.gz: member '/etc/evil' has an absolute path" in server.output
    assert "Traceback" not in server.output
    assert not (workdir / "run").exists()
    assert not Path("/etc/evil").exists()
