"""Artifact directories: the JSON manifest beside the data, and atomic publication.

Every kftune artifact is a directory holding its payload and `manifest.json`. An output directory is
built under a temporary sibling name and renamed into place only when complete, so a failure never
leaves a half-written artifact that a later step (or a retry) would pick up.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from .errors import InputError, Problems, reading

# The rows of a Dataset artifact, beside its manifest.json.
DATA_FILE = "data.parquet"
# The files of a PEFT adapter (an Adapter artifact) that kftune reads.
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_DAMAGED_ADAPTER_FIX = ("the adapter is damaged or was cut short while copied: copy it again, or "
                        "run train_lora again")


class MetricsSink(Protocol):
    """Where scalar metrics go: KFP's `Metrics` artifact fits (anything with `log_metric`)."""

    def log_metric(self, metric: str, value: float) -> None:
        """Records one scalar metric."""

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


def write_manifest(directory: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Writes `manifest.json` into `directory` (atomically) and returns its path."""
    path = Path(directory) / MANIFEST_NAME
    payload = {"format_version": FORMAT_VERSION, **manifest}
    tmp = path.with_name(f".{MANIFEST_NAME}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
    return path


def read_manifest(directory: str | os.PathLike, *, parameter: str = "artifact") -> dict[str, Any]:
    """Reads the manifest of an artifact directory.

    Args:
        directory: the artifact directory.
        parameter: the parameter name the directory came from, used in the error message.

    Raises:
        ValueError: when the directory or its manifest is missing or not valid JSON (an
            `InputError`, naming the file, for the latter).
    """
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise ValueError(
            f"`{parameter}` must be a kftune artifact directory with a {MANIFEST_NAME}, got "
            f"{str(directory)!r} (no {MANIFEST_NAME} there); pass the output of a kftune component"
        )
    with reading(path, parameter=parameter, fix="re-run the step that produced it"):
        return json.loads(path.read_text(encoding="utf-8"))


def read_adapter_config(directory: str | os.PathLike, *, parameter: str = "adapter"
                        ) -> dict[str, Any]:
    """The `adapter_config.json` of an adapter directory; {} when there is none.

    Raises:
        InputError: when the file is not a JSON object (naming the file and the fix).
    """
    path = Path(directory) / ADAPTER_CONFIG
    if not path.is_file():
        return {}
    with reading(path, parameter=parameter, fix=_DAMAGED_ADAPTER_FIX):
        config = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(config, dict):
        raise InputError([f"`{parameter}`: {path} must hold a JSON object, got "
                          f"{type(config).__name__}; {_DAMAGED_ADAPTER_FIX}"])
    return config


def check_adapter_files(directory: str | os.PathLike, *, parameter: str = "adapter") -> None:
    """Checks that an adapter's files parse, before any model is loaded for them.

    Raises:
        InputError: naming each file that does not parse, and the fix.
    """
    read_adapter_config(directory, parameter=parameter)
    check_files_parse(directory, parameter=parameter, fix=_DAMAGED_ADAPTER_FIX)


def check_files_parse(
    directory: str | os.PathLike, *, parameter: str, fix: str, shown: str | None = None
) -> None:
    """Parses every JSON file and opens every safetensors file under `directory`.

    A safetensors file is opened memory-mapped: its header is read and the file's length checked
    against it, so a truncated file is caught without reading the weights. This names a damaged
    file (a config that is not JSON, weights cut short in a copy) here, rather than as a bare
    parser error deep inside transformers or PEFT.

    Args:
        directory: a model or adapter directory.
        parameter: the parameter it came from, for the message.
        fix: what to do about a damaged file, for the message.
        shown: how to show `directory` in the message (e.g. its source URI); default its path.

    Raises:
        InputError: one line per file that does not parse.
    """
    root = Path(directory)
    problems = Problems()
    for path in sorted(root.rglob("*")):
        if path.suffix not in (".json", ".safetensors") or not path.is_file():
            continue
        name = f"{shown.rstrip('/')}/{path.relative_to(root).as_posix()}" if shown else path
        try:
            with reading(name, parameter=parameter, fix=fix):
                if path.suffix == ".json":
                    json.loads(path.read_text(encoding="utf-8"))
                else:
                    from safetensors import safe_open

                    with safe_open(str(path), framework="numpy"):
                        pass
        except InputError as error:
            problems.extend(error.problems)
    problems.raise_if_any()


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary directory that becomes `final` only if the block succeeds.

    An existing `final` is replaced. On any exception the temporary directory is removed and
    `final` is left as it was.
    """
    final_path = Path(final)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final_path.name}.partial-", dir=final_path.parent))
    # mkdtemp makes the directory 0700; artifacts are read by other users (pods, a shared PVC).
    staging.chmod(0o755)
    try:
        yield staging
        if final_path.is_dir() and not final_path.is_symlink():
            shutil.rmtree(final_path)
        elif final_path.exists():
            final_path.unlink()
        os.replace(staging, final_path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def directory_size(directory: str | os.PathLike) -> int:
    """Total size in bytes of the regular files under `directory`."""
    return sum(path.stat().st_size for path in Path(directory).rglob("*") if path.is_file())
