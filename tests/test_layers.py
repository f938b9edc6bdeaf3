"""The import rules of ARCHITECTURE.md, read from every module's source (imports inside
functions included): a layer imports only the layers below it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Layer -> the top-level packages (of this project, or third-party) it must never import.
FORBIDDEN = {
    "ursa": {"tasks", "flows", "serving", "app", "standins", "prefect"},
    "standins": {"tasks", "flows", "serving", "app", "prefect", "mlflow"},
    "tasks": {"flows", "serving", "app", "standins"},
    "flows": {"serving", "app"},
    "serving": {"tasks", "flows", "app", "standins", "prefect"},
}


def imported_packages(path: Path) -> set[str]:
    """The top-level package of every import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_only_the_layers_below_it(layer: str) -> None:
    modules = sorted((ROOT / layer).rglob("*.py"))
    assert modules, f"no modules in {layer}/"
    broken = {
        str(m.relative_to(ROOT)): sorted(imported_packages(m) & FORBIDDEN[layer]) for m in modules
    }
    assert {m: p for m, p in broken.items() if p} == {}


def test_the_rule_reader_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from flows.train import train\n")
    assert imported_packages(module) == {"os", "flows"}


def test_importing_the_server_loads_neither_prefect_nor_torchvision() -> None:
    code = (
        "import sys, serving.app; "
        "print(sorted(m for m in ('prefect', 'torchvision', 'tasks') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
