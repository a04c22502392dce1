"""The packages import downwards only (every import counts, function-local ones too):

* **base** — ``utils`` modules for config, distributed set-up, I/O, boxes and metrics: nothing of ``dataset``,
  ``models`` or the top;
* **dataset** and **models** — the base and their own package; not each other, not the top;
* **top** — trainer and its engines, task runner, command line, step checkpoints, evaluation, the Python API
  (``models.api``, reached lazily as ``models.load_model``) and the scripts: anything.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("utils", "dataset", "models")
TOP = ("utils.trainer", "utils.engine", "utils.task", "utils.cli", "utils.train_state", "utils.deepspeed_engine",
       "utils.evaluation", "models.api")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    if any(module == top or module.startswith(top + ".") for top in TOP):
        return "top"
    package = module.split(".")[0]
    return "base" if package == "utils" else package


ALLOWED = {"base": {"base"}, "dataset": {"base", "dataset"}, "models": {"base", "models"},
           "top": {"base", "dataset", "models", "top"}}
#: the one upward edge by design: ``models.load_model`` is the API, imported on first use by ``models/__init__``
LAZY_API = ("models/__init__.py", "models.api")


def imports_of(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import of ours in ``path`` (absolute imports; the project uses no relative
    ones — one would be reported)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                found.append((node.lineno, f"(relative import of {node.module})"))
                continue
            names = [node.module or ""]
            if node.module in PACKAGES:  # ``from utils import box_ops``: the submodules are what is imported
                names = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found += [(node.lineno, n) for n in names if n.split(".")[0] in PACKAGES]
    return found


def violations() -> list[str]:
    out = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            own = layer(module_name(path))
            for line, imported in imports_of(path):
                if imported.startswith("("):
                    out.append(f"{path.relative_to(ROOT)}:{line}: {imported}")
                elif layer(imported) not in ALLOWED[own] and (str(path.relative_to(ROOT)), imported) != LAZY_API:
                    out.append(f"{path.relative_to(ROOT)}:{line}: {own} module imports {imported} "
                               f"({layer(imported)})")
    return out


def test_imports_go_downwards_only() -> None:
    found = violations()
    assert not found, "layer violations:\n" + "\n".join(found)


@pytest.mark.parametrize(("module", "expected"), [("utils.config", "base"), ("utils.evaluation.retrieval", "top"),
                                                  ("models.api", "top"), ("models.x2vlm", "models"),
                                                  ("dataset.text", "dataset")])
def test_layers_of_modules(module: str, expected: str) -> None:
    assert layer(module) == expected


def test_the_check_sees_function_local_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import torch\n\ndef f():\n    from models.x2vlm import X2VLM\n    from utils import box_ops\n")
    assert imports_of(sample) == [(4, "models.x2vlm"), (5, "utils.box_ops")]
