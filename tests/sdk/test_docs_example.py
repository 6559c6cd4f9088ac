"""docs/sagemaker-sdk.md's code, run as a notebook runs it, against the AWS stand-in.

The page's Python blocks run in order, in one SDK process, with AWS_ENDPOINT_URL
at the stand-in. The SDK creates the models, endpoint configurations and
endpoints there and uploads to its S3; the stand-in passes each invocation to
a real `serve` started here as SageMaker would start the image: one on the
same two NCF models the page packs (registered with the stand-in, which then
does not unpack ModelDataUrl into a container of its own), one multi-model,
into whose models folder the stand-in unpacks each TargetModel it fetches
from S3. The single-model serve answers every other way the page deploys the
model too: the inference component, the asynchronous endpoint (the stand-in
reads the body from its S3 and writes the answer there), the batch transform
job (the stand-in sends the file's lines and assembles the answers) and the
serverless endpoint.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import EXAMPLES, REPO_ROOT, ServeProcess, free_port, serve_env
from tests.front.test_front import ncf_request
from tests.sdk.conftest import ACCOUNT, REGION, run_container, run_in_sdk

DOC = REPO_ROOT / "docs" / "sagemaker-sdk.md"
# The image the page deploys.
DOC_IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/sagemaker-triton:latest"
# What the page's code runs after, so that it runs against the stand-in as it is written:
# the SDK gives its STS client AWS's own address (ignoring AWS_ENDPOINT_URL), and waits
# 30 s between DescribeEndpoint calls (20 s for components, 5 s for transform jobs), where
# the stand-in's are in service by the second call.
PRELUDE = """
import os
import sagemaker.session
sagemaker.session.sts_regional_endpoint = lambda region: os.environ["AWS_ENDPOINT_URL"]
Session = sagemaker.session.Session
Session.wait_for_endpoint.__defaults__ = (0.1, False)
Session.wait_for_inference_component.__defaults__ = (0.1,)
Session.wait_for_inference_component_deletion.__defaults__ = (0.1,)
Session.wait_for_transform_job.__defaults__ = (0.1,)
# The stand-in keeps no CloudWatch logs for Transformer.wait() to follow: wait on the job.
Session.logs_for_transform_job = lambda self, job_name, wait=False, poll=10: (
    self.wait_for_transform_job(job_name, poll=0.1)
)
"""
RESULTS = (
    "scores",
    "array_scores",
    "fashion",
    "food",
    "fashion_lines",
    "component_scores",
    "async_scores",
    "batch_scores",
    "serverless_scores",
)
# The SDK's AsyncPredictor.predict leaves a thread polling for the failure object after
# the answer came (up to max_attempts x delay); a notebook's kernel never notices, a
# script waits for it at exit: the page's code is done here, so the process ends.
EPILOGUE = f"""
import json as _json, os as _os, sys as _sys
def _plain(value):
    return value.tolist() if hasattr(value, "tolist") else value
print(_json.dumps({{name: _plain(globals()[name]) for name in {RESULTS!r}}}))
_sys.stdout.flush()
_os._exit(0)
"""


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.DOTALL | re.MULTILINE)


@pytest.fixture(scope="module")
def containers(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServeProcess, ServeProcess, Path]]:
    """serve as SageMaker starts the image for the page's two endpoints, and the
    multi-model one's models folder (/opt/ml/models)."""
    started = []
    try:
        root = tmp_path_factory.mktemp("single")
        (root / "opt_ml" / "model").mkdir(parents=True)
        for name in ("ncf_food", "ncf_fashion"):
            (root / "opt_ml" / "model" / name).symlink_to(EXAMPLES / name)
        port = free_port()
        env = serve_env(root / "opt_ml", port, SAGEMAKER_TRITON_DEFAULT_MODEL_NAME="ncf_food")
        started.append(ServeProcess(env, port, root))
        root = tmp_path_factory.mktemp("multi")
        models = root / "opt_ml" / "models"
        models.mkdir(parents=True)
        port = free_port()
        env = serve_env(root / "opt_ml", port, SAGEMAKER_MULTI_MODEL="true")
        started.append(ServeProcess(env, port, root))
        single, multi = (server.wait_ready() for server in started)
        yield single, multi, models
    finally:
        for server in started:
            server.stop()


def native_scores(server: ServeProcess, model: str) -> list[float]:
    response = requests.post(
        f"{server.url}/invocations",
        json=ncf_request([42, 42], [7, 19]),
        headers={"X-Amzn-SageMaker-Custom-Attributes": f"target_model={model}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.json()["outputs"][0]["data"]


def test_the_pages_notebook_deploys_and_calls_both_endpoints(
    containers: tuple[ServeProcess, ServeProcess, Path],
    fake_aws_url: str,
    sdk_python: Path,
    sdk_env: dict[str, str],
    tmp_path: Path,
) -> None:
    single, multi, models = containers
    run_container(fake_aws_url, single.url, image=DOC_IMAGE)
    run_container(fake_aws_url, multi.url, "MultiModel", models, image=DOC_IMAGE)
    (tmp_path / "model_repository").symlink_to(REPO_ROOT / "model_repository")
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) == 9, "the page's code blocks changed: check what this test runs"
    script = "\n".join([PRELUDE, *blocks, EPILOGUE])
    output = run_in_sdk(sdk_python, ["-c", script], sdk_env, tmp_path)
    results = json.loads(output.splitlines()[-1])

    food, fashion = native_scores(single, "ncf_food"), native_scores(single, "ncf_fashion")
    assert [float(row[0]) for row in results["scores"]] == pytest.approx(food)
    assert [row[0] for row in results["array_scores"]] == pytest.approx(food)
    assert results["fashion"]["predictions"] == pytest.approx(fashion[:1])
    assert results["food"] == pytest.approx(food)
    assert results["fashion_lines"] == pytest.approx(fashion)
    # The other ways: each answered by the page's serve, as the image answers them.
    assert [float(row[0]) for row in results["component_scores"]] == pytest.approx(food[:1])
    assert [float(row[0]) for row in results["async_scores"]] == pytest.approx(food)
    batch_lines = results["batch_scores"].splitlines()
    assert [float(line) for line in batch_lines[:2]] == pytest.approx(food)
    assert len(batch_lines) == 3
    assert [float(row[0]) for row in results["serverless_scores"]] == pytest.approx(food[:1])
    # What the page prints as it goes: the models it listed, and the endpoints going.
    assert "['ncf_fashion.tar.gz', 'ncf_food.tar.gz']" in output
    # The multi-model endpoint loaded each model once, from what the SDK uploaded.
    assert multi.output.count("loading model") == 2
