"""`kftune submit`: upload the compiled pipeline to a KFP server and start a (recurring) run."""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
from pathlib import Path
from typing import Any

from .. import __version__
from ..components.common.errors import InputError
from .compile import PIPELINE_FILE, compile_all
from .errors import CliError
from .parameters import flags_from, resolve_arguments


def cron_for_kfp(schedule: str) -> str:
    """KFP cron has a leading seconds field: `*/5 * * * *` -> `0 */5 * * * *`.

    Raises:
        InputError: when `schedule` is not a 5- or 6-field cron expression.
    """
    fields = schedule.split()
    if len(fields) == 5:
        return "0 " + " ".join(fields)
    if len(fields) == 6:
        return " ".join(fields)
    raise InputError(
        [
            f"`--schedule` must be a cron expression of 5 fields (minute hour day month weekday) "
            f"or 6 (with seconds first), got {schedule!r}; e.g. '0 3 * * *' for 03:00 daily"
        ]
    )


def command_submit(args: argparse.Namespace) -> int:
    """`kftune submit`: upload the compiled pipeline and start a run or a recurring run."""
    _, overrides = resolve_arguments(args.param, flags_from(args))
    cron = cron_for_kfp(args.schedule) if args.schedule else None
    if args.package and (args.pvc or args.runtime_image):
        raise CliError(
            "`--package` cannot be combined with `--pvc` or `--runtime-image`: those compile "
            "the pipeline",
            hint="leave --package out",
            code=2,
        )
    if args.package:
        package = Path(args.package)
        if not package.is_file():
            raise CliError(
                f"`--package` must be a compiled pipeline YAML, got {str(package)!r} (no such "
                "file)",
                hint="run `kftune compile` or leave --package out to compile now",
                code=2,
            )
        return _submit(args, package, overrides, cron)
    with tempfile.TemporaryDirectory(prefix="kftune-submit-") as scratch:
        package = Path(scratch) / PIPELINE_FILE
        if args.pvc:
            from kfp import compiler

            from .lora_finetune import make_pipeline

            compiler.Compiler().compile(make_pipeline(pvc_claims=args.pvc), str(package))
        else:
            package.write_bytes(compile_all()[PIPELINE_FILE])
        if args.runtime_image:
            from ..components.common.images import RUNTIME_IMAGE

            text = package.read_text()
            package.write_text(
                text.replace(f"image: {RUNTIME_IMAGE}\n", f"image: {args.runtime_image}\n")
            )
        return _submit(args, package, overrides, cron)


def _submit(
    args: argparse.Namespace, package: Path, overrides: dict[str, Any], cron: str | None
) -> int:
    import kfp
    import kfp_server_api
    import urllib3

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    try:
        client = kfp.Client(host=args.host, namespace=args.namespace or None)
        pipeline_id = client.get_pipeline_id(args.pipeline_name)
        version_name = f"{args.pipeline_name}-{__version__}-{stamp}"
        if pipeline_id is None:
            pipeline = client.upload_pipeline(
                pipeline_package_path=str(package),
                pipeline_name=args.pipeline_name,
                description="kftune LoRA fine-tuning pipeline",
                namespace=args.namespace or None,
            )
            pipeline_id = pipeline.pipeline_id
            versions = client.list_pipeline_versions(pipeline_id=pipeline_id, page_size=1)
            version_id = versions.pipeline_versions[0].pipeline_version_id
            print(f"uploaded pipeline {args.pipeline_name!r} ({pipeline_id})")
        else:
            version = client.upload_pipeline_version(
                pipeline_package_path=str(package),
                pipeline_version_name=version_name,
                pipeline_id=pipeline_id,
            )
            version_id = version.pipeline_version_id
            print(f"uploaded version {version_name!r} of pipeline {args.pipeline_name!r}")
        experiment = client.create_experiment(
            name=args.experiment, namespace=args.namespace or None
        )
        experiment_id = experiment.experiment_id
        job_name = args.run_name or f"{args.pipeline_name}-{stamp}"
        if cron:
            recurring = client.create_recurring_run(
                experiment_id=experiment_id,
                job_name=job_name,
                cron_expression=cron,
                pipeline_id=pipeline_id,
                version_id=version_id,
                params=overrides,
                enabled=True,
            )
            print(
                f"created recurring run {job_name!r} ({recurring.recurring_run_id}) with schedule "
                f"{cron!r} in experiment {args.experiment!r}"
            )
        else:
            run = client.run_pipeline(
                experiment_id=experiment_id,
                job_name=job_name,
                pipeline_id=pipeline_id,
                version_id=version_id,
                params=overrides,
            )
            print(f"created run {job_name!r} ({run.run_id}) in experiment {args.experiment!r}")
            print(f"{args.host.rstrip('/')}/#/runs/details/{run.run_id}")
    except (OSError, urllib3.exceptions.HTTPError, kfp_server_api.ApiException) as error:
        reason = getattr(error, "reason", None) or str(error).splitlines()[0]
        status = getattr(error, "status", None)
        detail = f"HTTP {status} {reason}" if status else reason
        raise CliError(
            f"the KFP server at {args.host} refused or could not be reached: {detail}",
            hint="check --host (the KFP API endpoint, e.g. http://localhost:8080) and access",
        ) from error
    return 0
