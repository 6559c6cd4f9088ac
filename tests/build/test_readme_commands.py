"""The shell blocks of the READMEs (and container/EXTENDING.md), run as a reader runs them.

Every ```sh block carries a marker on the line before it,
`<!-- readme-command: KIND -->`, saying how it is checked:

- `serve`, `serve-mme`, `serve-streaming`, `serve-llm`: run here, line group
  by line group, with bash, against `make serve`, `make serve-mme`, `make
  serve-streaming` or `make serve-llm`, started here as the block's first line says when it
  starts one (`NAME=VALUE make serve`), on a free port: the one change made
  to what is written is `localhost:8080` becoming that port.
  The `# ...` lines under a command are its output: compared exactly, with
  `...` standing for any text and long decimals for any number (the example
  models' weights are trained at set-up).
- `make-target`: every `make TARGET` in it names a target of the Makefile
  (`make test` is what CI runs; `make serve` is started by the tests here).
- `rehearse`: `make rehearse`, run as written by tests/build/test_rehearse.py.
- `not-run: WHY`: needs what this machine lacks (Docker, a GPU, AWS); WHY
  says what runs instead.

A block without a marker fails the first test, so a new command cannot
slip into the docs unchecked.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO_ROOT, ServeProcess, free_port, serve_env

DOCS = (
    REPO_ROOT / "README.md",
    # docs/benchmarks.md's commands are the benchmarks', run on demand (its links are checked).
    *sorted(set((REPO_ROOT / "docs").glob("*.md")) - {REPO_ROOT / "docs" / "benchmarks.md"}),
    REPO_ROOT / "build" / "README.md",
    REPO_ROOT / "container" / "monitoring" / "README.md",
    REPO_ROOT / "container" / "EXTENDING.md",
    REPO_ROOT / "model_repository" / "README.md",
    REPO_ROOT / "streaming_repository" / "README.md",
    REPO_ROOT / "llm_repository" / "README.md",
)
KINDS = (
    "serve",
    "serve-mme",
    "serve-streaming",
    "serve-llm",
    "make-target",
    "rehearse",
    "not-run",
)
SHELL_BLOCK = re.compile(r"^```(?:sh|bash)\n(?P<body>.*?)^```", re.DOTALL | re.MULTILINE)
MARKER = re.compile(r"<!-- readme-command: (?P<kind>[a-z-]+)(?::\s*(?P<why>.*?))? -->\n$")
STARTS_SERVER = re.compile(r"^(?P<variables>(?:[A-Z_]+=\S+ )*)make (?P<target>serve[a-z-]*)$")
# Decimals of trained weights vary from one set-up to the next.
LONG_DECIMAL = re.compile(r"\d\.\d{6,}")


@dataclasses.dataclass(frozen=True)
class Block:
    doc: Path
    line: int
    kind: str | None
    why: str | None
    body: str

    def __str__(self) -> str:
        return f"{self.doc.relative_to(REPO_ROOT)}:{self.line}"


def shell_blocks(doc: Path) -> list[Block]:
    text = doc.read_text()
    blocks = []
    for match in SHELL_BLOCK.finditer(text):
        before = text[: match.start()]
        previous_line = before[before.rstrip("\n").rfind("\n") + 1 :]
        marker = MARKER.match(previous_line)
        blocks.append(
            Block(
                doc,
                before.count("\n") + 1,
                marker["kind"] if marker else None,
                marker["why"] if marker else None,
                match["body"],
            )
        )
    return blocks


ALL_BLOCKS = [block for doc in DOCS for block in shell_blocks(doc)]


def blocks_of(kind: str) -> list[Block]:
    return [block for block in ALL_BLOCKS if block.kind == kind]


def starting_line(block: Block) -> tuple[dict[str, str], str] | None:
    """The `[NAME=VALUE ...] make serve...` line a block starts with: its variables, target."""
    first = block.body.splitlines()[0]
    match = STARTS_SERVER.match(first)
    if match is None:
        return None
    variables = dict(item.split("=", 1) for item in shlex.split(match["variables"] or ""))
    return variables, match["target"]


SELF_STARTING = [block for block in ALL_BLOCKS if starting_line(block)]


@dataclasses.dataclass(frozen=True)
class Command:
    script: str
    expected: list[str]


def commands(block: Block, skip: str | None = None) -> list[Command]:
    """Each group of command lines with the `# ` output lines after it."""
    found: list[Command] = []
    script: list[str] = []
    expected: list[str] = []
    for line in block.body.splitlines():
        if line.startswith("#"):
            expected.append(line[2:] if line.startswith("# ") else line[1:])
            continue
        if expected:
            found.append(Command("\n".join(script), expected))
            script, expected = [], []
        if skip is None or line.strip() != skip:
            script.append(line)
    if script:
        found.append(Command("\n".join(script), expected))
    return [command for command in found if command.script.strip()]


def matches(expected: list[str], actual: str) -> bool:
    def normal(text: str) -> str:
        return LONG_DECIMAL.sub("0.5", text.strip())

    pattern = ".*?".join(re.escape(part) for part in normal("\n".join(expected)).split("..."))
    return re.fullmatch(pattern, normal(actual), flags=re.DOTALL) is not None


def run_block(block: Block, port: int, env: Mapping[str, str], skip: str | None = None) -> None:
    for command in commands(block, skip):
        script = command.script.replace("localhost:8080", f"localhost:{port}")
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=REPO_ROOT,
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"{block}: {command.script}\n{done.stderr}"
        if command.expected:
            assert matches(command.expected, done.stdout), (
                f"{block}: {command.script}\nthe docs say:\n"
                + "\n".join(command.expected)
                + f"\nthe server said:\n{done.stdout[:3000]}"
            )


class MakeServe(ServeProcess):
    """`make TARGET PORT=N` in the checkout, as a reader starts it."""

    def __init__(self, target: str, env: Mapping[str, str], port: int) -> None:
        self.target = target
        super().__init__(env, port, REPO_ROOT)

    def _command(self, wrapper: object) -> list[str]:
        return ["make", "--no-print-directory", self.target, f"PORT={self.port}"]


def make_env(port: int) -> dict[str, str]:
    """The reader's shell: none of the tests' own serve settings."""
    env = serve_env(REPO_ROOT / ".opt_ml", port)
    for name in ("OPT_ML", "SAGEMAKER_BIND_TO_PORT", "SAGEMAKER_TRITON_LOG_VERBOSE"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def make_serve() -> Iterator[MakeServe]:
    port = free_port()
    server = MakeServe("serve", make_env(port), port)
    try:
        yield server.wait_ready(timeout=300)  # type: ignore[misc]
    finally:
        server.stop()


def make_target_names() -> set[str]:
    makefile = (REPO_ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][a-z-]*):", makefile, flags=re.MULTILINE))


LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")


def anchors(doc: Path) -> set[str]:
    """GitHub's anchors for the headings of a markdown file."""
    headings = re.findall(r"^#+ (.+)$", doc.read_text(), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_links_between_the_docs_lead_somewhere() -> None:
    broken = []
    for doc in (*DOCS, REPO_ROOT / "docs" / "benchmarks.md"):
        for target in LINK.findall(doc.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            linked = (doc.parent / path).resolve() if path else doc
            if not linked.exists() or (anchor and anchor not in anchors(linked)):
                broken.append(f"{doc.relative_to(REPO_ROOT)}: {target}")
    assert not broken, broken


def test_every_shell_block_says_how_it_is_checked() -> None:
    assert len(ALL_BLOCKS) >= 10
    unmarked = [str(block) for block in ALL_BLOCKS if block.kind not in KINDS]
    assert not unmarked, f"shell blocks without a known readme-command marker: {unmarked}"
    unexplained = [str(b) for b in blocks_of("not-run") if not (b.why or "").strip()]
    assert not unexplained, f"not-run blocks must say why: {unexplained}"


def test_every_make_target_the_docs_name_exists() -> None:
    targets = make_target_names()
    named = {
        (str(block), name)
        for block in ALL_BLOCKS
        for name in re.findall(r"^make ([a-z][a-z-]*)", block.body, flags=re.MULTILINE)
    }
    assert named, "the docs name no make target"
    missing = sorted(f"{where}: make {name}" for where, name in named if name not in targets)
    assert not missing, f"targets the Makefile lacks: {missing}"
    for block in blocks_of("make-target"):
        lines = [line for line in block.body.splitlines() if line.strip()]
        assert all(line.startswith("make ") for line in lines), f"{block}: only make lines"


def test_readme_examples_answer_as_written_against_make_serve(make_serve: MakeServe) -> None:
    blocks = [block for block in blocks_of("serve") if block not in SELF_STARTING]
    assert len(blocks) >= 3
    for block in blocks:
        run_block(block, make_serve.port, make_env(make_serve.port))


def test_make_serve_keeps_tritons_verbose_log_off_unless_asked(make_serve: MakeServe) -> None:
    (pid,) = make_serve.child_pids("tritonserver")
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    assert "--log-verbose=false" in argv
    asked = subprocess.run(
        ["make", "--dry-run", "--no-print-directory", "serve", "VERBOSE=1"],
        cwd=REPO_ROOT,
        env=make_env(make_serve.port),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "SAGEMAKER_TRITON_LOG_VERBOSE=true" in asked


@pytest.mark.parametrize("block", SELF_STARTING, ids=str)
def test_blocks_that_start_their_own_server_run_as_written(block: Block) -> None:
    """A block opening with `make serve...` (variables before it too): that server, then
    the rest of the block against it."""
    variables, target = starting_line(block)  # type: ignore[misc]
    assert block.kind == target, f"{block}: starts make {target} but is marked {block.kind}"
    port = free_port()
    env = {**make_env(port), **variables}
    server = MakeServe(target, env, port)
    try:
        server.wait_until(lambda: server.ping_status() == 200, 300, "/ping to answer 200")
        run_block(block, port, make_env(port), skip=block.body.splitlines()[0])
    finally:
        server.stop()


def test_the_self_starting_blocks_are_the_ones_expected() -> None:
    docs = {block.doc.relative_to(REPO_ROOT).as_posix() for block in SELF_STARTING}
    assert docs == {
        "docs/multi-model.md",
        "model_repository/README.md",
        "streaming_repository/README.md",
    }


def test_streaming_examples_stream_from_make_serve_streaming() -> None:
    """README.md's streaming example, and the body `smtriton invoke --stream` sends in
    build/README.md, against the bundled streaming model."""
    invoke = next(
        line
        for block in ALL_BLOCKS
        if block.doc.parent.name == "build"
        for line in block.body.splitlines()
        if line.startswith("smtriton invoke") and "--stream" in line
    )
    arguments = shlex.split(invoke)
    body = arguments[arguments.index("--body") + 1]
    port = free_port()
    server = MakeServe("serve-streaming", make_env(port), port)
    try:
        server.wait_until(lambda: server.ping_status() == 200, 300, "/ping to answer 200")
        for block in blocks_of("serve-streaming"):
            if block not in SELF_STARTING:
                run_block(block, port, make_env(port))
        response = requests.post(
            f"{server.url}/invocations",
            data=body,
            headers={"Content-Type": "application/json"},
            stream=True,
            timeout=120,
        )
        lines = [json.loads(line) for line in response.iter_lines() if line]
    finally:
        server.stop()
    assert response.status_code == 200, lines
    assert response.headers.get("Transfer-Encoding") == "chunked"
    assert len(lines) > 1 and all(set(line) == {"text_output"} for line in lines), lines


def test_language_model_examples_answer_from_make_serve_llm() -> None:
    """llm_repository/README.md's blocks, one per schema, against `make serve-llm`."""
    blocks = blocks_of("serve-llm")
    assert len(blocks) >= 2
    port = free_port()
    server = MakeServe("serve-llm", make_env(port), port)
    try:
        server.wait_until(lambda: server.ping_status() == 200, 300, "/ping to answer 200")
        for block in blocks:
            run_block(block, port, make_env(port))
    finally:
        server.stop()
