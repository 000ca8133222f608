"""The train_lora step: check everything, run the trainer on a backend, publish the adapter.

`run_training` is what the component calls. It goes one way, top to bottom:

1. `plan`: the backend-neutral `spec.TrainingSpec`, the typed `options.KubernetesOptions` and the
   backend, every bad input reported at once (the input artifacts' manifests too, and options the
   chosen backend cannot honour) — before anything is created on a cluster or a process started;
2. the backend object (`backends.resolve`): `local` (torchrun "nodes" on this host), `kubernetes`
   (a Training Operator v1 PyTorchJob) or `trainjob` (a Kubeflow Trainer v2 TrainJob). `auto` is
   local outside a cluster, so a step never trains inside its own small pod by accident; inside
   one, API discovery picks the kind the cluster serves (`backends.choice`, `backends.discovery`);
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

Callers with a plan in hand (`kftune launch`, TrainingClient) use the same backend objects.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from ...common import secrets
from ...common.artifacts import MetricsSink, read_manifest
from ...common.errors import Problems
from .. import fit
from . import inputs
from .backends import StepFiles, Target, TrainingBackend, choice_problems, resolve, target_of
from .options import KubernetesOptions, check_elastic_range, parse_kubernetes_options
from .spec import TrainingSpec, TrainParameters, from_parameters

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a backend runs: the checked parameters, their typed settings, and where."""

    parameters: TrainParameters
    """The parameters as given (checked)."""
    spec: TrainingSpec
    """The backend-neutral training settings."""
    options: KubernetesOptions
    """The Kubernetes-only settings."""
    target: Target
    """Where the training runs (`CLUSTER`: the kind is asked of the cluster when it starts)."""


def plan(
    parameters: TrainParameters,
    *,
    target: Target | None = None,
    cluster: bool | None = None,
    merge: bool = False,
    uris: Mapping[str, str] | None = None,
    extra_problems: tuple[str, ...] = (),
) -> Plan:
    """Checks every setting once and returns the `Plan`: the one check of train_lora's parameters.

    Every boundary runs it before anything starts: the component (`run_training`), `kftune
    run/submit` and the Python API (`pipelines.parameters.validate_arguments`), `kftune launch`,
    TrainingClient; the plan is trusted from then on.

    Args:
        parameters: the train step's parameters.
        target: where it runs, when the caller knows (TrainingClient); else `parameters.backend`.
        cluster: for `backend` `auto`, whether the job goes to a cluster; None: whether this
            process runs in one.
        merge: also write merged full weights.
        uris: the artifact URIs the pods read and write, by parameter name (Kubernetes only).
        extra_problems: problems the caller found, reported with these.

    Raises:
        InputError: listing every bad input.
    """
    problems = Problems()
    problems.extend(extra_problems)
    if target is None:
        backend_problems = choice_problems(parameters.backend)
        problems.extend(backend_problems)
        if not backend_problems:
            target = target_of(parameters.backend, cluster=cluster)
    # The secret scan of the step's own slice: every string, nested ones included, of every
    # parameter that may not hold a secret (`TrainParameters`' metadata: none may).
    problems.extend(secrets.field_problems(parameters, skip=tuple(
        field.name for field in dataclasses.fields(parameters) if field.metadata["secret"])))
    kubernetes_options = parameters.kubernetes_options
    options, option_problems = parse_kubernetes_options(kubernetes_options)
    problems.extend(option_problems)
    raw_env = kubernetes_options.get("env") if isinstance(kubernetes_options, Mapping) else None
    spec, spec_problems = from_parameters(parameters, env=raw_env, merge=merge)
    problems.extend(spec_problems)
    problems.extend(check_elastic_range(options, parameters.num_workers))
    if target is not None:
        problems.extend(options.refused_by(target))
        if target.on_cluster:
            problems.extend(check_pod_uris(uris or {}, options))
    problems.raise_if_any()
    assert spec is not None and target is not None  # else a problem was raised
    return Plan(parameters=parameters, spec=spec, options=options, target=target)


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
    parameters: TrainParameters,
    files: StepFiles,
    *,
    metrics: MetricsSink | None = None,
    api_client: Any = None,
    log_line: Callable[[str], None] | None = None,
    backend: TrainingBackend | None = None,
    report_path: str | None = None,
) -> dict[str, Any]:
    """Trains a LoRA adapter and writes it to `files.adapter_dir`.

    Args:
        parameters: the train step's parameters.
        files: the step's artifacts (directories and URIs).
        metrics: the KFP Metrics artifact (anything with `log_metric(name, value)`), or None.
        api_client: a `kubernetes.client.ApiClient`; None to use the in-cluster configuration.
        log_line: where the local nodes' `[node-<rank>] ...` lines go (default: the log).
        backend: the backend to run on; default the one `parameters.backend` names.
        report_path: where to write the HTML report (training_report.py), or None.

    Returns:
        The adapter's metrics (`metrics.json`).

    Raises:
        InputError: for bad input, before anything is started.
        RuntimeError: when training fails (with the failing worker's last log lines).
        TimeoutError: when it takes longer than `timeout_minutes` (the job is deleted).
    """
    # KFP's protobuf Structs carry every number as a double ({"r": 8} arrives as 8.0): ints again.
    parameters = parameters.replace(**{
        name: whole_numbers_as_ints(getattr(parameters, name))
        for name in ("training_parameters", "lora_config", "resources_per_worker",
                     "kubernetes_options")})
    target = backend.target if backend is not None else (
        None if choice_problems(parameters.backend) else target_of(parameters.backend))
    local = target is not None and target.is_local
    training_parameters, input_problems = _input_problems(files, parameters, local=local)
    chosen = plan(
        parameters.replace(training_parameters=training_parameters),
        target=target,
        uris=None if local else {"model": files.model_uri, "train_data": files.data_uri,
                                 "adapter": files.adapter_uri},
        extra_problems=tuple(input_problems),
    )
    backend = backend or resolve(chosen.target, api_client=api_client, log_line=log_line)
    result = backend.run_step(chosen, files)
    _publish_outputs(metrics, report_path, files.adapter_dir, result)
    return result


def _input_problems(
    files: StepFiles, parameters: TrainParameters, *, local: bool
) -> tuple[Mapping[str, Any], list[str]]:
    """What the input artifacts (and, for the local backend, this host) allow.

    With the artifacts readable, fit.py checks that the job fits its GPUs.

    Returns:
        The training parameters (`max_seq_length` fitted to the model) and the problems.
    """
    training_parameters = parameters.training_parameters
    nodes = (parameters.num_workers, parameters.num_procs_per_worker)
    problems = _check_inputs(files.model_dir, files.data_dir, parameters.task)
    if not problems:  # the artifacts are readable: check what they allow
        training_parameters, fitted = inputs.fit_max_seq_length(training_parameters,
                                                                files.model_dir)
        problems += fitted
        if parameters.task == "sequence-classification":
            problems += inputs.class_problems(files.data_dir)
        if parameters.task == "preference":
            problems += inputs.pair_problems(files.data_dir)
        problems += fit.fit_problems(
            files.model_dir, training_parameters, parameters.lora_config, *nodes,
            parameters.resources_per_worker, parameters.kubernetes_options)
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
