"""The package's layers (docs/architecture.md): imports only point down."""

from __future__ import annotations

import ast
from pathlib import Path

SERVE = Path(__file__).resolve().parent.parent / "serve"
# Bottom to top; a module may import its own layer and those below it.
LAYERS = (
    "errors",
    "settings",
    "triton",
    "sagemaker",
    "machine",
    "artifacts",
    "multi_model",
    "payloads",
    "sessions",
    "control",
    "front",
    "runtime",
    "__main__",
)


def layer(module: str) -> str:
    """`serve.payloads.codecs.csv_codec` -> `payloads`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("serve"):
            if node.module == "serve":
                found |= {f"serve.{alias.name}" for alias in node.names}
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("serve.")}
    return found


def test_every_package_has_a_layer() -> None:
    packages = {p.stem if p.is_file() else p.name for p in SERVE.iterdir()}
    packages -= {"__init__", "__pycache__"}
    assert packages == set(LAYERS), packages ^ set(LAYERS)


def test_imports_point_down() -> None:
    upward = []
    for path in SERVE.rglob("*.py"):
        module = ".".join(("serve", *path.relative_to(SERVE).with_suffix("").parts))
        own = LAYERS.index(layer(module)) if layer(module) in LAYERS else len(LAYERS)
        for target in imports(path):
            if layer(target) and LAYERS.index(layer(target)) > own:
                upward.append(f"{module} imports {target}")
    assert not upward, upward


def test_the_architecture_document_lists_the_layers_in_order() -> None:
    document = (SERVE.parent / "docs" / "architecture.md").read_text()
    layers = document.split("## Layers", 1)[1].split("\n## ", 1)[0]
    table = [line.split("`")[1] for line in layers.splitlines() if line.startswith("| `")]
    assert tuple(table) == LAYERS
