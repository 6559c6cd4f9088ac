"""Benchmark: /models/NAME/invoke on a multi-model endpoint, serve against Triton's own.

One `serve` runs with SAGEMAKER_MULTI_MODEL=true and its Triton also opens
Triton's own SageMaker frontend (in multi-model mode too) on a second port.
The NCF food model is loaded through each front's own POST /models (so each
front hosts its own copy, under different names, in the same Triton), then
wrk drives `/models/NAME/invoke` on each in turn, alternating for several
rounds, and the medians are compared.

Run: `.venv/bin/python build/bench/multi_model.py` (`--help` for the knobs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

from invocations import report
from load_generators import Measurement, ncf_body, require_wrk, run_wrk
from serve_under_test import EXAMPLES, serve_with_reference

from serve.machine.host import gpu_count

MODEL = "ncf_food"
REFERENCE_NAME = "ncf_food_reference"


def load(url: str, name: str, folder: Path) -> None:
    request = urllib.request.Request(
        f"{url}/models",
        data=json.dumps({"model_name": name, "url": str(folder)}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        if response.status != 200:
            raise SystemExit(f"loading {name} through {url} answered {response.status}")


def upload(models_dir: Path, key: str, model_name: str) -> Path:
    """A SageMaker-style model folder: /opt/ml/models/<key>/model/<model>/... .

    Triton 2.51's own frontend needs the model folder inside the url, a model
    name of its own so that the two copies never share a name, and, on a host
    without a GPU, KIND_CPU spelt out (serve moves KIND_GPU to the CPU itself).
    """
    target = models_dir / key / "model" / model_name
    shutil.copytree(EXAMPLES / MODEL, target, symlinks=False)
    config = target / "config.pbtxt"
    text = config.read_text().replace(f'name: "{MODEL}"', f'name: "{model_name}"')
    if gpu_count(os.environ.get("CUDA_VISIBLE_DEVICES")) == 0:
        text = text.replace("KIND_GPU", "KIND_CPU")
    config.write_text(text)
    return target.parent


def alternate(
    paths: dict[str, str], body_file: Path, args: argparse.Namespace
) -> dict[str, list[Measurement]]:
    """wrk on each path in turn, `args.rounds` times, after a short warm-up."""
    results: dict[str, list[Measurement]] = {name: [] for name in paths}
    for url in paths.values():
        run_wrk(url, body_file, args.connections, 2)
    for _ in range(args.rounds):
        for name, url in paths.items():
            results[name].append(run_wrk(url, body_file, args.connections, args.seconds))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1, help="user-item pairs per request")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=8, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per path")
    parser.add_argument(
        "--control",
        action="store_true",
        help="also call both copies through Triton's v2 route directly, to tell a gap "
        "between the fronts from one between the two copies of the model",
    )
    args = parser.parse_args()
    require_wrk()

    work = Path(tempfile.mkdtemp(prefix="bench-mme-"))
    body_file = work / "body.json"
    body_file.write_text(ncf_body(args.batch))
    try:
        env = {"SAGEMAKER_MULTI_MODEL": "true"}
        with serve_with_reference(work, MODEL, extra_env=env) as serve:
            models_dir = work / "opt_ml" / "models"
            load(serve.url, MODEL, upload(models_dir, "ours", MODEL))
            load(serve.reference_url, REFERENCE_NAME, upload(models_dir, "ref", REFERENCE_NAME))
            paths = {
                "serve (nginx -> Triton HTTP)": f"{serve.url}/models/{MODEL}/invoke",
                "Triton's SageMaker frontend": (
                    f"{serve.reference_url}/models/{REFERENCE_NAME}/invoke"
                ),
            }
            results = alternate(paths, body_file, args)
            v2 = f"http://{serve.triton_http}/v2/models"
            control = {
                "serve's copy, v2 direct": f"{v2}/{MODEL}/infer",
                "reference copy, v2 direct": f"{v2}/{REFERENCE_NAME}/infer",
            }
            controls = alternate(control, body_file, args) if args.control else None
        args.model = f"{MODEL} through /models/NAME/invoke"
        report(results, args)
        if controls:
            args.model = f"{MODEL}, control: both copies through Triton's v2 route"
            report(controls, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
