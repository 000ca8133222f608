"""What runs in each PyTorchJob pod: stage the inputs, run torchrun, upload the adapter.

`python -m kftune.components.train_lora.pod.entrypoint --model-uri ... --data-uri ...
--output-uri ...`

What moves where (no ReadWriteMany storage needed):

1. Stage in. The model and the dataset artifacts are copied from the pipeline's artifact store
   (`minio://` — KFP's default, reached as S3 at `AWS_ENDPOINT_URL` —, `s3://`, `gs://`) to the
   pod's node-local disk (`--work-dir`, an emptyDir) once per pod: one copy of the model per node,
   shared by all of that node's processes, kept across container restarts (the emptyDir lives as
   long as the pod), so a restarted container does not download again. What is staged is keyed
   by what it is made from (URIs and source settings): other inputs stage afresh. Credentials
   come from the environment (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` as `secretKeyRef`),
   never from args.
   Local paths and `pvc://` URIs are read in place, without a copy.
   With `--model-source` / `--data-source` the URIs are sources instead (hf://, s3://, gs://,
   https://, pvc://): this process (one per pod, before torchrun starts the trainers) fetches
   them with the download components' own code (`download_model_to`, `download_dataset_to`:
   split slicing, column mapping, label encoding, the manifest) into the same place, and the
   trainers read the result exactly as they read artifacts. Hub tokens and S3 keys come from the
   environment (`HF_TOKEN`, `AWS_*` as `secretKeyRef`).
   With `--shared-dir` (an existing PersistentVolumeClaim mounted in every pod) one pod stages
   the inputs onto the claim once per job and the other pods wait for it; checkpoints go there
   too and survive pod rescheduling.
2. Train. `torchrun -m kftune.components.train_lora.pod.trainer --config CONFIG.json`, with the node
   layout from the operator's `PET_*` environment. The trainer checkpoints into
   `output/checkpoints/` and global rank 0 writes `output/final/` (the adapter).
   Without a claim, each checkpoint is also uploaded beside the output artifact
   (`checkpoint_store.py`), and node rank 0 downloads the newest one before torchrun starts: a pod
   rescheduled onto another node resumes from it instead of starting over.
3. Stage out. The pod holding `output/final/` (the master, where global rank 0 runs; on a shared
   claim, the one pod that claims the upload) uploads it to `--output-uri`, the step's output
   artifact URI, `manifest.json` last so a reader never sees a half-uploaded adapter as complete.
   The launch step then downloads that (small) adapter.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...common.errors import is_disk_full
from ...common.transfer import download_directory, upload_directory
from ..config import TrainConfig, trainer_command
from ..failures import (
    FailureRecord,
    Report,
    node_failure,
    read_error_file,
    write_failure_record,
)
from .checkpoint_store import CheckpointStore, Uploader, store_uri

logger = logging.getLogger("kftune.pod")

STAGED_MARKER = ".kftune-staged"
# How often a pod waiting for node 0 to stage the inputs on a shared claim looks again.
STAGE_POLL_SECONDS = 5.0
# Bumped when what a staged directory holds changes, so older stagings are not reused.
STAGE_LAYOUT = 1


def staging_key(
    model_uri: str,
    data_uri: str,
    model_source: Mapping[str, Any] | None = None,
    data_source: Mapping[str, Any] | None = None,
) -> str:
    """A digest of what the staged inputs are made from: URIs and every source setting.

    Two stagings share a key only when they would stage the same thing (the same model and data
    URIs, and the same split, subset, revision, column_mapping, encoding, task, ...).
    """
    made_from = {"layout": STAGE_LAYOUT, "model_uri": model_uri, "data_uri": data_uri,
                 "model_source": model_source, "data_source": data_source}
    text = json.dumps(made_from, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def describe_inputs(
    model_uri: str,
    data_uri: str,
    model_source: Mapping[str, Any] | None = None,
    data_source: Mapping[str, Any] | None = None,
) -> str:
    """What a staging is made from, as a log shows it (URIs without credentials)."""
    from ...common import uris

    def one(what: str, uri: str, settings: Mapping[str, Any] | None) -> str:
        shown = f"{what} {uris.display_uri(uri)}"
        if settings:
            shown += " (" + ", ".join(f"{name}={value!r}"
                                      for name, value in sorted(settings.items())) + ")"
        return shown

    return f"{one('model', model_uri, model_source)}, {one('data', data_uri, data_source)}"


def stage_inputs(
    model_uri: str,
    data_uri: str,
    stage_dir: Path,
    *,
    wait_for_other_node: bool,
    model_source: Mapping[str, Any] | None = None,
    data_source: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Makes the model and the data available under `stage_dir`, keyed by what they are made of.

    The inputs go to `stage_dir/<key>/` (`staging_key`), whose marker is written last. A later
    call with the same inputs (a restarted container, a rerun) reuses them and says so; a call
    with other inputs (another split, mapping, revision or source) stages afresh and then removes
    what was staged before. A staging that fails is removed, so nothing half-written is ever
    reused, and the previous staging stays until the new one is complete.

    Args:
        model_uri: the model artifact, or with `model_source` the model's source.
        data_uri: the dataset artifact, or with `data_source` the data's source.
        stage_dir: where to put them.
        wait_for_other_node: wait for another pod to stage them (shared claim held by another pod);
            it waits for the staging of these same inputs.
        model_source: `ModelSource` settings besides the URI (revision, task, trust_remote_code):
            fetch the model from its source, as download_model does.
        data_source: `DatasetSource` settings besides the URI (split, subset, revision,
            column_mapping): fetch and normalize the rows, as download_dataset does.

    Returns:
        The local model and data directories.
    """
    key = staging_key(model_uri, data_uri, model_source, data_source)
    described = describe_inputs(model_uri, data_uri, model_source, data_source)
    keyed = stage_dir / key
    marker = keyed / STAGED_MARKER
    if wait_for_other_node:
        logger.info("waiting for node 0 to stage %s into %s", described, keyed)
        while not marker.is_file():
            time.sleep(STAGE_POLL_SECONDS)
    if marker.is_file():
        paths = json.loads(marker.read_text())
        logger.info("reusing the inputs staged in %s for %s", keyed, described)
        return Path(paths["model"]), Path(paths["data"])
    logger.info("staging %s into %s", described, keyed)
    started = time.monotonic()
    shutil.rmtree(keyed, ignore_errors=True)  # an earlier attempt's unfinished staging
    try:
        model_dir, data_dir = _fetch_inputs(model_uri, data_uri, keyed, model_source,
                                            data_source)
        partial = marker.with_name(f"{STAGED_MARKER}.partial")
        partial.write_text(json.dumps({"model": str(model_dir), "data": str(data_dir),
                                       "inputs": described}))
        os.replace(partial, marker)  # waiting pods never read a half-written marker
    except BaseException:
        shutil.rmtree(keyed, ignore_errors=True)
        raise
    replaced = [entry for entry in stage_dir.iterdir() if entry.name != key]
    for entry in replaced:
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    logger.info("staged the inputs in %.1f s%s", time.monotonic() - started,
                "; removed the inputs staged before from other sources or settings"
                if replaced else "")
    return model_dir, data_dir


def _fetch_inputs(
    model_uri: str,
    data_uri: str,
    keyed: Path,
    model_source: Mapping[str, Any] | None,
    data_source: Mapping[str, Any] | None,
) -> tuple[Path, Path]:
    """Downloads (or, for local artifacts, finds in place) the model and the data."""
    if model_source is None:
        model_dir = download_directory(model_uri, keyed / "model", parameter="model")
    else:
        model_dir = fetch_model_source(model_uri, model_source, keyed / "model")
    if data_source is None:
        data_dir = download_directory(data_uri, keyed / "data", parameter="train_data")
    else:
        data_dir = fetch_data_source(data_uri, data_source, keyed / "data")
    keyed.mkdir(parents=True, exist_ok=True)
    return model_dir, data_dir


def fetch_model_source(uri: str, settings: Mapping[str, Any], model_dir: Path) -> Path:
    """Downloads the model at source `uri` into `model_dir`, as the download_model step does."""
    from ...download_model.model import ModelSource, download_model_to

    download_model_to(ModelSource(uri=uri, **settings), model_dir)
    return model_dir


def fetch_data_source(uri: str, settings: Mapping[str, Any], data_dir: Path) -> Path:
    """Downloads and normalizes the rows at source `uri` into `data_dir`, as download_dataset does.

    All the selected rows train: nothing is held out (`eval_fraction` 0). `settings` may also
    hold `num_labels`, the label count the caller expects (the reference's `num_labels`): the
    labels found must match it.

    Raises:
        InputError: as download_dataset, or when the labels found are not `num_labels`.
    """
    from ...common.errors import InputError
    from ...download_dataset.dataset import DatasetSource, download_dataset_to

    settings = dict(settings)
    expected_labels = settings.pop("num_labels", None)
    source = DatasetSource(uri=uri, **{**settings, "eval_fraction": 0.0})
    manifest, _ = download_dataset_to(
        source, data_dir, data_dir.with_name(data_dir.name + "-held-out")
    )
    found = manifest.get("num_labels")
    if expected_labels is not None and found != expected_labels:
        raise InputError(
            [
                f"`num_labels` is {expected_labels} but the rows selected by split "
                f"{source.split!r} have {found} label(s) {manifest.get('label_names')}; set "
                "num_labels to that or leave it out (kftune counts the labels)"
            ]
        )
    return data_dir


def run_trainer(config_path: Path) -> int:
    """Runs torchrun with the trainer, forwarding SIGTERM; returns its exit status.

    torchrun's output passes through this process (to stdout) so that its failure report can be
    read: when it fails, the pod's last log line names the rank that caused it and why (its own
    exception, or the signal that killed it); the launch step quotes the end of the pod's log.
    The exception comes from `TORCHELASTIC_ERROR_FILE`, into which torchrun copies its failed
    worker's.
    """
    command = trainer_command(config_path)
    # A local node gets its own error file from the local backend (the nodes share a config).
    error_file = Path(os.environ.get("TORCHELASTIC_ERROR_FILE")
                      or config_path.with_name("trainer-error.json"))
    error_file.unlink(missing_ok=True)
    sys.stdout.flush()
    process = subprocess.Popen(command, env={**os.environ,
                                             "TORCHELASTIC_ERROR_FILE": str(error_file)},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    report = Report()
    tail: collections.deque[str] = collections.deque(maxlen=50)

    def copy_output() -> None:
        assert process.stdout is not None
        for raw in iter(process.stdout.readline, b""):
            text = raw.decode("utf-8", errors="replace")
            sys.stdout.write(text)
            sys.stdout.flush()
            tail.append(text.rstrip("\n"))
            report.feed(tail[-1])

    def forward(signum: int, frame: object) -> None:
        process.send_signal(signum)

    reader = threading.Thread(target=copy_output, name="torchrun-output", daemon=True)
    reader.start()
    previous = signal.signal(signal.SIGTERM, forward)
    try:
        status = process.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    # A process the trainer started may hold the pipe open after torchrun exited: not for long.
    reader.join(timeout=10)
    if status != 0:
        cause, bad_input, killed = node_failure(status, read_error_file(error_file), list(tail),
                                                report)
        logger.error("the trainer failed: %s", cause)
        # The record the launch step reads from the pod's status (`terminated.message`).
        write_failure_record(FailureRecord(cause, _node_rank(), bad_input, killed))
    return status


def _node_rank() -> int | None:
    rank = os.environ.get("PET_NODE_RANK", "")
    return int(rank) if rank.isdigit() else None


def main(argv: Sequence[str] | None = None) -> int:
    """Stages the inputs, trains, and uploads the adapter from the pod holding it.

    A failure of this process itself (staging, upload) is written to the termination message as
    well, as the trainer's are by `run_trainer`.
    """
    try:
        return _pod(argv)
    except Exception as error:
        line = (str(error).splitlines() or [""])[0]
        # Bad input and a full disk are for good: a restarted container would fail the same way.
        permanent = isinstance(error, ValueError) or is_disk_full(error)
        write_failure_record(FailureRecord(f"the pod entrypoint: {type(error).__name__}: {line}",
                                           _node_rank(), permanent))
        raise


def _pod(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="kftune-pod", description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--data-uri", required=True)
    parser.add_argument("--output-uri", required=True)
    parser.add_argument("--work-dir", default="/kftune", help="node-local scratch (emptyDir)")
    parser.add_argument("--shared-dir", default="", help="a mounted claim shared by all pods")
    parser.add_argument("--training-parameters", default="{}", help="JSON")
    parser.add_argument("--lora-config", default="{}", help="JSON")
    parser.add_argument("--merge", action="store_true")
    parser.add_argument("--model-source", default=None,
                        help="JSON ModelSource settings: --model-uri is a source, not an artifact")
    parser.add_argument("--data-source", default=None,
                        help="JSON DatasetSource settings: --data-uri is a source")
    args = parser.parse_args(argv)
    sources = {
        "model_source": json.loads(args.model_source) if args.model_source else None,
        "data_source": json.loads(args.data_source) if args.data_source else None,
    }
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        stream=sys.stdout)

    if args.shared_dir:
        # One directory per step on the claim: its name follows the output artifact's URI. One pod
        # claims the staging (node ranks are not known yet in an elastic job); the others wait.
        key = hashlib.sha256(args.output_uri.encode()).hexdigest()[:12]
        base = Path(args.shared_dir) / f"kftune-{key}"
        base.mkdir(parents=True, exist_ok=True)
        model_dir, data_dir = stage_inputs(
            args.model_uri,
            args.data_uri,
            base / "inputs",
            wait_for_other_node=not claim(base / "stage.claim"),
            **sources,
        )
    else:
        base = Path(args.work_dir)
        model_dir, data_dir = stage_inputs(
            args.model_uri, args.data_uri, base / "inputs", wait_for_other_node=False, **sources
        )
    output_dir = base / "output"
    config_path = TrainConfig(
        task=args.task,
        model_dir=str(model_dir),
        data_dir=str(data_dir),
        output_dir=str(output_dir),
        training_parameters=json.loads(args.training_parameters),
        lora_config=json.loads(args.lora_config),
        merge=args.merge,
    ).to_file(Path(args.work_dir) / "config.json")
    # On node-local disk, checkpoints also go to the artifact store, so that a pod rescheduled
    # onto another node (an empty disk) resumes; a shared claim outlives the pods by itself.
    store = None if args.shared_dir else checkpoint_store_for(args.output_uri)
    if store is not None and os.environ.get("PET_NODE_RANK", "0") == "0":
        step = store.download_latest(output_dir)
        if step is not None:
            logger.info("resuming from checkpoint step %d of the artifact store", step)
    if store is not None:
        with Uploader(store, output_dir):
            status = run_trainer(config_path)
    else:
        status = run_trainer(config_path)
    if status != 0:
        return status
    # Global rank 0 wrote final/: on this pod's own disk only on the pod that ran it; on a shared
    # claim every pod sees it, and one of them uploads.
    final = output_dir / "final"
    if final.is_dir() and (not args.shared_dir or claim(base / "upload.claim")):
        upload_directory(final, args.output_uri)
        logger.info("uploaded the adapter to %s", _shown(args.output_uri))
        if store is not None:
            store.remove_all()
    return 0


def checkpoint_store_for(output_uri: str) -> CheckpointStore | None:
    """The checkpoint store beside a remote output URI; None for a local one (nothing to lose)."""
    scheme = output_uri.split("://", 1)[0] if "://" in output_uri else ""
    if scheme not in ("s3", "gs", "minio"):
        return None
    return CheckpointStore(store_uri(output_uri))


def claim(path: Path) -> bool:
    """Whether this pod holds the one-time job `path` names, taking it if nobody has.

    The claim file holds the pod's host name (stable across container restarts and identical for
    the recreated pod of a retried job), so the same pod keeps its claim after a restart.
    """
    me = socket.gethostname()
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return path.read_text().strip() == me
    with os.fdopen(descriptor, "w") as handle:
        handle.write(me)
    return True


def _shown(uri: str) -> str:
    from ...common import uris

    return uris.display_uri(uri)


if __name__ == "__main__":
    sys.exit(main())
