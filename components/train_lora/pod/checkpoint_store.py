"""Checkpoints kept in the artifact store, so that a pod rescheduled onto another node resumes.

A pod's node-local disk (an emptyDir) survives container restarts but not rescheduling: the
operator's replacement pod on another node starts with an empty disk. So while the trainer runs,
every checkpoint it commits (`output/checkpoints/step-<N>/`, see checkpoint.py) is uploaded to
`<parent of the output URI>/checkpoints/step-<N>/`, beside the step's output artifact,
`COMPLETE` last: a reader never takes a half-uploaded checkpoint for a whole one. Before torchrun
starts, node rank 0's pod (where global rank 0, the one rank that reads checkpoints, runs)
downloads the newest complete one into its empty disk. Checkpoints the trainer prunes
(`save_total_limit`) are removed from the store too, and all of them once the adapter is uploaded.

This module does not import torch: the entrypoint that uses it stays light.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
from pathlib import Path
from typing import Any

logger = logging.getLogger("kftune.pod")

# The layout of checkpoint.py (which imports torch): output/checkpoints/step-<N>/COMPLETE.
CHECKPOINTS = "checkpoints"
COMPLETE = "COMPLETE"
_STEP_DIR = re.compile(r"^step-(\d+)$")
UPLOAD_INTERVAL_SECONDS = 10.0


def store_uri(output_uri: str) -> str:
    """Where the checkpoints of the step whose output artifact is `output_uri` are kept."""
    parent = output_uri.rstrip("/").rsplit("/", 1)[0]
    return f"{parent}/{CHECKPOINTS}"


def local_checkpoints(output_dir: Path) -> dict[int, Path]:
    """The committed checkpoints under `output_dir/checkpoints`, by step."""
    root = output_dir / CHECKPOINTS
    found = {}
    if root.is_dir():
        for path in root.iterdir():
            match = _STEP_DIR.match(path.name)
            if match and (path / COMPLETE).is_file():
                found[int(match.group(1))] = path
    return found


class CheckpointStore:
    """The checkpoints of one training step in an object store (s3://, gs://, minio://)."""

    def __init__(self, uri: str) -> None:
        from ...common import transfer, uris

        self.location = transfer._location(uri, "checkpoints")
        self.fs: Any = uris.filesystem(self.location)
        self.base = self.location.fsspec_url.rstrip("/")
        self._uploaded: set[int] = set()
        self._lock = threading.Lock()

    def remote_steps(self) -> list[int]:
        """The steps with a complete checkpoint in the store, newest first."""
        steps = []
        for path in self.fs.glob(f"{self.base}/step-*/{COMPLETE}"):
            match = _STEP_DIR.match(path.rstrip("/").split("/")[-2])
            if match:
                steps.append(int(match.group(1)))
        return sorted(steps, reverse=True)

    def download_latest(self, output_dir: Path) -> int | None:
        """Puts the newest stored checkpoint under `output_dir/checkpoints`; returns its step."""
        self.fs.invalidate_cache()
        steps = self.remote_steps()
        if not steps:
            return None
        step = steps[0]
        if step in local_checkpoints(output_dir):
            return step
        final = output_dir / CHECKPOINTS / f"step-{step}"
        partial = final.with_name(f".step-{step}.partial-download")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        prefix = f"{self.base}/step-{step}"
        for remote in self.fs.find(prefix):
            # fsspec lists keys without the protocol: bucket/.../step-<N>/<relative>.
            relative = remote.split(f"/step-{step}/", 1)[1]
            target = partial / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(remote, str(target))
        partial.rename(final)
        self._uploaded.add(step)
        logger.info("downloaded checkpoint step %d from %s", step, self.location.display)
        return step

    def upload_new(self, output_dir: Path) -> list[int]:
        """Uploads the committed checkpoints not stored yet, `COMPLETE` last; returns them.

        Stored checkpoints the trainer has since pruned locally are removed from the store.
        """
        with self._lock:
            local = local_checkpoints(output_dir)
            uploaded = []
            for step in sorted(set(local) - self._uploaded):
                try:
                    self._upload(step, local[step])
                except FileNotFoundError:
                    continue  # pruned by the trainer while being uploaded
                self._uploaded.add(step)
                uploaded.append(step)
            if local:
                for step in sorted(self._uploaded - set(local)):
                    if step < max(local):
                        self._remove(step)
            return uploaded

    def remove_all(self) -> None:
        """Removes every stored checkpoint (the adapter is uploaded: nothing to resume)."""
        with self._lock:
            if self.fs.exists(self.base):
                self.fs.rm(self.base, recursive=True)
            self._uploaded.clear()

    def _upload(self, step: int, directory: Path) -> None:
        files = sorted(path for path in directory.rglob("*") if path.is_file())
        files.sort(key=lambda path: path.name == COMPLETE)
        for path in files:
            relative = path.relative_to(directory).as_posix()
            self.fs.put_file(str(path), f"{self.base}/step-{step}/{relative}")
        logger.info("uploaded checkpoint step %d to %s", step, self.location.display)

    def _remove(self, step: int) -> None:
        prefix = f"{self.base}/step-{step}"
        # COMPLETE first: a reader never sees a stored checkpoint with files missing.
        self.fs.rm(f"{prefix}/{COMPLETE}")
        self.fs.rm(prefix, recursive=True)
        self._uploaded.discard(step)


class Uploader:
    """Uploads new checkpoints every `interval` seconds while the trainer runs."""

    def __init__(self, store: CheckpointStore, output_dir: Path,
                 interval: float = UPLOAD_INTERVAL_SECONDS) -> None:
        self.store = store
        self.output_dir = output_dir
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="checkpoint-upload", daemon=True)

    def __enter__(self) -> Uploader:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self._upload()  # the last checkpoint of a trainer that just failed matters most

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._upload()

    def _upload(self) -> None:
        try:
            self.store.upload_new(self.output_dir)
        except Exception as error:  # training goes on; the next round retries
            logger.warning("could not upload checkpoints to %s: %s", self.store.location.display,
                           str(error).splitlines()[0] if str(error) else type(error).__name__)
