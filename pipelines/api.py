"""kftune's Python API: the pipeline on this machine (`run`) or on a KFP server (`submit`).

    import kftune

    summary = kftune.run(training_parameters={"max_steps": 20}, num_workers=2)
    print(summary.table()); summary.adapter_dir

    submitted = kftune.submit(host="https://kubeflow.example.com/pipeline",
                              namespace="team-a", existing_token=token, num_workers=4)
    submitted.wait(timeout=3600)

Both take the pipeline's parameters as keyword arguments (the names of `kftune run --help`, typed
values: dicts as dicts) and check them as the command line does, every problem at once, before
anything runs or is uploaded. `kftune run` and `kftune submit` are this module's command-line
syntax.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..components.common import images, secrets, uris
from ..components.common.errors import InputError, reading
from .errors import CliError
from .parameters import resolve_arguments

DEFAULT_PIPELINE_NAME = "kftune-lora-finetune"


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """What `kftune.run` returns: the base and fine-tuned metrics, timings and where things are."""

    output_dir: Path
    """The run's directory: `artifacts/` (every step's outputs) and `summary.json`."""
    adapter_dir: Path
    """The LoRA adapter (`peft.PeftModel.from_pretrained(base, adapter_dir)`)."""
    primary_metric: str
    """`accuracy` (sequence classification) or `perplexity` (causal LM)."""
    higher_is_better: bool
    """Whether a larger `primary_metric` is better."""
    base: dict[str, float]
    """The base model's metrics on the held-out rows."""
    tuned: dict[str, float]
    """The fine-tuned model's metrics on the same rows."""
    improved: bool | None
    """Whether fine-tuning improved `primary_metric` (None when it is missing)."""
    train_seconds: float | None
    """The training time the trainer measured."""
    wall_seconds: float
    """The whole pipeline's time."""
    report: Path | None
    """The evaluation's Markdown report."""
    arguments: dict[str, Any]
    """Every pipeline argument the run used, defaults included."""
    kftune_version: str = __version__
    merged_model_dir: Path | None = None
    """The merged model (export_model's output) when the run had `merge` on."""
    benchmark_report: Path | None = None
    """The benchmark step's Markdown report (lm-evaluation-harness) when `benchmark_tasks` ran."""
    would_register: list[dict[str, Any]] | None = None
    """What register_model records for these artifacts: name, version, URI, format, metadata."""
    would_deploy: dict[str, Any] | None = None
    """With `deploy`: what deploy_model would serve (kinds, model URI and name, adapters, the
    manifests), since `kftune run` has no cluster to deploy to."""
    training_report: Path | None = None
    """The train step's HTML page: loss and learning-rate curves, the run's settings."""
    evaluation_report: Path | None = None
    """The evaluate step's HTML page: base vs fine-tuned."""

    @classmethod
    def from_dict(cls, summary: dict[str, Any]) -> RunSummary:
        """From the dict `summary.json` holds."""
        fields = {field.name for field in dataclasses.fields(cls)}
        values = {key: value for key, value in summary.items() if key in fields}
        for key in ("output_dir", "adapter_dir", "report", "merged_model_dir",
                    "benchmark_report", "training_report", "evaluation_report"):
            if values.get(key) is not None:
                values[key] = Path(values[key])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """As written to `summary.json` (paths as strings)."""
        return {
            key: str(value) if isinstance(value, Path) else value
            for key, value in dataclasses.asdict(self).items()
        }

    def table(self) -> str:
        """The base vs fine-tuned table `kftune run` prints at its end."""
        from .run import format_table

        return format_table(self.to_dict())


def run(
    *, output_dir: str | Path | None = None, cache: bool = False, **parameters: Any
) -> RunSummary:
    """Runs the LoRA fine-tuning pipeline on this machine (kfp.local, local training backend).

    Args:
        output_dir: Where the artifacts and `summary.json` go; default `runs/<UTC time>`.
        cache: Reuse step outputs of earlier runs with the same inputs.
        **parameters: Pipeline parameters (`kftune run --help` lists them), e.g.
            `model_uri="hf://org/model"`, `training_parameters={"max_steps": 20}`,
            `num_workers=2`. The others keep the pipeline's defaults (the demo).

    Returns:
        The summary (also written to `output_dir/summary.json`).

    Raises:
        InputError: every bad parameter at once, before anything runs or is written.
        CliError: when a step fails (a `RuntimeError` naming the step and its error).
    """
    from .run import run_pipeline

    arguments, overrides = resolve_arguments((), parameters, on_this_host=True)
    summary = run_pipeline(arguments, overrides, output_dir=output_dir, cache=cache)
    return RunSummary.from_dict(summary)


@dataclasses.dataclass(frozen=True)
class SubmittedRun:
    """What `kftune.submit` returns: the run (or recurring run) it created on the KFP server."""

    host: str
    """The KFP API endpoint."""
    name: str
    """The run's (or recurring run's) name."""
    pipeline_id: str
    """The uploaded pipeline."""
    pipeline_version_id: str
    """The version of it the run uses (a new one per submit)."""
    experiment_id: str
    """The experiment the run is in."""
    run_id: str | None = None
    """The run; None for a recurring run."""
    recurring_run_id: str | None = None
    """The recurring run; None for a single run."""
    cron: str | None = None
    """The recurring run's schedule, in KFP's 6-field cron."""
    client: Any = dataclasses.field(default=None, repr=False, compare=False)
    """The `kfp.Client` that created it (authenticated as `submit` was)."""

    @property
    def url(self) -> str:
        """The run's page in the KFP UI."""
        if self.run_id:
            return f"{self.host.rstrip('/')}/#/runs/details/{self.run_id}"
        return f"{self.host.rstrip('/')}/#/recurringrun/details/{self.recurring_run_id}"

    def wait(self, timeout: int = 24 * 3600, sleep_duration: int = 5) -> Any:
        """Waits for the run to finish (`kfp.Client.wait_for_run_completion`); returns it.

        Raises:
            ValueError: for a recurring run (it does not finish).
            TimeoutError: when it is still running after `timeout` seconds.
        """
        if not self.run_id:
            raise ValueError("a recurring run does not finish; wait for one of its runs instead")
        return self.client.wait_for_run_completion(
            self.run_id, timeout=timeout, sleep_duration=sleep_duration
        )


def submit(
    *,
    host: str,
    experiment: str = "kftune",
    namespace: str = "",
    schedule: str | None = None,
    run_name: str = "",
    pipeline_name: str = DEFAULT_PIPELINE_NAME,
    package: str | Path | None = None,
    runtime_image: str = "",
    image_registry: str = "",
    pvc: Sequence[str] = (),
    existing_token: str | None = None,
    cookies: str | None = None,
    credentials: Any = None,
    ssl_ca_cert: str | None = None,
    **parameters: Any,
) -> SubmittedRun:
    """Uploads the pipeline to a KFP server and starts a run, or a recurring run.

    A pipeline named `pipeline_name` gets a new version; otherwise it is created. Only the
    parameters given are sent: the server fills in the pipeline's defaults for the others.
    Behind Kubeflow's authentication, authenticate as `kfp.Client` does (`existing_token`,
    `credentials` or `cookies`); no credential is ever printed or logged.

    Args:
        host: The KFP API endpoint, e.g. `https://kubeflow.example.com/pipeline`.
        experiment: The experiment's name (created when missing).
        namespace: The Kubeflow profile namespace (multi-user Kubeflow).
        schedule: A cron expression (5 fields, or 6 with seconds first): a recurring run.
        run_name: The run's name; default `<pipeline_name>-<UTC time>`.
        pipeline_name: The uploaded pipeline's name.
        package: A compiled pipeline YAML; default: compile now.
        runtime_image: Run the pipeline's steps in this image (a mirror, say).
        image_registry: Run the steps in the runtime image `kftune images push` pushed there
            (kftune publishes no images: without it, `runtime_image` or a `package`, refused).
        pvc: Claims mounted at `/mnt/pvc/<claim>` in the download and evaluate steps.
        existing_token: A bearer token (e.g. from `kubectl create token`).
        cookies: A logged-in session's `Cookie` header (`"authservice_session=..."`).
        credentials: A `kfp.client.TokenCredentialsBase`, e.g. a notebook pod's projected
            token: `kfp.client.ServiceAccountTokenVolumeCredentials()`.
        ssl_ca_cert: A CA bundle for the server's TLS certificate.
        **parameters: Pipeline parameters, as for `run`.

    Returns:
        The created run (`.url`, `.run_id`, `.wait()`).

    Raises:
        InputError: every bad parameter at once, before the server is contacted.
        CliError: when the server refuses or cannot be reached (a `RuntimeError`).
    """
    from .submit import pipeline_package

    overrides, cron, problems = _submit_problems(
        parameters, schedule, package, pvc, runtime_image, image_registry, host,
        existing_token, credentials, {"experiment": experiment, "namespace": namespace,
                                      "run_name": run_name, "pipeline_name": pipeline_name},
    )
    if problems:
        from ..components.common.errors import InputError

        raise InputError(problems)
    auth = {"existing_token": existing_token or None, "cookies": cookies or None,
            "credentials": credentials, "ssl_ca_cert": ssl_ca_cert}
    if image_registry:
        runtime_image = images.runtime_image(image_registry)
    with pipeline_package(package, pvc=pvc, runtime_image=runtime_image) as path:
        return _upload_and_start(
            path,
            overrides,
            cron,
            host=host,
            experiment=experiment,
            namespace=namespace,
            run_name=run_name,
            pipeline_name=pipeline_name,
            auth=auth,
        )


def _submit_problems(
    parameters: dict[str, Any], schedule: str | None, package: str | Path | None,
    pvc: Sequence[str], runtime_image: str, image_registry: str, host: str,
    existing_token: str | None, credentials: Any, names: dict[str, str],
) -> tuple[dict[str, Any], str | None, list[str]]:
    """(the overridden parameters, KFP's cron, every problem with the call), without the server.

    `names` are the run's own names (experiment, run, pipeline, namespace): the server stores and
    shows them like the parameters, so they are scanned for secrets too.
    """
    from .submit import cron_for_kfp

    problems = secrets.scan_all({**names, "runtime_image": runtime_image, "pvc": list(pvc)})[0]
    try:
        _, overrides = resolve_arguments((), parameters)
    except ValueError as error:
        problems += getattr(error, "problems", [str(error)])
        overrides = {}
    cron = None
    if schedule:
        try:
            cron = cron_for_kfp(schedule)
        except ValueError as error:
            problems += getattr(error, "problems", [str(error)])
    problems += _image_problems(package, runtime_image, image_registry)
    if package is not None and (pvc or runtime_image or image_registry):
        problems.append(
            "`package` cannot be combined with `pvc`, `runtime_image` or `image_registry`: those "
            "compile the pipeline; leave `package` out"
        )
    if package is not None and not Path(package).is_file():
        problems.append(
            f"`package` must be a compiled pipeline YAML, got {str(package)!r} (no such file); "
            "run `kftune compile` or leave it out to compile now"
        )
    elif package is not None:
        problems += _package_problems(Path(package))
    if uris.credential_problems(host, parameter="host"):
        problems.append(
            f"`host` {uris.display_uri(host)!r} carries credentials (user-info before '@' or a "
            "token in the query string), which kfp.Client does not send and kftune never "
            "prints; give the host without them and authenticate with a bearer token, the "
            "service-account token or a session cookie (see `kftune submit --help`)"
        )
    if existing_token and credentials is not None:
        problems.append(
            "`existing_token` and `credentials` are two ways to authenticate: give one "
            "(kfp.Client would silently use the token)"
        )
    return overrides, cron, problems


def _package_problems(package: Path) -> list[str]:
    """Problems with a compiled pipeline the user gives, found before the server is asked."""
    import yaml

    fix = "pass a pipeline YAML written by `kftune compile`, or leave `package` out"
    try:
        with reading(package, parameter="package", fix=fix):
            first = next(iter(yaml.safe_load_all(package.read_text(encoding="utf-8"))), None)
    except InputError as error:
        return error.problems
    if not isinstance(first, dict) or "pipelineInfo" not in first:
        return [f"`package`: {package} is YAML but not a compiled KFP pipeline (no pipelineInfo); "
                f"{fix}"]
    return []


def _image_problems(package: str | Path | None, runtime_image: str,
                    image_registry: str) -> list[str]:
    """A run whose steps name no pullable image would fail only at its first pod: refuse it."""
    problems = images.registry_problems(image_registry, "image_registry") if image_registry else []
    if image_registry and runtime_image:
        problems.append("`image_registry` and `runtime_image` both name the steps' image: give one")
    unset = not (runtime_image or image_registry)
    if package is not None:
        path = Path(package)
        unset = path.is_file() and f"image: {images.RUNTIME_IMAGE}\n" in path.read_text(
            encoding="utf-8", errors="replace")
    if unset:
        problems.append(
            f"the pipeline's steps would run in {images.RUNTIME_IMAGE}, which no registry serves "
            "(kftune publishes no images): build and push them with `kftune images push "
            "--registry REGISTRY`, then give `image_registry` REGISTRY (`--image-registry`), "
            "`runtime_image` IMAGE, or a package from `kftune compile --image-registry REGISTRY`"
        )
    return problems


def _upload_and_start(
    package: Path,
    overrides: dict[str, Any],
    cron: str | None,
    *,
    host: str,
    experiment: str,
    namespace: str,
    run_name: str,
    pipeline_name: str,
    auth: dict[str, Any],
) -> SubmittedRun:
    import warnings

    import kfp
    import kfp_server_api
    import urllib3

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    try:
        _check_access(host, auth)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*only works with Kubeflow Pipeline v2.*")
            client = kfp.Client(host=host, namespace=namespace or None, **auth)
        pipeline_id, version_id = _upload(client, package, pipeline_name, namespace, stamp)
        experiment_id = client.create_experiment(
            name=experiment, namespace=namespace or None
        ).experiment_id
        submitted = SubmittedRun(
            host=host, name=run_name or f"{pipeline_name}-{stamp}", pipeline_id=pipeline_id,
            pipeline_version_id=version_id, experiment_id=experiment_id, client=client,
        )
        return _start(client, submitted, overrides, cron, experiment)
    except (OSError, urllib3.exceptions.HTTPError, kfp_server_api.ApiException) as error:
        raise _refused(host, error) from error


def _upload(
    client: Any, package: Path, pipeline_name: str, namespace: str, stamp: str
) -> tuple[str, str]:
    """Uploads `package`: a new pipeline, or a new version of the one named `pipeline_name`."""
    pipeline_id = client.get_pipeline_id(pipeline_name)
    if pipeline_id is None:
        pipeline = client.upload_pipeline(
            pipeline_package_path=str(package),
            pipeline_name=pipeline_name,
            description="kftune LoRA fine-tuning pipeline",
            namespace=namespace or None,
        )
        versions = client.list_pipeline_versions(pipeline_id=pipeline.pipeline_id, page_size=1)
        print(f"uploaded pipeline {pipeline_name!r} ({pipeline.pipeline_id})")
        return pipeline.pipeline_id, versions.pipeline_versions[0].pipeline_version_id
    version_name = f"{pipeline_name}-{__version__}-{stamp}"
    version = client.upload_pipeline_version(
        pipeline_package_path=str(package),
        pipeline_version_name=version_name,
        pipeline_id=pipeline_id,
    )
    print(f"uploaded version {version_name!r} of pipeline {pipeline_name!r}")
    return pipeline_id, version.pipeline_version_id


def _start(
    client: Any, submitted: SubmittedRun, overrides: dict[str, Any], cron: str | None,
    experiment: str,
) -> SubmittedRun:
    """Creates the run (or with `cron` the recurring run) of the uploaded version."""
    common = {"experiment_id": submitted.experiment_id, "job_name": submitted.name,
              "pipeline_id": submitted.pipeline_id, "version_id": submitted.pipeline_version_id,
              "params": overrides}
    if cron:
        recurring = client.create_recurring_run(cron_expression=cron, enabled=True, **common)
        submitted = dataclasses.replace(
            submitted, recurring_run_id=recurring.recurring_run_id, cron=cron
        )
        print(
            f"created recurring run {submitted.name!r} ({submitted.recurring_run_id}) with "
            f"schedule {cron!r} in experiment {experiment!r}"
        )
        return submitted
    submitted = dataclasses.replace(submitted, run_id=client.run_pipeline(**common).run_id)
    print(f"created run {submitted.name!r} ({submitted.run_id}) in experiment {experiment!r}")
    print(submitted.url)
    return submitted


def _refused(host: str, error: BaseException) -> CliError:
    """The one-line error of a server that refused or could not be reached."""
    # Only the status and reason: the exception's text holds the response headers, which a
    # proxy may fill with session details.
    reason = getattr(error, "reason", None) or str(error).splitlines()[0]
    status = getattr(error, "status", None)
    detail = f"HTTP {status} {reason}" if status else reason
    hint = "check `host` (the KFP API endpoint, e.g. http://localhost:8080) and access"
    if status in (401, 403):
        hint = (
            "the server wants Kubeflow authentication: a bearer token, the service-account "
            "token or a session cookie (see `kftune submit --help`)"
        )
    return CliError(
        f"the KFP server at {uris.display_uri(host)} refused or could not be reached: "
        f"{uris.redact(str(detail))}",
        hint=hint,
    )


def _check_access(host: str, auth: dict[str, Any]) -> None:
    """One authenticated request to the server's health endpoint, as `kfp.Client` will send it.

    `kfp.Client()` itself asks the same endpoint 5 times, 5 s apart, logging each refusal with
    its traceback, before it gives up; this fails at once with the server's answer instead.

    Raises:
        kfp_server_api.ApiException: when the server refuses (401/403 without valid credentials).
    """
    import kfp_server_api

    configuration = kfp_server_api.Configuration(host=host.rstrip("/"))
    if auth.get("ssl_ca_cert"):
        configuration.ssl_ca_cert = auth["ssl_ca_cert"]
    if auth.get("existing_token"):
        configuration.api_key["authorization"] = auth["existing_token"]
        configuration.api_key_prefix["authorization"] = "Bearer"
    elif auth.get("credentials") is not None:
        configuration.api_key["authorization"] = "placeholder"  # the hook replaces it per request
        configuration.api_key_prefix["authorization"] = "Bearer"
        configuration.refresh_api_key_hook = auth["credentials"].refresh_api_key_hook
    api_client = kfp_server_api.ApiClient(configuration, cookie=auth.get("cookies"))
    try:
        kfp_server_api.HealthzServiceApi(api_client).healthz_service_get_healthz()
    finally:
        api_client.close()
