"""`make rehearse`, exactly as build/README.md documents it.

The rehearsal runs the real smtriton commands (package and upload, archive
and uncompressed; deploy with the default instance type, invoke, a bad
invoke, an update; a serverless endpoint; two inference components, one
woken from zero copies; an asynchronous endpoint; a batch transform job;
delete) against the AWS stand-in, which runs a real `serve` for each
endpoint, component and job from the model data in its S3. This test runs
the documented command and checks what each step printed, so it fails when
the command, the docs or the tooling drift apart, and that the rehearsal
left no process behind.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from smtriton.deploy import DEFAULT_INSTANCE_TYPE

from tests.build.test_readme_commands import blocks_of
from tests.conftest import REPO_ROOT

WORK = REPO_ROOT / ".work" / "rehearsal"


def processes_started_from(folder: Path) -> list[str]:
    """Command lines of live processes naming the rehearsal's folder or its stand-in."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        environ = cmdline.with_name("environ")
        try:
            env = environ.read_bytes().decode(errors="replace")
        except OSError:
            env = ""
        # The rehearsal names the stand-in by a relative path; the tests' own use an absolute one.
        # Containers the stand-in ran keep their /opt/ml under the rehearsal's folder.
        if f"OPT_ML={folder}/" in env or "tests/build/fake_aws.py" in argv[:3]:
            found.append(" ".join(argv))
    return found


def test_make_rehearse_runs_the_documented_way_to_an_endpoint() -> None:
    (block,) = blocks_of("rehearse")
    assert block.doc == REPO_ROOT / "build" / "README.md"
    assert block.body.strip() == "make rehearse"
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "SAGEMAKER_", "SERVE_", "OPT_ML"))
    }
    done = subprocess.run(
        ["bash", "-c", block.body],
        cwd=REPO_ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        # One stream, in the order it was written: each step's lines stay under its title.
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    output = done.stdout
    assert done.returncode == 0, output[-6000:]
    # package: checked, uploaded to the stand-in's S3.
    assert "checked as the image checks it" in output
    assert "s3://rehearsal-models/ncf/model.tar.gz" in done.stdout
    # deploy with no --instance-type: the documented default, then an update in place.
    assert DEFAULT_INSTANCE_TYPE in (REPO_ROOT / "build" / "README.md").read_text()
    first_deploy = _script_step("smtriton deploy (the default instance type)")
    assert "deploy" in first_deploy and "--instance-type" not in first_deploy
    assert done.stdout.count("rehearsal-ncf InService") == 2
    assert "updating endpoint rehearsal-ncf" in output
    # invoke reached the real serve: Triton's answer and the adapted CSV one.
    assert '"model_name":"ncf_food"' in done.stdout
    assert re.search(r"^0\.\d+\n0\.\d+$", done.stdout, flags=re.MULTILINE)
    # A bad record: the container's own 400, as SageMaker relays it.
    assert "smtriton invoke: error: the container answered HTTP 400" in output
    assert "expects whole numbers; line 1 gives 'x'" in output
    assert "deleted endpoint/rehearsal-ncf" in done.stdout
    # Uncompressed model data: the files under a prefix, served through a model of its own.
    assert "s3://rehearsal-models/fashion/v1/\n" in done.stdout
    assert re.search(r"created model ncf-fashion-\S+ \(the uncompressed model data\)", output)
    # Inference components: two on one endpoint, each answered by its own serve.
    assert "rehearsal-components ncf-food InService" in done.stdout
    assert "rehearsal-components ncf-fashion InService" in done.stdout
    assert "scale to zero: ncf-food starts a copy when invoked with none" in output
    # Woken from zero copies: refused at first, then answered by a fresh copy.
    idle = _output_step(output, "idle: auto scaling takes ncf-food to zero copies")
    assert "inference component ncf-food: no copy yet" in idle
    assert re.search(r"^0\.98\d*$", idle, flags=re.MULTILINE), idle
    assert "deleted inference-component/ncf-food" in done.stdout
    assert done.stdout.index("deleted inference-component/ncf-fashion") < done.stdout.index(
        "deleted endpoint/rehearsal-components"
    )
    # Asynchronous: queued through S3, answered by a serve that takes bodies up to 1 GB.
    queued = _output_step(output, "an asynchronous endpoint")
    assert "its answer goes to s3://rehearsal-models/async/answers/" in queued
    assert re.search(r"^0\.98\d*\n0\.17\d*$", queued, flags=re.MULTILINE), queued
    assert "deleted endpoint/rehearsal-async" in queued
    # Serverless: checked against its image limit in ECR, answered by a serve.
    serverless = _output_step(output, "a serverless endpoint")
    assert "is 1.5 GB in ECR: within serverless's 10 GB" in serverless
    assert "rehearsal-serverless InService" in serverless
    assert re.search(r"^0\.98\d*$", serverless, flags=re.MULTILINE), serverless
    # Batch transform: one answer per input line, in order, under the output prefix.
    batch = _output_step(output, "a batch transform job")
    assert "s3://rehearsal-models/batch/out/\n" in batch
    assert re.search(r"^0\.98\d*\n0\.17\d*\n0\.\d+$", batch, flags=re.MULTILINE), batch
    # Each endpoint and component ran as the image runs, from the model data in S3.
    # Six: the real-time endpoint (which the serverless one shares), two components, the
    # woken copy, the asynchronous endpoint, the transform job; each started Triton and
    # stopped when its endpoint, component or job went.
    logs = sorted(WORK.glob("container-*/serve.log"))
    assert len(logs) == 6, logs
    for log in logs:
        text = log.read_text()
        assert "starting tritonserver" in text and "serve.runtime.server: stopped" in text
    # A component's copy ran in its share of the host (where the stand-in can make cgroups:
    # root here), and serve fitted itself to the limits it read.
    shares = [
        log.read_text() for log in logs if "the component's share of the host" in log.read_text()
    ]
    if os.geteuid() == 0 and Path("/sys/fs/cgroup/memory/memory.limit_in_bytes").is_file():
        assert len(shares) == 3, "each component copy (food, fashion, woken food) ran in a share"
    for text in shares:
        assert "a CPU quota of 1 cores and a memory limit of 2048 MiB" in text
        assert f"memory: a cgroup memory limit of {2048 * 1024 * 1024} bytes" in text
        assert "a cgroup quota of 1.00 CPUs" in text
    # Nothing left running.
    assert not processes_started_from(WORK), processes_started_from(WORK)


def _output_step(output: str, title: str) -> str:
    """What one step of the rehearsal printed (stdout and stderr, as captured)."""
    start = output.index(f"== {title}")
    end = output.find("\n== ", start + 1)
    return output[start:end]


def _script_step(title: str) -> str:
    """The commands of one step of build/rehearse.sh."""
    script = (REPO_ROOT / "build" / "rehearse.sh").read_text()
    start = script.index(f'step "{title}"')
    end = script.find("\nstep ", start + 1)
    return script[start:end]
