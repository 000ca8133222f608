"""Every function in components/ and pipelines/ reads on one screen: at most 80 lines.

A function's length runs from its `def` line to its last line (docstring and body included,
decorators not).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[2]
MAX_LINES = 80


def function_lengths() -> dict[str, int]:
    """`path::name` -> lines, for every function (nested ones too) in components/ and pipelines/."""
    lengths = {}
    for folder in ("components", "pipelines"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    name = f"{path.relative_to(ROOT).as_posix()}::{node.name}"
                    lengths[name] = max(lengths.get(name, 0), node.end_lineno - node.lineno + 1)
    return lengths


def test_no_function_is_longer_than_80_lines() -> None:
    lengths = function_lengths()
    too_long = {name: lines for name, lines in lengths.items() if lines > MAX_LINES}
    assert too_long == {}, f"split these into named steps of at most {MAX_LINES} lines"

