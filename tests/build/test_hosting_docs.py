"""The README's "On SageMaker" commands, read by bash and smtriton's own parser and checks.

They need AWS, so they are not run (`make rehearse` runs each way against the
stand-in); but each is expanded by bash as a reader's shell expands it, parsed
by `smtriton`'s argument parser and turned into the command's configuration,
which runs every check made before AWS is called. A renamed option, a
value smtriton refuses or a mode the block forgets fails here.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from smtriton.cli import build_parser
from smtriton.deploy import DeployConfig
from smtriton.invoke import InvokeConfig
from smtriton.transform import TransformConfig

from tests.build.test_readme_commands import shell_blocks
from tests.conftest import REPO_ROOT

CONFIGS = {"deploy": DeployConfig, "transform": TransformConfig, "invoke": InvokeConfig}


def on_sagemaker_block() -> str:
    readme = REPO_ROOT / "README.md"
    section = readme.read_text().split("### On SageMaker", 1)[1].split("\n## ", 1)[0]
    (block,) = [b for b in shell_blocks(readme) if b.body in section]
    return block.body


def commands(block: str, cwd: Path) -> list[list[str]]:
    """Each `smtriton` line's argv, as bash expands it."""
    # Each argument ends in NUL, each command in RS (a body may hold newlines).
    script = 'smtriton() { printf "%s\\0" "$@"; printf "\\036"; }\n' + block
    done = subprocess.run(
        ["bash", "-c", script], cwd=cwd, capture_output=True, check=True, text=True
    )
    return [line.rstrip("\0").split("\0") for line in done.stdout.split("\036") if line]


def test_every_way_of_hosting_has_its_command() -> None:
    block = on_sagemaker_block()
    for option in (
        "--model-data s3://my-bucket/ncf/v1/",
        "--multi-model",
        "--inference-component",
        "--min-copies 0",
        "--async-output",
        "--serverless",
        "smtriton transform",
        "--rollout canary",
        "--inference-ami-version",
        "invoke --endpoint-name models --inference-component",
        "--async --content-type",
    ):
        assert option in block, option


def test_every_command_passes_smtritons_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "users.csv").write_text("42,7\n")
    monkeypatch.chdir(tmp_path)
    parser = build_parser()
    found = commands(on_sagemaker_block(), tmp_path)
    assert len(found) == 9
    for argv in found:
        args = parser.parse_args(argv)
        config = CONFIGS[args.command].from_args(args)
        assert config is not None


@pytest.mark.parametrize("mode", ["models", "ncf-async"])
def test_the_calls_name_endpoints_the_block_deploys(mode: str) -> None:
    block = on_sagemaker_block()
    assert re.search(rf"deploy --endpoint-name {mode} ", block)
    assert re.search(rf"invoke --endpoint-name {mode} ", block)
