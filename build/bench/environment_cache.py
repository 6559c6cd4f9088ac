"""Benchmark: first preparation of a ~200 MB environment archive against a cache hit.

The archive is made as users without conda are told to make one: a virtual
environment created with `python -m venv --copies`, the packages a model
needs (by default numpy and torch, copied from this interpreter's
site-packages), packed with venv-pack. It is built once into .bench/ and
reused; `--archive` takes an existing one instead (a conda-pack archive, say).

Each round uses a fresh cache folder and measures:
- first: `materialize` on an empty cache (hash, unpack safely, check,
  conda-unpack when the archive has one);
- second: `materialize` from a new `EnvironmentCache` on the same folder, as
  a second start or a second model naming the same archive sees it;
- start-up: `serve`'s whole preparation of a repository of two models that
  both name the archive, on an empty cache (one extraction) and again on the
  warm cache (a second start: none).
The archive is read once before timing, so both start with it in the page
cache. Medians over the rounds are reported, with the ratio (target: 10x).

Run: `.venv/bin/python build/bench/environment_cache.py [--archive PATH] [--rounds N]`.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from serve.artifacts.archives import ExtractionLimits
from serve.artifacts.environments import EnvironmentCache
from serve.artifacts.repository import Preparation, prepare_single_model_repository

REPO_ROOT = Path(__file__).resolve().parents[2]
WORK = REPO_ROOT / ".bench" / "environment-cache"
PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
TARGET_RATIO = 10.0


def build_archive(archive: Path, packages: list[str]) -> None:
    """venv --copies + `packages` copied from our site-packages + venv-pack; source removed."""
    import venv_pack

    site_packages = Path(sysconfig.get_paths()["purelib"])
    source = archive.parent / "source-env"
    shutil.rmtree(source, ignore_errors=True)
    subprocess.run(
        [sys.executable, "-m", "venv", "--copies", "--without-pip", str(source)], check=True
    )
    target = source / "lib" / f"python{PYTHON_VERSION}" / "site-packages"
    for package in packages:
        found = [
            path
            for pattern in (package, f"{package}.libs", f"{package}-*.dist-info")
            for path in site_packages.glob(pattern)
        ]
        if not found:
            raise SystemExit(f"{package} is not installed in {site_packages}")
        for path in found:
            shutil.copytree(path, target / path.name, symlinks=True)
    partial = archive.with_name(f"partial-{archive.name}")
    print(f"packing {', '.join(packages)} into {archive} (once; takes a while)", flush=True)
    venv_pack.pack(prefix=str(source), output=str(partial), force=True)
    shutil.rmtree(source)
    partial.rename(archive)


def measure(archive: Path, work: Path) -> tuple[float, float, int]:
    """(first preparation s, cache hit s, bytes unpacked) with a fresh cache folder."""
    root = Path(tempfile.mkdtemp(prefix="cache-", dir=work))
    stubs = {PYTHON_VERSION: Path("stub")}
    try:
        first_cache = EnvironmentCache(root, ExtractionLimits())
        started = time.perf_counter()
        first = first_cache.materialize(archive, stubs)
        first_s = time.perf_counter() - started

        started = time.perf_counter()
        second = EnvironmentCache(root, ExtractionLimits()).materialize(archive, stubs)
        second_s = time.perf_counter() - started
        if first.cache_hit or not second.cache_hit or first.path != second.path:
            raise SystemExit(f"unexpected cache behaviour: {first} then {second}")
        return first_s, second_s, first_cache.bytes_extracted
    finally:
        shutil.rmtree(root)


def write_models(model_dir: Path, archive: Path) -> None:
    """Two Python-backend models naming the same environment archive."""
    for name in ("first", "second"):
        (model_dir / name / "1").mkdir(parents=True)
        (model_dir / name / "1" / "model.py").write_text("class TritonPythonModel: pass\n")
        (model_dir / name / "config.pbtxt").write_text(
            f'name: "{name}"\nbackend: "python"\n'
            f'parameters {{ key: "EXECUTION_ENV_PATH" value {{ string_value: "{archive}" }} }}\n'
        )


def measure_startup(archive: Path, work: Path) -> tuple[float, float, int]:
    """(cold start-up s, warm start-up s, extractions on the cold one) for two models."""
    root = Path(tempfile.mkdtemp(prefix="startup-", dir=work))
    try:
        write_models(root / "model", archive.absolute())
        timings = []
        extractions = []
        for run in ("cold", "warm"):
            cache = EnvironmentCache(root / "cache", ExtractionLimits())
            preparation = Preparation(
                gpu_count=0,
                environments=cache,
                python_stubs={PYTHON_VERSION: Path("stub")},
                default_python=PYTHON_VERSION,
            )
            started = time.perf_counter()
            prepare_single_model_repository(
                root / "model", root / run / "repository", "first", preparation
            )
            timings.append(time.perf_counter() - started)
            extractions.append(cache.misses)
        if extractions != [1, 0]:
            raise SystemExit(f"unexpected extractions per start: {extractions}")
        return timings[0], timings[1], extractions[0]
    finally:
        shutil.rmtree(root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, help="an existing environment archive")
    parser.add_argument(
        "--packages",
        nargs="+",
        default=["numpy", "torch"],
        help="packages copied into the built environment (default: numpy torch)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=WORK, help=f"default: {WORK}")
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    archive = args.archive or args.work / f"env-{'-'.join(args.packages)}.tar.gz"
    if not archive.is_file():
        build_archive(archive, args.packages)
    with archive.open("rb") as warm:
        while warm.read(1 << 24):
            pass

    rounds = [measure(archive, args.work) for _ in range(args.rounds)]
    first = statistics.median(r[0] for r in rounds)
    second = statistics.median(r[1] for r in rounds)
    ratio = first / second
    print(f"archive:             {archive} ({archive.stat().st_size / 1e6:.0f} MB)")
    print(f"unpacked:            {rounds[0][2] / 1e6:.0f} MB")
    print(f"rounds:              {args.rounds} (medians below)")
    labels = (("first preparation", first, 0), ("second (cache hit)", second, 1))
    for label, median, column in labels:
        each = ", ".join(f"{r[column]:.3f}" for r in rounds)
        print(f"{label + ':':<21}{median:.3f} s   (each: {each})")
    verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
    print(f"ratio:               {ratio:.1f}x (target {TARGET_RATIO:.0f}x: {verdict})")

    starts = [measure_startup(archive, args.work) for _ in range(args.rounds)]
    cold = statistics.median(r[0] for r in starts)
    warm = statistics.median(r[1] for r in starts)
    print("start-up, 2 models naming the archive (whole repository preparation):")
    print(f"  first start:       {cold:.3f} s   ({starts[0][2]} extraction)")
    print(f"  second start:      {warm:.3f} s   (0 extractions)")
    verdict = "met" if cold / warm >= TARGET_RATIO else "NOT met"
    print(f"  ratio:             {cold / warm:.1f}x (target {TARGET_RATIO:.0f}x: {verdict})")


if __name__ == "__main__":
    main()
