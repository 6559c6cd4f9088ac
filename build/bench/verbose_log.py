"""Benchmark: what Triton's verbose log costs a request, with it off and on.

SAGEMAKER_TRITON_LOG_VERBOSE is on in the image, as in NVIDIA's, and off in
`make serve`. Triton then writes about nine lines per request, which `serve`
relays. This script starts `serve` on the NCF example with the log off, then
on, alternating (`--rounds` starts of each, one `serve` at a time, so the two
settings never share the CPUs), drives native v2 JSON with wrk, and prints
the medians and the ratio on / off. Two servers running side by side would
not do: on a small machine the second is measurably slower with nothing
changed.

Run: `.venv/bin/python build/bench/verbose_log.py [--seconds 6] [--rounds 2]`.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

from load_generators import ncf_body, require_wrk, run_wrk
from run_stamp import run_stamp
from serve_under_test import EXAMPLES, serve_with_reference

SETTINGS = {"off": "false", "on": "true"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=6, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=2, help="starts of serve per setting")
    args = parser.parse_args()
    require_wrk()

    measured: dict[str, list[float]] = {name: [] for name in SETTINGS}
    work = Path(tempfile.mkdtemp(prefix="bench-verbose-"))
    try:
        for round_number in range(args.rounds):
            for name, value in SETTINGS.items():
                folder = work / f"{name}-{round_number}"
                env = {"SAGEMAKER_TRITON_LOG_VERBOSE": value}
                with serve_with_reference(folder, "ncf_food", EXAMPLES, env) as serve:
                    body = folder / "body.json"
                    body.write_text(ncf_body(1))
                    url = f"{serve.url}/invocations"
                    run_wrk(url, body, args.connections, 2)  # warm-up
                    result = run_wrk(url, body, args.connections, args.seconds)
                    measured[name].append(result.requests_per_second)
                    print(f"verbose {name}: {result.requests_per_second:.0f} req/s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    off = statistics.median(measured["off"])
    on = statistics.median(measured["on"])
    print(f"\n{run_stamp()}")
    print(f"NCF example, native v2 JSON, {args.connections} connections, medians of {args.rounds}")
    print(f"verbose off: {off:.0f} req/s; verbose on: {on:.0f} req/s; on / off: {on / off:.3f}")


if __name__ == "__main__":
    main()
