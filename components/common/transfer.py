"""Copying artifact directories between an artifact store (or a local path) and local disk.

Used on both sides: the training pods stage their inputs in and the adapter out; the launch step
downloads the adapter the pods uploaded.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from .artifacts import MANIFEST_NAME, atomic_directory

logger = logging.getLogger("kftune.transfer")


def _location(uri: str, parameter: str) -> Any:
    from . import uris

    # KFP names its default MinIO store minio://; it is S3 at the endpoint in AWS_ENDPOINT_URL.
    if uri.startswith("minio://"):
        uri = "s3://" + uri[len("minio://") :]
    return uris.parse_uri(uri, parameter=parameter)


def download_directory(uri: str, target: str | os.PathLike, *, parameter: str) -> Path:
    """Makes the artifact directory at `uri` available locally; returns its path.

    Local paths (and `pvc://`) are returned in place; remote prefixes are downloaded to `target`.

    Raises:
        InputError: when the artifact is missing or access is denied.
    """
    from . import uris

    location = _location(uri, parameter)
    if location.is_local:
        return uris.fetch(location, target, parameter=parameter)
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    return uris.fetch(location, target, parameter=parameter)


def upload_directory(source: str | os.PathLike, uri: str, *, parameter: str = "adapter") -> None:
    """Uploads the files under `source` to the prefix `uri`, `manifest.json` last.

    A local `uri` is written atomically (built beside it, then renamed into place).
    """
    from . import retry, uris

    source = Path(source)
    location = _location(uri, parameter)
    if location.is_local:
        with atomic_directory(uris.local_path(location, parameter=parameter)) as staging:
            shutil.copytree(source, staging, dirs_exist_ok=True)
        return
    files = sorted(path for path in source.rglob("*") if path.is_file())
    files.sort(key=lambda path: path.name == MANIFEST_NAME)
    fs = uris.filesystem(location)
    base = location.fsspec_url.rstrip("/")
    logger.info("uploading %d file(s) to %s", len(files), location.display)
    try:
        for path in files:
            relative = path.relative_to(source).as_posix()
            retry.call_with_retries(
                lambda path=path, relative=relative: fs.put_file(str(path), f"{base}/{relative}"),
                what=f"upload {relative}",
            )
    except Exception as error:
        raise uris.describe_failure(error, location, parameter=parameter) from None
