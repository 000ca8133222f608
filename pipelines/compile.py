"""`kftune compile`: the pipeline and each component compiled to YAML, deterministically."""

from __future__ import annotations

import argparse
import ast
import re
import tempfile
from pathlib import Path
from typing import Any

from .errors import CliError

PIPELINE_FILE = "lora_finetune.yaml"
COMPONENTS_DIR = "components"


def default_compiled_dir() -> Path:
    """`compiled/` of the source checkout (editable installs), else `./compiled`."""
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file():
        return root / "compiled"
    return Path.cwd() / "compiled"


def compile_targets() -> dict[str, Any]:
    """Relative output path -> pipeline or component to compile into it."""
    from ..components.benchmark.component import benchmark
    from ..components.deploy_model.component import deploy_model
    from ..components.download_dataset.component import download_dataset
    from ..components.download_model.component import download_model
    from ..components.evaluate.component import evaluate
    from ..components.export_model.component import export_model
    from ..components.register_model.component import register_model
    from ..components.train_lora.component import train_lora
    from .lora_finetune import lora_finetune_pipeline

    targets: dict[str, Any] = {PIPELINE_FILE: lora_finetune_pipeline}
    for name, component in (
        ("download_dataset", download_dataset),
        ("download_model", download_model),
        ("train_lora", train_lora),
        ("evaluate", evaluate),
        ("export_model", export_model),
        ("register_model", register_model),
        ("deploy_model", deploy_model),
        ("benchmark", benchmark),
    ):
        targets[f"{COMPONENTS_DIR}/{name}.yaml"] = component
    return targets


_DEFAULT_COMMENT = re.compile(r"^(#    \w+: (?:dict|list) \[Default: )(.*)(\])$", re.MULTILINE)


def _sorted_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _sorted_keys(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted_keys(item) for item in value]
    return value


def _stable_header(text: str) -> str:
    """Prints the dict defaults of KFP's header comment with sorted keys.

    KFP prints them in protobuf map order, which changes from one process to the next.
    """

    def render(match: re.Match[str]) -> str:
        try:
            value = ast.literal_eval(match.group(2))
        except (ValueError, SyntaxError):
            return match.group(0)
        return f"{match.group(1)}{_sorted_keys(value)}{match.group(3)}"

    return _DEFAULT_COMMENT.sub(render, text)


_WHOLE_DEFAULT = re.compile(r"^(\s+defaultValue: )(-?\d+)\.0$")
_INT_HEADER_DEFAULT = re.compile(r"^(#    \w+: int \[Default: )(-?\d+)\.0(\])$", re.MULTILINE)


def _integer_defaults(text: str) -> str:
    """Writes integer parameters' defaults as integers (`1440`, not KFP's protobuf `1440.0`).

    A default is rewritten when its parameter block (the lines indented at least as deep that
    follow it) says `parameterType: NUMBER_INTEGER`; the header comment's `int` defaults too.
    """
    lines = text.split("\n")
    for index, line in enumerate(lines):
        match = _WHOLE_DEFAULT.match(line)
        if not match:
            continue
        indent = len(line) - len(line.lstrip())
        for following in lines[index + 1:]:
            if following.strip() and len(following) - len(following.lstrip()) < indent:
                break
            if following.strip() == "parameterType: NUMBER_INTEGER":
                lines[index] = f"{match.group(1)}{match.group(2)}"
                break
    return _INT_HEADER_DEFAULT.sub(r"\1\2\3", "\n".join(lines))


def compile_all(image_registry: str = "", *, only: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Relative output path -> compiled YAML bytes (deterministic); steps in `image_registry`.

    Args:
        image_registry: the registry the steps' images are pulled from ("" for the default).
        only: compile just these relative paths (e.g. `(PIPELINE_FILE,)`); all when empty.
    """
    from kfp import compiler

    from ..components.common.images import with_registry

    compiled: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="kftune-compile-") as scratch:
        for relative, target in compile_targets().items():
            if only and relative not in only:
                continue
            path = Path(scratch) / relative.replace("/", "_")
            compiler.Compiler().compile(target, str(path))
            text = _integer_defaults(_stable_header(path.read_text()))
            compiled[relative] = (with_registry(text, image_registry) if image_registry
                                  else text).encode()
    return compiled


def stale_files(directory: Path, image_registry: str = "") -> list[str]:
    """Compiled files under `directory` that are missing or differ from a fresh compile."""
    stale = []
    for relative, content in compile_all(image_registry).items():
        path = directory / relative
        if not path.is_file() or path.read_bytes() != content:
            stale.append(str(path))
    return stale


def command_compile(args: argparse.Namespace) -> int:
    """`kftune compile [--check]`."""
    from ..components.common.errors import InputError
    from ..components.common.images import registry_problems

    registry = getattr(args, "image_registry", "")
    if registry and registry_problems(registry):
        raise InputError(registry_problems(registry))
    directory = Path(args.output_dir) if args.output_dir else default_compiled_dir()
    if args.check:
        stale = stale_files(directory, registry)
        if stale:
            raise CliError(
                f"compiled YAML is stale or missing: {', '.join(stale)}",
                hint="run `kftune compile` and commit the result",
            )
        print(f"compiled YAML in {directory} is up to date")
        return 0
    for relative, content in compile_all(registry).items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_bytes() != content:
            path.write_bytes(content)
            print(f"wrote {path}")
        else:
            print(f"unchanged {path}")
    return 0
