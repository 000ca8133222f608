"""The train_lora step: check everything, run the trainer on a backend, publish the adapter.

`run_training` is what the component calls. It goes one way, top to bottom:

1. `plan`: the backend-neutral `spec.TrainingSpec`, the typed `options.KubernetesOptions` and the
   backend, every bad input reported at once (the input artifacts' manifests too, and options the
   chosen backend cannot honour) — before anything is created on a cluster or a process started;
2. the backend: `local` (torchrun "nodes" on this host), `kubernetes` (a Training Operator v1
   PyTorchJob) or `trainjob` (a Kubeflow Trainer v2 TrainJob). `auto` is local outside a cluster
   (`KUBERNETES_SERVICE_HOST` unset), so a step never trains inside its own small pod by accident;
   inside one, API discovery picks the kind the cluster serves (`backends.discovery`);
3. runs and waits (SIGTERM deletes the job: KFP cancels that way);
4. publishes the adapter into the step's output directory atomically and logs the final metrics
   into the KFP `Metrics` artifact.

What moves where:

- local: the trainer reads the input artifact directories in place; it writes checkpoints and
  `final/` into a work directory beside the output; `final/` is copied into the output directory.
- kubernetes / trainjob: every pod stages the model and the data from the artifact store
  (`minio://`, `s3://`, `gs://`) to its node-local disk once (with `pvc`: once per job, onto the
  claim), trains, and node rank 0 uploads `final/` to the step's output artifact URI (see
  `pod/entrypoint.py`). This step then downloads that adapter (small: LoRA weights, tokenizer,
  metrics) into its output directory, from which KFP records it.

`build_job` and `run_job` are the same path for callers with a spec in hand (`kftune launch`, the
Python API): a `job.JobRequest` in, a manifest out; a manifest and its kind in, a finished job out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ...common import cluster, secrets
from ...common.artifacts import MetricsSink, atomic_directory, read_manifest
from ...common.errors import InputError, Problems
from ...common.images import unset_image_problems
from .. import fit
from ..config import trainer_command
from . import inputs
from . import job as job_lib
from .backends.base import Backend, deleting_on_exit
from .options import KubernetesOptions, check_elastic_range, parse_kubernetes_options
from .spec import DEFAULT_TIMEOUT_MINUTES, TrainingSpec, from_parameters
from .tracking import tracking_env

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "kubernetes", "trainjob", "local")
KUBERNETES_BACKENDS = ("kubernetes", "trainjob")
# How often the local backend starts a failed job again when `backoff_limit` is not set.
LOCAL_RESTARTS = 2


def choose_backend(backend: str) -> str:
    """`auto` -> `cluster` inside a cluster (discovery then picks the kind), `local` elsewhere.

    The other backends are returned as given.
    """
    if backend != "auto":
        return backend
    return "cluster" if os.environ.get("KUBERNETES_SERVICE_HOST") else "local"


@dataclasses.dataclass(frozen=True)
class Plan:
    """What `run_training` runs: checked settings and the backend (`cluster`: ask discovery)."""

    spec: TrainingSpec
    """The backend-neutral training settings."""
    options: KubernetesOptions
    """The Kubernetes-only settings."""
    backend: str
    """`local`, `kubernetes`, `trainjob`, or `cluster` (auto inside a cluster)."""


def plan(
    *,
    task: str,
    training_parameters: Mapping[str, Any],
    lora_config: Mapping[str, Any],
    num_workers: int,
    num_procs_per_worker: int | str,
    resources_per_worker: Mapping[str, Any],
    backend: str,
    image: str = "",
    timeout_minutes: int = DEFAULT_TIMEOUT_MINUTES,
    kubernetes_options: Mapping[str, Any] | None = None,
    merge: bool = False,
    uris: Mapping[str, str] | None = None,
    extra_problems: tuple[str, ...] = (),
) -> Plan:
    """Checks every setting once and returns the `Plan`: the one check of train_lora's parameters.

    Every boundary runs it before anything starts: the component (`run_training`), `kftune
    run/submit` and the Python API (`pipelines.parameters.validate_arguments`); the plan is trusted
    from then on.

    Args:
        task: `causal-lm` or `sequence-classification`.
        training_parameters: TrainingArguments fields (+ kftune extras).
        lora_config: LoraConfig fields.
        num_workers: nodes.
        num_procs_per_worker: processes per node: a number or `auto`.
        resources_per_worker: requests = limits per node.
        backend: `auto`, `kubernetes`, `trainjob` or `local` (`cluster`: discovery decides).
        image: trainer image; empty for kftune's.
        timeout_minutes: longest the training may take.
        kubernetes_options: see `options.KUBERNETES_OPTION_KEYS`; only `env` (and
            `backoff_limit`, the restarts) reach local nodes.
        merge: also write merged full weights.
        uris: the artifact URIs the pods read and write, by parameter name (Kubernetes only).
        extra_problems: problems the caller found, reported with these.

    Raises:
        InputError: listing every bad input.
    """
    problems = Problems()
    problems.extend(extra_problems)
    if backend not in BACKENDS and backend != "cluster":
        problems.add(f"`backend` must be one of {', '.join(BACKENDS)}, got {backend!r}")
    # The secret scan of the step's own slice: every string, nested ones included.
    problems.extend(secrets.scan_all({
        "training_parameters": training_parameters, "lora_config": lora_config,
        "resources_per_worker": resources_per_worker, "kubernetes_options": kubernetes_options,
        "image": image})[0])
    options, option_problems = parse_kubernetes_options(kubernetes_options)
    problems.extend(option_problems)
    raw_env = (kubernetes_options or {}).get("env") if isinstance(
        kubernetes_options, Mapping) else None
    spec, spec_problems = from_parameters(
        task=task, training_parameters=training_parameters, lora_config=lora_config,
        num_workers=num_workers, num_procs_per_worker=num_procs_per_worker,
        resources_per_worker=resources_per_worker, image=image,
        timeout_minutes=timeout_minutes, env=raw_env, merge=merge,
    )
    problems.extend(spec_problems)
    problems.extend(check_elastic_range(options, num_workers))
    target = choose_backend(backend)
    if target == "local":
        problems.extend(options.refused_by("local"))
    elif target in KUBERNETES_BACKENDS or target == "cluster":
        problems.extend(options.refused_by(target) if target != "cluster" else [])
        problems.extend(check_pod_uris(uris or {}, options))
    problems.raise_if_any()
    assert spec is not None  # from_parameters returns a spec whenever it found no problem
    return Plan(spec=spec, options=options, backend=target)


def check_pod_uris(uris: Mapping[str, str], options: KubernetesOptions) -> list[str]:
    """The pods reach object stores, and `pvc://<claim>/...` when that claim is mounted.

    A URI holding credentials (user-info, a signed query) would be stored in the job's arguments
    and annotations for anyone who reads the job: refused, without echoing it.
    """
    from ...common.uris import credential_problems, display_uri

    claim = options.pvc.claim_name if options.pvc is not None else ""
    problems = []
    for name, uri in uris.items():
        scheme = uri.split("://", 1)[0] if "://" in uri else ""
        credentials = credential_problems(uri, parameter=name)
        if credentials:
            problems += credentials
            continue
        if scheme in ("minio", "s3", "gs"):
            continue
        if claim and uri.startswith(f"pvc://{claim}/"):
            continue
        problems.append(
            f"`{name}` must live in an object store (minio://, s3://, gs://) or on the mounted "
            f"`kubernetes_options.pvc` claim (pvc://<claim>/...) for the Kubernetes backends, "
            f"got URI {display_uri(uri)!r}; run the pipeline with a remote pipeline root, or use "
            "backend='local'"
        )
    return problems


def run_training(
    *,
    model_dir: str,
    model_uri: str,
    data_dir: str,
    data_uri: str,
    adapter_dir: str,
    adapter_uri: str,
    metrics: MetricsSink | None,
    task: str,
    training_parameters: Mapping[str, Any],
    lora_config: Mapping[str, Any],
    num_workers: int,
    num_procs_per_worker: int | str,
    resources_per_worker: Mapping[str, Any],
    backend: str,
    image: str,
    timeout_minutes: int,
    kubernetes_options: Mapping[str, Any],
    api_client: Any = None,
    log_line: Callable[[str], None] | None = None,
    report_path: str | None = None,
) -> dict[str, Any]:
    """Trains a LoRA adapter and writes it to `adapter_dir`.

    Args:
        model_dir: local directory of the base Model artifact.
        model_uri: its URI in the artifact store (what the pods download).
        data_dir: local directory of the Dataset artifact.
        data_uri: its URI in the artifact store.
        adapter_dir: local directory of the output Model artifact (the adapter).
        adapter_uri: its URI in the artifact store (node rank 0 uploads there; it names the job).
        metrics: the KFP Metrics artifact (anything with `log_metric(name, value)`), or None.
        task: `causal-lm` or `sequence-classification`.
        training_parameters: TrainingArguments fields (+ kftune extras).
        lora_config: LoraConfig fields.
        num_workers: pods / local nodes.
        num_procs_per_worker: processes per node: a number or `auto`.
        resources_per_worker: requests = limits per pod.
        backend: `auto`, `kubernetes` (PyTorchJob), `trainjob` (TrainJob) or `local`.
        image: trainer image; empty for kftune's.
        timeout_minutes: longest the training may take.
        kubernetes_options: the other job settings (`options.KUBERNETES_OPTION_KEYS`; locally
            only `env`, the others are refused).
        api_client: a `kubernetes.client.ApiClient`; None to use the in-cluster configuration.
        log_line: where the local nodes' `[node-<rank>] ...` lines go (default: the log).
        report_path: where to write the HTML report (training_report.py), or None.

    Returns:
        The adapter's metrics (`metrics.json`).

    Raises:
        InputError: for bad input, before anything is started.
        RuntimeError: when training fails (with the failing worker's last log lines).
        TimeoutError: when it takes longer than `timeout_minutes` (the job is deleted).
    """
    # KFP's protobuf Structs carry every number as a double ({"r": 8} arrives as 8.0): ints again.
    training_parameters, input_problems = _input_problems(
        model_dir, data_dir, task, whole_numbers_as_ints(training_parameters),
        local=choose_backend(backend) == "local", nodes=(num_workers, num_procs_per_worker),
        job=(lora_config, resources_per_worker, kubernetes_options))
    pod_uris = {"model": model_uri, "train_data": data_uri, "adapter": adapter_uri}
    chosen = plan(
        task=task, training_parameters=training_parameters,
        lora_config=whole_numbers_as_ints(lora_config),
        num_workers=num_workers, num_procs_per_worker=num_procs_per_worker,
        resources_per_worker=whole_numbers_as_ints(resources_per_worker),
        backend=backend, image=image, timeout_minutes=timeout_minutes,
        kubernetes_options=whole_numbers_as_ints(kubernetes_options),
        uris=None if choose_backend(backend) == "local" else pod_uris,
        extra_problems=tuple(input_problems),
    )
    if chosen.backend == "local":
        result = _run_local(chosen.spec, model_dir, data_dir, adapter_dir,
                            chosen.options.run_policy.backoff_limit, log_line)
    else:
        io = job_lib.PodIO(model_uri=model_uri, data_uri=data_uri, output_uri=adapter_uri)
        result = _run_kubernetes(chosen, io, adapter_dir, api_client)
    _publish_outputs(metrics, report_path, adapter_dir, result)
    return result


def _input_problems(
    model_dir: str, data_dir: str, task: str, training_parameters: Mapping[str, Any], *,
    local: bool, nodes: tuple[Any, Any], job: tuple[Any, Any, Any] = ({}, {}, {}),
) -> tuple[Mapping[str, Any], list[str]]:
    """What the input artifacts (and, for the local backend, this host) allow.

    `job` is (lora_config, resources_per_worker, kubernetes_options): with the artifacts
    readable, fit.py checks that the job fits its GPUs.

    Returns:
        The training parameters (`max_seq_length` fitted to the model) and the problems.
    """
    problems = _check_inputs(model_dir, data_dir, task)
    if not problems:  # the artifacts are readable: check what they allow
        training_parameters, fitted = inputs.fit_max_seq_length(training_parameters, model_dir)
        problems += fitted
        if task == "sequence-classification":
            problems += inputs.class_problems(data_dir)
        problems += fit.fit_problems(model_dir, training_parameters,
                                     *map(whole_numbers_as_ints, (job[0], *nodes, *job[1:])))
    if local:
        problems += inputs.host_problems(*nodes, training_parameters)
    return training_parameters, problems


def whole_numbers_as_ints(value: Any) -> Any:
    """`value` with every float that is a whole number (8.0) replaced by an int, recursively."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {key: whole_numbers_as_ints(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [whole_numbers_as_ints(item) for item in value]
    return value


def _check_inputs(model_dir: str, data_dir: str, task: str) -> list[str]:
    problems = []
    for parameter, directory, kind in (("model", model_dir, "model"),
                                       ("train_data", data_dir, "dataset")):
        try:
            manifest = read_manifest(directory, parameter=parameter)
        except ValueError as error:
            problems.append(str(error))
            continue
        if manifest.get("kind") != kind:
            problems.append(
                f"`{parameter}` must be a {kind} artifact, got one of kind "
                f"{manifest.get('kind')!r} ({directory})"
            )
        elif kind == "model" and manifest.get("task") not in (None, task):
            problems.append(
                f"`model` was downloaded for task {manifest.get('task')!r} but `task` is "
                f"{task!r}; download it with task={task!r}"
            )
    return problems


# -- local -----------------------------------------------------------------------------------------


def _local_procs(spec: TrainingSpec) -> int:
    """`auto` on this host: the GPUs `resources_per_worker` asks for, else those it has."""
    if spec.num_procs_per_worker != "auto" or spec.resources.gpus:
        return spec.procs_per_node()
    from .backends.local import resolve_num_procs

    return spec.procs_per_node(host_gpus=resolve_num_procs("auto"))


def _run_local(
    spec: TrainingSpec, model_dir: str, data_dir: str, adapter_dir: str, restarts: int | None,
    log_line: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    from .backends.local import LocalBackend

    adapter_path = Path(adapter_dir)
    adapter_path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".kftune-train-", dir=adapter_path.parent))
    try:
        output_dir = work / "output"
        config_path = spec.trainer_config(
            model_dir=str(Path(model_dir).resolve()),
            data_dir=str(Path(data_dir).resolve()),
            output_dir=str(output_dir),
        ).to_file(work / "config.json")
        backend = LocalBackend(
            trainer_command(config_path),
            num_workers=spec.num_workers,
            num_procs_per_worker=_local_procs(spec),
            env={**spec.env, **tracking_env(spec.env, str(adapter_path.resolve()))},
            cwd=str(work),
            # Like the operator restarting a failed pod; the checkpoints in `work` outlive the
            # attempts, so the trainer resumes from the last one.
            max_restarts=restarts if restarts is not None else LOCAL_RESTARTS,
            log_line=log_line,
        )
        _run(backend, spec.timeout_seconds)
        return publish_adapter(output_dir / "final", adapter_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(backend: Backend, timeout_seconds: float) -> None:
    with deleting_on_exit(backend):
        backend.submit()
        backend.wait(timeout_seconds=timeout_seconds)


def publish_adapter(final_dir: Path, adapter_dir: Path) -> dict[str, Any]:
    """Copies the trainer's `final/` into `adapter_dir` atomically; returns its metrics.

    Raises:
        RuntimeError: when training reported success but left no adapter.
    """
    if not (final_dir / "adapter_config.json").is_file():
        raise RuntimeError(
            f"training finished but {final_dir} holds no adapter (adapter_config.json missing)"
        )
    with atomic_directory(adapter_dir) as staging:
        shutil.copytree(final_dir, staging, dirs_exist_ok=True)
    return _read_metrics(adapter_dir)


def _read_metrics(adapter_dir: Path) -> dict[str, Any]:
    path = adapter_dir / "metrics.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def _publish_outputs(metrics: MetricsSink | None, report_path: str | None, adapter_dir: str,
                     result: Mapping[str, Any]) -> None:
    """The final metrics into the KFP Metrics artifact; the HTML report."""
    _log_metrics(metrics, result)
    if report_path:
        from .training_report import write_training_report

        write_training_report(adapter_dir, report_path, result)


def _log_metrics(metrics: MetricsSink | None, result: Mapping[str, Any]) -> None:
    if metrics is None:
        return
    for name, value in result.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            continue
        metrics.log_metric(name, float(value))


# -- kubernetes ------------------------------------------------------------------------------------


def step_namespace(options: KubernetesOptions) -> str:
    """The job's namespace: the option, else this pod's own namespace, else `default`."""
    return cluster.own_namespace(options.namespace)


def default_api_client(fix: str = "use backend 'local'") -> Any:
    """A client for this pod's cluster (its service account), else for `$KUBECONFIG`.

    Args:
        fix: The way out besides KUBECONFIG, in the error (the caller's name for local training).

    Raises:
        InputError: when there is neither (no cluster to talk to).
    """
    return cluster.api_client(doing="talk to", fix=fix)


def build_job(job: job_lib.JobRequest, kind: str) -> dict[str, Any]:
    """The manifest of `job` as a `kind` (`kubernetes`: PyTorchJob, `trainjob`: TrainJob) dict."""
    if kind == "trainjob":
        from .trainjob import build_trainjob

        return job_lib.to_dict(build_trainjob(job))
    return job_lib.to_dict(job_lib.build_pytorchjob(job))


def run_job(manifest: dict[str, Any], kind: str, api_client: Any, timeout_seconds: float) -> None:
    """Creates (or re-attaches to) the job and follows it to its end; SIGTERM deletes it.

    Raises:
        RuntimeError: when the job fails (reason and log tail) or the server refuses it.
        TimeoutError: when it runs past `timeout_seconds` (it is deleted).
    """
    from .backends.kubernetes import PyTorchJobBackend, TrainJobBackend

    backend_class = TrainJobBackend if kind == "trainjob" else PyTorchJobBackend
    _run(backend_class(api_client, manifest), timeout_seconds)


def resolve_kind(chosen: Plan, api_client: Any) -> str:
    """`kubernetes` or `trainjob`: the plan's, or for `auto` what the cluster serves.

    Raises:
        InputError: when the cluster serves neither kind, the runtime does not exist, or the
            options do not suit the kind discovery picked.
    """
    from .backends import discovery

    if chosen.backend == "cluster":
        kind = discovery.pick_backend(
            api_client, runtime=chosen.options.runtime,
            runtime_given="runtime" in chosen.options.given,
        )
        refused = chosen.options.refused_by(kind)
        if refused:
            raise InputError(refused)
        return kind
    if chosen.backend == "trainjob":
        discovery.check_runtime(api_client, chosen.options.runtime)
    return chosen.backend


def _run_kubernetes(
    chosen: Plan, io: job_lib.PodIO, adapter_dir: str, api_client: Any
) -> dict[str, Any]:
    # Before the job exists: pods that cannot pull their image would only wait for it.
    unset = unset_image_problems(chosen.spec.image, "image")
    if unset:
        raise InputError(unset)
    api_client = api_client or default_api_client()
    kind = resolve_kind(chosen, api_client)
    job = job_lib.request(chosen.spec, chosen.options, io,
                          namespace=step_namespace(chosen.options))
    run_job(build_job(job, kind), kind, api_client, chosen.spec.timeout_seconds)
    return _collect_adapter(io.output_uri, Path(adapter_dir))


@contextlib.contextmanager
def _kfp_minio_endpoint(uri: str) -> Iterator[None]:
    """For `minio://` with no endpoint configured: KFP's own MinIO, as the pods reach it.

    Set only while the adapter is collected, and restored after: the step's environment is not
    changed for anything else.
    """
    endpoint_vars = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "S3_ENDPOINT_URL")
    if not uri.startswith("minio://") or any(map(os.environ.get, endpoint_vars)):
        yield
        return
    os.environ["AWS_ENDPOINT_URL"] = job_lib.KFP_MINIO_ENDPOINT
    try:
        yield
    finally:
        os.environ.pop("AWS_ENDPOINT_URL", None)


def _collect_adapter(adapter_uri: str, adapter_path: Path) -> dict[str, Any]:
    from ...common.transfer import download_directory

    adapter_path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".kftune-collect-", dir=adapter_path.parent))
    try:
        try:
            with _kfp_minio_endpoint(adapter_uri):
                final = download_directory(adapter_uri, work / "final", parameter="adapter")
        except InputError as error:  # not the user's input: the job did not deliver
            raise RuntimeError(
                f"the training job succeeded but its adapter could not be collected: {error}"
            ) from error
        return publish_adapter(final, adapter_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
