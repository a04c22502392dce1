"""Code a reader can take in at once: no function or method in ``models/``, ``dataset/``, ``utils/`` is longer
than 60 lines (docstring included)."""
from __future__ import annotations

import ast

from tests.conftest import ROOT

MAX_LINES = 60


def long_functions(max_lines: int = MAX_LINES) -> list[str]:
    found = []
    for package in ("models", "dataset", "utils"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > max_lines:
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_over_60_lines() -> None:
    found = long_functions()
    assert not found, "split these:\n" + "\n".join(found)


def test_the_check_finds_a_long_function() -> None:
    assert long_functions(max_lines=30)  # the limit is what decides (Trainer.fit alone has ~59 lines)
