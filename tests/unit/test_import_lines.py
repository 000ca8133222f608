"""The lines between where code runs: only the training pod's own modules import its code.

`components/train_lora/pod` runs in the trainer image under torchrun; every other module (the KFP
steps, the pipelines, the Python API) reaches it only by starting it (the step side's backends),
never by importing it. Code that both sides need lives below both, in `components/common`.
Imports are read with `ast` (function-level imports included), relative ones resolved.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
POD = "kftune.components.train_lora.pod"


def _module_name(path: Path) -> str:
    parts = ["kftune", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module that `source` (of `module`) imports; `from X import y` adds X and X.y."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names)
    return found


def pod_importers() -> dict[str, list[str]]:
    """`path` -> the pod modules it imports, for every package module outside the pod."""
    importers = {}
    for folder in ("components", "pipelines"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative.startswith("components/train_lora/pod/"):
                continue
            imported = imported_modules(path.read_text(), _module_name(path),
                                        is_package=path.name == "__init__.py")
            pod = sorted(name for name in imported
                         if name == POD or name.startswith(POD + "."))
            if pod:
                importers[relative] = pod
    return importers


@pytest.mark.parametrize(
    ("source", "module", "is_package", "expected"),
    [
        ("from ..train_lora.pod.data import x", "kftune.components.evaluate.evaluation", False,
         "kftune.components.train_lora.pod.data"),
        ("from ..train_lora import pod", "kftune.components.evaluate.evaluation", False,
         POD),
        ("from ..components.train_lora.pod import entrypoint", "kftune.pipelines", True,
         "kftune.components.train_lora.pod.entrypoint"),
        ("def f():\n    from .pod.entrypoint import stage_inputs\n",
         "kftune.components.train_lora.component", False,
         "kftune.components.train_lora.pod.entrypoint"),
        ("import kftune.components.train_lora.pod.trainer", "kftune.pipelines.api", False,
         "kftune.components.train_lora.pod.trainer"),
    ],
    ids=["relative", "from-package-import-pod", "from-an-init", "inside-a-function", "absolute"],
)
def test_imports_are_resolved(source: str, module: str, is_package: bool, expected: str) -> None:
    assert expected in imported_modules(source, module, is_package)


def test_no_module_outside_the_pod_imports_pod_code() -> None:
    assert pod_importers() == {}, (
        "these modules import the training pod's code; move what both sides need to "
        "components/common, or reach the pod through the step side's backends"
    )
