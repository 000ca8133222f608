"""The local backend: `num_workers` torchrun "nodes" on this host, wired like PyTorchJob pods.

Each node is one process (normally `torchrun -m kftune.components.train_lora.pod.trainer ...`)
started with exactly the environment the Training Operator injects into a pod — `PET_NNODES`,
`PET_NPROC_PER_NODE`, `PET_NODE_RANK`, `PET_MASTER_ADDR=127.0.0.1`, `PET_MASTER_PORT` (a free
port), `MASTER_ADDR`, `MASTER_PORT`, `RANK` (the node rank), `WORLD_SIZE` (nodes x processes) and
`PYTHONUNBUFFERED=1` — so torchrun does a static rendezvous on 127.0.0.1 and the multi-node code
path runs on every CI box. Their output is copied into this process's log with a `[node-<rank>]`
prefix.

When a node fails, the others are stopped. Like the operator restarting a failed pod
(`restartPolicy: OnFailure`, up to `backoff_limit`), the whole job is then started again, up to
`max_restarts` times, and the trainer resumes from its last checkpoint (in the work directory,
which outlives the attempts); bad input (the trainer's exit status 2) is never retried. The error
that ends the job names the failing node and the trainer's own message: each node's torchrun gets
a `TORCHELASTIC_ERROR_FILE`, into which torchrun copies its failed worker's recorded exception
(the trainer's `main` is wrapped in torch.distributed.elastic's `@record`); a worker killed by a
signal is named with its rank, pid and signal from torchrun's failure report. A node run by
`pod/node.py` (the train step's) reads all that itself and leaves the cause as a record in the
file `KFTUNE_TERMINATION_MESSAGE_PATH` names, the same record a pod writes to its termination
message; the backend takes the record when there is one, and reads the output otherwise.
"""

from __future__ import annotations

import collections
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ...failures import (
    TERMINATION_MESSAGE_ENV,
    Report,
    lost_peer,
    node_failure,
    read_error_file,
    read_failure_record,
)
from .base import Backend

logger = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def resolve_num_procs(value: int | str) -> int:
    """`auto` -> one process per visible GPU, 1 without GPUs; a number stays as it is.

    GPUs are counted without importing torch (seconds in this light process): the entries of
    `CUDA_VISIBLE_DEVICES` when it is set, else the GPUs `nvidia-smi -L` lists.
    """
    if value != "auto":
        return int(value)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        devices = [device for device in visible.split(",") if device.strip() not in ("", "-1")]
        return max(1, len(devices))
    if shutil.which("nvidia-smi"):
        try:
            listing = subprocess.run(
                ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return 1
        return max(1, sum(1 for line in listing.splitlines() if line.startswith("GPU ")))
    return 1


def operator_env(
    *, num_nodes: int, num_procs: int, node_rank: int, master_port: int
) -> dict[str, str]:
    """The environment the Training Operator gives the pod of `node_rank` (static rendezvous)."""
    return {
        "PET_NNODES": str(num_nodes),
        "PET_NPROC_PER_NODE": str(num_procs),
        "PET_NODE_RANK": str(node_rank),
        "PET_MASTER_ADDR": "127.0.0.1",
        "PET_MASTER_PORT": str(master_port),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(master_port),
        "RANK": str(node_rank),
        "WORLD_SIZE": str(num_nodes * num_procs),
        "PYTHONUNBUFFERED": "1",
    }


class LocalBackend(Backend):
    """`num_workers` copies of `command`, one per "node", as a PyTorchJob would run them.

    Args:
        command: the node's command line, e.g. `[python, -m, torch.distributed.run, -m,
            kftune.components.train_lora.pod.trainer, --config, CONFIG]` (torchrun reads `PET_*`).
        num_workers: nodes.
        num_procs_per_worker: processes per node (`auto`: one per GPU, 1 on CPU).
        env: extra environment for every node.
        cwd: working directory of the nodes.
        log_tail_lines: lines of the failing node quoted in a failure.
        stop_grace_seconds: how long a stopped node gets between SIGTERM and SIGKILL.
        log_line: where the nodes' lines go (default: this module's logger).
        max_restarts: how many times the job is started again after a node failed.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        num_workers: int,
        num_procs_per_worker: int | str = 1,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        log_tail_lines: int = 50,
        stop_grace_seconds: float = 10.0,
        log_line: Callable[[str], None] | None = None,
        max_restarts: int = 0,
    ) -> None:
        self.command = list(command)
        self.num_workers = num_workers
        self.num_procs = resolve_num_procs(num_procs_per_worker)
        self.env = dict(env or {})
        self.cwd = cwd
        self._log_tail_lines = log_tail_lines
        self._stop_grace_seconds = stop_grace_seconds
        self._log_line = log_line or logger.info
        self.max_restarts = max_restarts
        self.restarts = 0
        self._processes: list[subprocess.Popen[bytes]] = []
        self._readers: list[threading.Thread] = []
        self._tails: list[collections.deque[str]] = []
        self._reports: list[Report] = []  # torchrun's failure report, from each node's output
        self._error_dir = ""

    def submit(self) -> str:
        """Starts the nodes and returns a name for the job."""
        self._error_dir = tempfile.mkdtemp(prefix="kftune-node-errors-")
        return self._start()

    def _record_file(self, node_rank: int) -> Path:
        return Path(self._error_dir) / f"node-{node_rank}.termination-log"

    def _error_file(self, node_rank: int) -> Path:
        return Path(self._error_dir) / f"node-{node_rank}.json"

    def _start(self) -> str:
        os.makedirs(self._error_dir, exist_ok=True)
        port = free_port()
        self._processes, self._readers, self._tails, self._reports = [], [], [], []
        for node_rank in range(self.num_workers):
            self._error_file(node_rank).unlink(missing_ok=True)
            self._record_file(node_rank).unlink(missing_ok=True)  # a restart's fresh start
            env = {
                **_inherited_env(),
                **self.env,
                **operator_env(
                    num_nodes=self.num_workers,
                    num_procs=self.num_procs,
                    node_rank=node_rank,
                    master_port=port,
                ),
                # torchrun copies its failed worker's recorded exception here.
                "TORCHELASTIC_ERROR_FILE": str(self._error_file(node_rank)),
                # Where a node run by pod/node.py writes why it failed (a pod's termination
                # message).
                TERMINATION_MESSAGE_ENV: str(self._record_file(node_rank)),
                # Which attempt this is (torchrun's own TORCHELASTIC_RESTART_COUNT restarts at 0
                # in every new torchrun).
                "KFTUNE_LOCAL_RESTART_COUNT": str(self.restarts),
            }
            process = subprocess.Popen(
                self.command,
                env=env,
                cwd=self.cwd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: stopping it stops its children
            )
            tail: collections.deque[str] = collections.deque(maxlen=self._log_tail_lines)
            report = Report()
            reader = threading.Thread(
                target=self._copy_output,
                args=(process, node_rank, tail, report),
                name=f"node-{node_rank}-log",
                daemon=True,
            )
            reader.start()
            self._processes.append(process)
            self._readers.append(reader)
            self._tails.append(tail)
            self._reports.append(report)
        logger.info(
            "started %d local node(s) x %d process(es), rendezvous on 127.0.0.1:%d",
            self.num_workers,
            self.num_procs,
            port,
        )
        return f"local-{port}"

    def wait(self, timeout_seconds: float) -> None:
        """Waits for every node to exit 0, starting the job again after a failure if allowed.

        Raises:
            RuntimeError: when a node failed and no restart is left (the others are stopped);
                its first line names the node and the trainer's own error.
            TimeoutError: after `timeout_seconds` (every node is stopped first).
        """
        deadline = time.monotonic() + timeout_seconds
        while True:
            codes = [process.poll() for process in self._processes]
            if any(code not in (None, 0) for code in codes):
                rank, cause, retry = self._failure(deadline)
                self.delete()
                self._join_readers()
                if retry and self.restarts < self.max_restarts:
                    self.restarts += 1
                    logger.warning(
                        "node %d of %d failed: %s; starting the job again (restart %d of "
                        "%d); the trainer resumes from its last checkpoint",
                        rank, self.num_workers, cause, self.restarts, self.max_restarts)
                    self._start()
                    continue
                tail = "\n".join(self._tails[rank])
                after = (f" after {self.restarts} restart(s)" if self.restarts else "")
                raise RuntimeError(
                    f"training failed on node {rank} of {self.num_workers}{after}: {cause}\n"
                    f"stopped the other nodes; last {len(self._tails[rank])} log lines of "
                    f"node {rank}:\n{tail}"
                )
            if all(code == 0 for code in codes):
                self._join_readers()
                shutil.rmtree(self._error_dir, ignore_errors=True)
                return
            if time.monotonic() > deadline:
                self.delete()
                self._join_readers()
                raise TimeoutError(
                    f"local training did not finish within {timeout_seconds / 60:g} minutes "
                    f"(`timeout_minutes`); stopped it. Last lines of node 0:\n{self.logs(20)}"
                )
            time.sleep(0.1)

    def _failure(self, deadline: float) -> tuple[int, str, bool]:
        """The failed node that caused the failure, its cause, and whether a restart may help.

        The other nodes' ranks usually fail right after (their peer is gone). While every failed
        node only lost a peer, the others get a moment to exit, and a node with an error of its
        own (or a rank killed by a signal) is preferred over one that lost a peer.
        """
        settle = min(deadline, time.monotonic() + _SETTLE_SECONDS)
        while True:
            (only_lost_a_peer, _), rank, cause, retry = min(self._node_failures())
            if (not only_lost_a_peer or time.monotonic() >= settle
                    or all(process.poll() is not None for process in self._processes)):
                return rank, cause, retry
            time.sleep(0.1)

    def _node_failures(self) -> list[tuple[tuple[bool, bool], int, str, bool]]:
        """((lost a peer, no cause of its own), rank, cause, retry) of each node that failed."""
        failures = []
        for rank, process in enumerate(self._processes):
            code = process.poll()
            if code in (None, 0):
                continue
            self._readers[rank].join(timeout=2)  # its whole output, torchrun's report included
            record = read_failure_record(self._record_file(rank))
            if record is not None:  # the node's own record (pod/node.py)
                cause, bad_input, killed = record.cause, record.bad_input, record.killed
            else:  # another command: torchrun's report in its output
                cause, bad_input, killed = node_failure(
                    code, read_error_file(self._error_file(rank)), list(self._tails[rank]),
                    self._reports[rank])
            failures.append(((lost_peer(cause), not (bad_input or killed)), rank, cause,
                             not bad_input))
        return failures

    def logs(self, tail_lines: int = 50) -> str:
        """The last `tail_lines` lines of node 0."""
        lines = list(self._tails[0]) if self._tails else []
        return "\n".join(lines[-tail_lines:])

    def delete(self) -> None:
        """Stops every node still running: SIGTERM to its process group, SIGKILL after a grace."""
        running = [process for process in self._processes if process.poll() is None]
        for process in running:
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + self._stop_grace_seconds
        for process in running:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
        if self._error_dir:
            shutil.rmtree(self._error_dir, ignore_errors=True)

    def _copy_output(self, process: Any, node_rank: int, tail: collections.deque[str],
                     report: Report) -> None:
        assert process.stdout is not None
        for raw in iter(process.stdout.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            tail.append(line)
            report.feed(line)
            self._log_line(f"[node-{node_rank}] {line}")

    def _join_readers(self, timeout: float = 5) -> None:
        for reader in self._readers:
            reader.join(timeout=timeout)


# Set by torchrun / the operator for a process that is itself a rank; a node must not inherit them
# from whatever started this step.
_LAUNCH_ENV = frozenset(
    {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
     "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
)


def _inherited_env() -> dict[str, str]:
    return {
        name: value
        for name, value in os.environ.items()
        if name not in _LAUNCH_ENV and not name.startswith(("PET_", "TORCHELASTIC_"))
    }


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


# How long the other nodes get to exit on their own once one failed (a node that hangs on a lost
# peer is stopped after it; the others exit within a second or two, longer on a loaded machine).
_SETTLE_SECONDS = 10.0
