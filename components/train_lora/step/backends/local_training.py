"""The local training backend: the train step, and TrainingClient's jobs, on this host.

The step's adapter is trained in place from its input directories by `num_workers` torchrun
"nodes" (`local.LocalBackend`), restarted like failed pods. A job submitted by TrainingClient first
stages its inputs with the pods' own code, started as a process (`pod/stage.py`: fetching sources
as the download steps do), then runs through the same step; its conditions and its nodes' logs
are kept here, as a cluster keeps a job's, for `status`, `logs` and `delete`.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ....common import retry
from ....common.errors import InputError
from ..tracking import tracking_env
from .base import NodeSelection, StepFiles, TrainingBackend, publish_adapter, run_to_the_end
from .choice import Target
from .local import LocalBackend, resolve_num_procs

if TYPE_CHECKING:
    from ..job import JobRequest
    from ..launch import Plan
    from ..spec import TrainingSpec

logger = logging.getLogger(__name__)

# A local node: torchrun with the trainer, its failure written as a record (pod/node.py).
NODE_MODULE = "kftune.components.train_lora.pod.node"

# How the trainer's global rank 0 starts its information lines (pod/trainer.py setup_logging).
TRAINER_INFO = "[rank 0] INFO "


class NodeLogs:
    """A local job's log, per node (`node-<rank>`, the local "pods"), as its lines come.

    Fed by the local backend's `[node-<rank>] ...` lines while the job runs; read by `logs`,
    which with `follow` streams them until the job ends.
    """

    def __init__(self, num_nodes: int = 1) -> None:
        # Every node has a log, if only an empty one (the workers often print nothing).
        self._lines: dict[str, list[str]] = {f"node-{rank}": [] for rank in range(num_nodes)}
        self._changed = threading.Condition()
        self._over = False

    def add(self, line: str) -> None:
        """Takes one `[node-<rank>] text` line (and logs it, as the local backend would).

        The trainer's own lines (global rank 0's: its setup, a progress line every
        `logging_steps`, the end) are also printed, as TrainingClient prints its other news.
        """
        prefix, _, text = line.partition(" ")
        with self._changed:
            self._lines.setdefault(prefix.strip("[]"), []).append(text)
            self._changed.notify_all()
        logging.getLogger(LocalBackend.__module__).info("%s", line)
        _, trainer_line, message = text.partition(TRAINER_INFO)
        if trainer_line:
            print(f"kftune: {message}", flush=True)

    def end(self) -> None:
        """The job is over: followers stop once they have read everything."""
        with self._changed:
            self._over = True
            self._changed.notify_all()

    def text(self, nodes: Callable[[str], bool]) -> dict[str, str]:
        """`{node: its log}` of the selected nodes, as far as it has come."""
        with self._changed:
            return {node: "".join(f"{line}\n" for line in lines)
                    for node, lines in sorted(self._lines.items()) if nodes(node)}

    def follow(self, nodes: Callable[[str], bool]) -> Iterator[tuple[str, str]]:
        """Yields (node, line) of the selected nodes as they come, until the job is over."""
        read: dict[str, int] = {}
        while True:
            with self._changed:
                fresh = [(node, lines[read.get(node, 0):])
                         for node, lines in sorted(self._lines.items()) if nodes(node)]
                over = self._over
                if not any(lines for _, lines in fresh) and not over:
                    self._changed.wait(timeout=1.0)
                    continue
            for node, lines in fresh:
                read[node] = read.get(node, 0) + len(lines)
                for line in lines:
                    yield node, line
            if over and not any(lines for _, lines in fresh):
                return


def selected_nodes(selection: NodeSelection) -> Callable[[str], bool]:
    """Which local nodes `selection` names: node 0 is the Master, node i+1 Worker i."""
    replica_type = (selection.replica_type or "").lower()
    index = selection.replica_index

    def selected(node: str) -> bool:
        rank = int(node.removeprefix("node-"))
        if selection.is_master or replica_type == "master":
            return rank == 0 and index in (None, 0)
        if replica_type == "worker":
            return rank >= 1 and index in (None, rank - 1)
        return True

    return selected


def local_procs(spec: TrainingSpec) -> int:
    """`auto` on this host: the GPUs `resources_per_worker` asks for, else those it has."""
    if spec.num_procs_per_worker != "auto" or spec.resources.gpus:
        return spec.procs_per_node()
    return spec.procs_per_node(host_gpus=resolve_num_procs("auto"))


STAGE_MODULE = "kftune.components.train_lora.pod.stage"


def stage(job: JobRequest, stage_dir: Path) -> tuple[str, str]:
    """The pods' own staging of `job`'s inputs onto this machine's disk, run as the pod runs it.

    Returns:
        The model and data directories.

    Raises:
        InputError: for bad input (a source that does not exist, a mapping that does not fit).
        RuntimeError: when staging failed otherwise.
    """
    request = {"model_uri": job.io.model_uri, "data_uri": job.io.data_uri,
               "stage_dir": str(stage_dir), "model_source": job.io.model_source,
               "data_source": job.io.data_source}
    done = subprocess.run([sys.executable, "-m", STAGE_MODULE, json.dumps(request)],
                          stdout=subprocess.PIPE, text=True, check=False)
    lines = done.stdout.strip().splitlines()
    try:
        outcome = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise RuntimeError(f"staging the inputs failed (exit status {done.returncode}): "
                           f"{done.stdout.strip()[-2000:]}") from None
    for name, level, message in outcome["logs"]:
        logging.getLogger(name).log(level, "%s", message)
    if "problems" in outcome:
        raise InputError(outcome["problems"])
    if "error" in outcome:
        raise RuntimeError(f"staging the inputs failed: {outcome['error']}")
    return outcome["model"], outcome["data"]


class LocalTraining(TrainingBackend):
    """Training on this host.

    Args:
        work_root: where submitted jobs stage their inputs (`<work_root>/<name>/inputs`).
        log_line: where the step's nodes' `[node-<rank>] ...` lines go (default: the log).
        restarts: how often a failed job starts again when `backoff_limit` is not set; default
            the retry policy's.
    """

    target = Target.LOCAL

    def __init__(self, *, work_root: Path | None = None,
                 log_line: Callable[[str], None] | None = None,
                 restarts: int = retry.DEFAULTS.local_restarts) -> None:
        self.work_root = Path(work_root or "runs")
        self._log_line = log_line
        self._restarts = restarts
        self._jobs: dict[tuple[str, str], dict[str, Any]] = {}

    def run_step(self, plan: Plan, files: StepFiles) -> dict[str, Any]:
        """Trains in a work directory beside the adapter's; publishes `final/` as the adapter."""
        spec = plan.spec
        adapter_path = Path(files.adapter_dir)
        adapter_path.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".kftune-train-", dir=adapter_path.parent))
        try:
            output_dir = work / "output"
            config_path = spec.trainer_config(
                model_dir=str(Path(files.model_dir).resolve()),
                data_dir=str(Path(files.data_dir).resolve()),
                output_dir=str(output_dir),
            ).to_file(work / "config.json")
            restarts = plan.options.run_policy.backoff_limit
            job = LocalBackend(
                # torchrun under pod/node.py, which records why a node failed, as a pod does.
                [sys.executable, "-m", NODE_MODULE, str(config_path)],
                num_workers=spec.num_workers,
                num_procs_per_worker=local_procs(spec),
                env={**spec.env, **tracking_env(spec.env, str(adapter_path.resolve()))},
                cwd=str(work),
                # Like the operator restarting a failed pod; the checkpoints in `work` outlive
                # the attempts, so the trainer resumes from the last one.
                max_restarts=restarts if restarts is not None else self._restarts,
                log_line=self._log_line,
            )
            run_to_the_end(job, spec.timeout_seconds)
            return publish_adapter(output_dir / "final", adapter_path)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def submit(self, job: JobRequest, plan: Plan) -> str:
        """Stages the inputs as the pods do, then trains through the step, to the end."""
        from ..launch import run_training

        logs = NodeLogs(plan.spec.num_workers)
        record: dict[str, Any] = {"conditions": [{"type": "Created", "status": "True"}],
                                  "adapter": job.io.output_uri, "logs": logs}
        self._jobs[(job.namespace, job.name)] = record
        try:
            model_dir, data_dir = stage(job, self.work_root / job.name / "inputs")
            record["conditions"].append({"type": "Running", "status": "True"})
            files = StepFiles(model_dir=str(model_dir), model_uri=job.io.model_uri,
                              data_dir=str(data_dir), data_uri=job.io.data_uri,
                              adapter_dir=job.io.output_uri, adapter_uri=job.io.output_uri)
            run_training(plan.parameters, files,
                         backend=LocalTraining(log_line=logs.add, restarts=self._restarts))
        except Exception as error:
            record["conditions"].append({"type": "Failed", "status": "True",
                                         "message": str(error)})
            raise
        finally:
            logs.end()
        record["conditions"].append({"type": "Succeeded", "status": "True"})
        return job.name

    def _record(self, name: str, namespace: str) -> dict[str, Any]:
        record = self._jobs.get((namespace, name))
        if record is None:
            raise RuntimeError(f"no local job {namespace}/{name} was trained by this client")
        return record

    def status(self, name: str, namespace: str) -> dict[str, Any]:
        """The job's conditions (Created, Running, then Succeeded or Failed)."""
        record = self._record(name, namespace)
        return {"metadata": {"name": name, "namespace": namespace},
                "status": {"conditions": list(record["conditions"])}}

    def logs(self, name: str, namespace: str, nodes: NodeSelection,
             follow: Callable[[str], None] | None = None) -> dict[str, str]:
        """The selected nodes' logs (`node-<rank>`); `follow` gets `[node-<rank>] line` lines."""
        logs = self._record(name, namespace)["logs"]
        selected = selected_nodes(nodes)
        if follow is not None:
            for node, line in logs.follow(selected):
                follow(f"[{node}] {line}\n")
        return logs.text(selected)

    def delete(self, name: str, namespace: str, delete_options: Any = None) -> None:
        """Forgets the job (its adapter stays)."""
        self._jobs.pop((namespace, name), None)

    def adapter_uri(self, name: str, namespace: str) -> str:
        """The job's adapter directory."""
        return self._record(name, namespace)["adapter"]
