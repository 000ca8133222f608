"""`kftune submit`: upload the compiled pipeline to a KFP server and start a (recurring) run."""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..components.common.errors import InputError
from .compile import PIPELINE_FILE, compile_all
from .parameters import flags_from, parse_arguments


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


@contextlib.contextmanager
def pipeline_package(
    package: str | Path | None, *, pvc: Sequence[str] = (), runtime_image: str = ""
) -> Iterator[Path]:
    """The compiled pipeline to upload: `package` as given, or compiled now into a scratch file.

    Args:
        package: a compiled pipeline YAML, or None to compile.
        pvc: claims to mount in the download and evaluate steps (compiles the pipeline anew).
        runtime_image: the image the steps run in, instead of kftune's runtime image.
    """
    if package is not None:
        yield Path(package)
        return
    with tempfile.TemporaryDirectory(prefix="kftune-submit-") as scratch:
        path = Path(scratch) / PIPELINE_FILE
        if pvc:
            from kfp import compiler

            from .lora_finetune import make_pipeline

            compiler.Compiler().compile(make_pipeline(pvc_claims=list(pvc)), str(path))
        else:
            path.write_bytes(compile_all(only=(PIPELINE_FILE,))[PIPELINE_FILE])
        if runtime_image:
            from ..components.common.images import RUNTIME_IMAGE

            text = path.read_text()
            path.write_text(text.replace(f"image: {RUNTIME_IMAGE}\n", f"image: {runtime_image}\n"))
        yield path


def _read_secret_file(flag: str, path: str) -> str:
    """The first line of a token or cookie file (its content is never shown)."""
    try:
        value = Path(path).read_text().strip()
    except OSError as error:
        raise InputError(
            [f"`{flag}` must be a readable file, got {path!r} ({error.strerror or error})"]
        ) from None
    if not value:
        raise InputError([f"`{flag}` must name a file holding the value, got {path!r} (empty)"])
    return value


def command_submit(args: argparse.Namespace) -> int:
    """`kftune submit`: the command-line syntax of `kftune.submit(...)`."""
    from .api import submit

    credentials = None
    if args.service_account_token is not None:
        from kfp.client import ServiceAccountTokenVolumeCredentials

        credentials = ServiceAccountTokenVolumeCredentials(args.service_account_token or None)
    submit(
        host=args.host,
        experiment=args.experiment,
        namespace=args.namespace,
        schedule=args.schedule,
        run_name=args.run_name,
        pipeline_name=args.pipeline_name,
        package=args.package,
        runtime_image=args.runtime_image,
        image_registry=args.image_registry,
        pvc=args.pvc,
        existing_token=_read_secret_file("--token-file", args.token_file)
        if args.token_file
        else None,
        cookies=_read_secret_file("--cookie-file", args.cookie_file) if args.cookie_file else None,
        credentials=credentials,
        **parse_arguments(args.param, flags_from(args)),
    )
    return 0
