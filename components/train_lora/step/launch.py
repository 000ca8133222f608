"""The train_lora step: check everything, run the trainer on a backend, publish the adapter.

`run_training` is what the component calls. It

1. builds and checks the `LaunchConfig` (every bad input reported at once) and the input
   artifacts' manifests — before anything is created on a cluster or a process is started;
2. picks the backend: `kubernetes` (a PyTorchJob) or `local` (torchrun "nodes" on this host);
   `auto` is kubernetes inside a cluster (`KUBERNETES_SERVICE_HOST` is set) and local elsewhere,
   so a step on a cluster never trains inside its own small pod by accident;
3. runs and waits (SIGTERM deletes the job: KFP cancels that way);
4. publishes the adapter into the step's output directory atomically and logs the final metrics
   into the KFP `Metrics` artifact.

What moves where:

- local: the trainer reads the input artifact directories in place; it writes checkpoints and
  `final/` into a work directory beside the output; `final/` is copied into the output directory.
- kubernetes: every pod stages the model and the data from the artifact store (`minio://`,
  `s3://`, `gs://`) to its node-local disk once (with `pvc`: once per job, onto the claim), trains,
  and node rank 0 uploads `final/` to the step's output artifact URI (see `pod.py`). This step
  then downloads that adapter (small: LoRA weights, tokenizer, metrics) into its output directory,
  from which KFP records it. The model itself never passes through this step's pod beyond the copy
  KFP makes of every input artifact.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from ...common.artifacts import atomic_directory, read_manifest
from ...common.errors import InputError
from . import job as job_lib
from .backends.base import Backend, deleting_on_exit

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "kubernetes", "local")
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class MetricsSink(Protocol):
    """What `run_training` needs of a KFP `Metrics` artifact."""

    def log_metric(self, metric: str, value: float) -> None:
        """Records one scalar."""


def choose_backend(backend: str) -> str:
    """`auto` -> `kubernetes` inside a cluster, `local` elsewhere; others are returned as given."""
    if backend != "auto":
        return backend
    return "kubernetes" if os.environ.get("KUBERNETES_SERVICE_HOST") else "local"


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
) -> dict[str, Any]:
    """Trains a LoRA adapter and writes it to `adapter_dir`.

    Args:
        model_dir: local directory of the base Model artifact.
        model_uri: its URI in the artifact store (what the pods download).
        data_dir: local directory of the Dataset artifact.
        data_uri: its URI in the artifact store.
        adapter_dir: local directory of the output Model artifact (the adapter).
        adapter_uri: its URI in the artifact store (node rank 0 uploads there; the job name is
            derived from it).
        metrics: the KFP Metrics artifact (anything with `log_metric(name, value)`), or None.
        task: `causal-lm` or `sequence-classification`.
        training_parameters: TrainingArguments fields (+ kftune extras).
        lora_config: LoraConfig fields.
        num_workers: pods / local nodes.
        num_procs_per_worker: processes per node: a number or `auto`.
        resources_per_worker: requests = limits per pod.
        backend: `auto`, `kubernetes` or `local`.
        image: trainer image; empty for kftune's.
        timeout_minutes: longest the training may take.
        kubernetes_options: the other PyTorchJob settings (see `job.KUBERNETES_OPTION_KEYS`);
            its `env` also reaches the local backend's nodes.
        api_client: a `kubernetes.client.ApiClient`; None to use the in-cluster configuration.

    Returns:
        The adapter's metrics (`metrics.json`).

    Raises:
        InputError: for bad input, before anything is started.
        RuntimeError: when training fails (with the failing worker's last log lines).
        TimeoutError: when it takes longer than `timeout_minutes` (the job is deleted).
    """
    # KFP carries dict parameters as protobuf Structs, whose numbers are all doubles: {"r": 8}
    # arrives as {"r": 8.0}. Whole numbers are turned back into ints before checking them.
    training_parameters = whole_numbers_as_ints(training_parameters)
    lora_config = whole_numbers_as_ints(lora_config)
    resources_per_worker = whole_numbers_as_ints(resources_per_worker)
    kubernetes_options = whole_numbers_as_ints(kubernetes_options)
    problems: list[str] = []
    if backend not in BACKENDS:
        problems.append(f"`backend` must be one of {', '.join(BACKENDS)}, got {backend!r}")
    chosen = choose_backend(backend)
    problems += _check_inputs(model_dir, data_dir, task)
    if chosen == "kubernetes":
        problems += _check_reachable_from_pods(
            {"model": model_uri, "train_data": data_uri, "adapter": adapter_uri},
            (kubernetes_options or {}).get("pvc"),
        )
    config = job_lib.from_component(
        task=task,
        training_parameters=training_parameters,
        lora_config=lora_config,
        num_workers=num_workers,
        num_procs_per_worker=num_procs_per_worker,
        resources_per_worker=resources_per_worker,
        image=image,
        timeout_minutes=timeout_minutes,
        kubernetes_options=kubernetes_options,
        extra_problems=problems,
    )
    if chosen == "kubernetes":
        result = _run_kubernetes(config, model_uri, data_uri, adapter_dir, adapter_uri, api_client)
    else:
        result = _run_local(config, model_dir, data_dir, adapter_dir)
    _log_metrics(metrics, result)
    return result


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


def _check_reachable_from_pods(uris: Mapping[str, str], pvc: Any) -> list[str]:
    """The pods reach object stores, and `pvc://<claim>/...` when that claim is mounted."""
    claim = pvc.get("claim_name") if isinstance(pvc, Mapping) else pvc
    problems = []
    for name, uri in uris.items():
        scheme = uri.split("://", 1)[0] if "://" in uri else ""
        if scheme in ("minio", "s3", "gs"):
            continue
        if claim and uri.startswith(f"pvc://{claim}/"):
            continue
        problems.append(
            f"`{name}` must live in an object store (minio://, s3://, gs://) or on the mounted "
            f"`kubernetes_options.pvc` claim (pvc://<claim>/...) for the kubernetes backend, got "
            f"URI {uri!r}; run the pipeline with a remote pipeline root, or use backend='local'"
        )
    return problems


# -- local -----------------------------------------------------------------------------------------


def trainer_command(config_path: str | os.PathLike) -> list[str]:
    """The torchrun command running the trainer (the node layout comes from `PET_*`)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "-m",
        "kftune.components.train_lora.pod.trainer",
        "--config",
        str(config_path),
    ]


def _run_local(
    config: job_lib.LaunchConfig, model_dir: str, data_dir: str, adapter_dir: str
) -> dict[str, Any]:
    adapter_path = Path(adapter_dir)
    adapter_path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".kftune-train-", dir=adapter_path.parent))
    try:
        output_dir = work / "output"
        config_path = work / "config.json"
        config_path.write_text(
            json.dumps(
                config.trainer_config(
                    model_dir=str(Path(model_dir).resolve()),
                    data_dir=str(Path(data_dir).resolve()),
                    output_dir=str(output_dir),
                ),
                indent=2,
            )
        )
        from .backends.local import LocalBackend

        backend = LocalBackend(
            trainer_command(config_path),
            num_workers=config.num_workers,
            num_procs_per_worker=config.num_procs_per_worker,
            env=dict(config.env),
            cwd=str(work),
        )
        _run(backend, config)
        return publish_adapter(output_dir / "final", adapter_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(backend: Backend, config: job_lib.LaunchConfig) -> None:
    with deleting_on_exit(backend):
        backend.submit()
        backend.wait(timeout_seconds=config.timeout_seconds)


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


def _namespace(config: job_lib.LaunchConfig) -> str:
    if config.namespace:
        return config.namespace
    try:
        return Path(SERVICE_ACCOUNT_NAMESPACE).read_text().strip() or "default"
    except OSError:
        return "default"


def default_api_client() -> Any:
    """A client for this pod's cluster (its service account), else for `$KUBECONFIG`."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        # The library reads $KUBECONFIG once, at import: pass it explicitly.
        config.load_kube_config(
            config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration
        )
    return client.ApiClient(configuration)


def build_manifest(
    config: job_lib.LaunchConfig, model_uri: str, data_uri: str, adapter_uri: str
) -> dict[str, Any]:
    """The PyTorchJob for this step as a dict, named after the step's output URI."""
    io = job_lib.PodIO(model_uri=model_uri, data_uri=data_uri, output_uri=adapter_uri)
    name = config.job_name or job_lib.derive_job_name(adapter_uri, config.task)
    return job_lib.to_dict(
        job_lib.build_pytorchjob(config, io, job_name=name, namespace=_namespace(config))
    )


def _run_kubernetes(
    config: job_lib.LaunchConfig,
    model_uri: str,
    data_uri: str,
    adapter_dir: str,
    adapter_uri: str,
    api_client: Any,
) -> dict[str, Any]:
    from ...common.transfer import download_directory
    from .backends.kubernetes import PyTorchJobBackend

    manifest = build_manifest(config, model_uri, data_uri, adapter_uri)
    backend = PyTorchJobBackend(api_client or default_api_client(), manifest)
    _run(backend, config)
    endpoint_vars = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "S3_ENDPOINT_URL")
    if adapter_uri.startswith("minio://") and not any(map(os.environ.get, endpoint_vars)):
        # KFP's own MinIO, as the pods reach it (its keys come from the step's Secret env).
        os.environ["AWS_ENDPOINT_URL"] = job_lib.KFP_MINIO_ENDPOINT
    adapter_path = Path(adapter_dir)
    adapter_path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".kftune-collect-", dir=adapter_path.parent))
    try:
        try:
            final = download_directory(adapter_uri, work / "final", parameter="adapter")
        except InputError as error:  # not the user's input: the job did not deliver
            raise RuntimeError(
                f"{backend.title} succeeded but its adapter could not be collected: {error}"
            ) from error
        return publish_adapter(final, adapter_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
