"""build/bench/front_pieces.py edits the nginx config serve renders, by its text: every
edit must still find its text here, or the benchmark stops on a measuring machine
("serve's nginx config has no ...") instead of in `make test`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, front_config


def test_every_piece_still_edits_serve_s_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(REPO_ROOT / "build" / "bench"))
    import front_pieces

    config = front_config(tmp_path, default_model="ncf_food", worker_processes=2).render()
    for name, edit in front_pieces.PIECES.items():
        # An edit whose text is gone raises SystemExit, naming it.
        assert (edit(config) == config) == (name == "copy"), name
