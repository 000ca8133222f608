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

# The rows of a Dataset artifact, beside its manifest.json.
DATA_FILE = "data.parquet"


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
        ValueError: when the directory or its manifest is missing or not valid JSON.
    """
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise ValueError(
            f"`{parameter}` must be a kftune artifact directory with a {MANIFEST_NAME}, got "
            f"{str(directory)!r} (no {MANIFEST_NAME} there); pass the output of a kftune component"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(
            f"`{parameter}`: {path} is not valid JSON ({error}); re-run the step that produced it"
        ) from error


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
