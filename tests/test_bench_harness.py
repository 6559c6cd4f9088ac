"""The benchmark harness, run short against a real serve + Triton, as CI runs it."""

from __future__ import annotations

import csv
import datetime
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.conftest import REPO_ROOT

HARNESS = REPO_ROOT / "build" / "bench" / "harness.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_short_run_writes_csv_plots_and_ratios(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(HARNESS), "--concurrency", "1,4", "--seconds", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    with (out / "results.csv").open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    points = {(row["target"], int(row["concurrency"])) for row in rows}
    targets = ("serve", "triton-sagemaker", "triton-v2", "perf_analyzer")
    assert points == {(target, level) for target in targets for level in (1, 4)}
    for row in rows:
        assert float(row["requests_per_second"]) > 0, row
        assert 0 < float(row["p50_ms"]) <= float(row["p99_ms"]), row
        assert int(row["errors"]) == 0, row
    assert {row["tool"] for row in rows} == {"wrk", "perf_analyzer"}

    for name in ("throughput.png", "latency.png"):
        image_path = out / name
        assert image_path.read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(image_path) as image:
            image.verify()
        with Image.open(image_path) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 200
            # The plot names the machine, the commit and the date of the run.
            stamp = image.info["Description"]
        assert "CPU cores" in stamp and " · commit " in stamp, stamp
        assert stamp.endswith(datetime.datetime.now(datetime.timezone.utc).date().isoformat())
        assert (out / "run.txt").read_text().strip() == stamp

    assert "ratios, serve / target" in result.stdout
    for target in targets[1:]:
        assert any(line.startswith(target) for line in result.stdout.splitlines())


def test_earlier_results_are_plotted_again_without_measuring(tmp_path: Path) -> None:
    csv_path = tmp_path / "results.csv"
    csv_path.write_text(
        "model,target,tool,url,payload,batch,concurrency,rounds,requests_per_second,"
        "p50_ms,p99_ms,errors\n"
        + "".join(
            f"m,{target},wrk,http://x,json,1,{level},1,{rps * level},1.0,2.0,0\n"
            for target, rps in (("serve", 100), ("triton-sagemaker", 110))
            for level in (1, 4, 16)
        )
    )
    result = subprocess.run(
        [sys.executable, str(HARNESS), "--from-csv", str(csv_path), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "triton-sagemaker      16    0.909" in result.stdout
    for name in ("throughput.png", "latency.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(tmp_path / name) as image:
            assert image.info["Description"] == "machine, commit and date unknown"
