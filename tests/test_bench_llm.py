"""The language-model benchmark (build/bench/llm_stream.py), run short on the model that
answers at once, so a GPU run's scarce time is not spent finding that it breaks."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT

BENCH = REPO_ROOT / "build" / "bench" / "llm_stream.py"


def run(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout


def test_both_paths_stream_tokens_and_the_ratios_are_printed(tmp_path: Path) -> None:
    run("--build", str(tmp_path), "--instant")
    out = run(
        "--repository", str(tmp_path), "--streams", "1,2", "--rounds", "1",
        "--seconds", "1", "--tokens", "4",
    )  # fmt: skip
    assert "a model that answers at once" in out, out
    for streams in (1, 2):
        for path in ("serve chat", "Triton generate_stream"):
            row = re.search(rf"^\| {streams} \| {path} \| ([\d,]+) \| ([\d.]+) \|$", out, re.M)
            assert row is not None, (streams, path, out)
            assert int(row[1].replace(",", "")) > 0 and float(row[2]) > 0, row[0]
        ratio = re.search(rf"^\| {streams} \| ([\d.]+) \| ([+-][\d.]+) \|$", out, re.M)
        assert ratio is not None and float(ratio[1]) > 0, (streams, out)
