"""The `kftune` command: run the pipeline locally, compile it, submit it to KFP, launch training.

    kftune run [--check] [--param NAME=VALUE ...] [--NAME VALUE ...] [--output-dir DIR]
    kftune compile [--check] [--output-dir DIR]
    kftune submit --host URL [--experiment NAME] [--schedule CRON] [--namespace NS] [--param ...]
    kftune launch ...            (see `kftune launch --help`)
    kftune images build|push --registry REGISTRY   (images.py)

Every pipeline parameter can be set with `--param NAME=VALUE` (VALUE is JSON when it parses as
JSON, else a string; `--param training_parameters.max_steps=20` sets one key of a dict parameter)
or with its own flag, `--training-parameters '{"max_steps": 20}'`. Bad parameters are reported,
all at once, before any step runs. Errors are one line plus a hint; `--debug` shows tracebacks.

The commands live beside this file: parameters.py, run.py, compile.py, submit.py.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from .. import __version__
from ..components.common.errors import InputError
from . import images
from .compile import command_compile
from .errors import CliError
from .parameters import PARAM_HINT, add_parameter_flags
from .run import command_run, configure_logging
from .submit import command_submit


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser = argparse.ArgumentParser(
        prog="kftune",
        description="LoRA fine-tuning on Kubeflow Pipelines: run locally, compile, submit.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"kftune {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    _add_run(commands, common)
    compile_ = commands.add_parser(
        "compile", parents=[common], help="write compiled/ (pipeline and component YAML)"
    )
    compile_.add_argument("--check", action="store_true", help="fail if compiled/ is stale")
    compile_.add_argument("--output-dir", help="default: compiled/ of the kftune checkout")
    compile_.add_argument("--image-registry", default="", metavar="REGISTRY",
                          help="the registry `kftune images push` pushed to (the steps' image)")
    compile_.set_defaults(handler=command_compile)

    _add_submit(commands, common)
    images.add_parser(commands, common)

    launch = commands.add_parser(
        "launch",
        help="run train_lora's launch step directly (see `kftune launch --help`)",
        add_help=False,
    )
    launch.set_defaults(handler=None)
    return parser


def _add_run(commands: Any, common: argparse.ArgumentParser) -> None:
    run = commands.add_parser(
        "run",
        parents=[common],
        help="run the whole pipeline on this machine (kfp.local, local training backend)",
        description="Run download -> train -> evaluate through kfp.local on this machine. With "
        "no parameters: the demo model and data.",
    )
    run.add_argument(
        "--output-dir", help="where the artifacts and summary.json go (default runs/<UTC time>)"
    )
    run.add_argument(
        "--cache",
        action="store_true",
        help="reuse step outputs of earlier runs with the same inputs (cache beside the run)",
    )
    run.add_argument(
        "--check",
        action="store_true",
        help="check every parameter, print the problems or \"all parameters are valid\", and "
        "start nothing",
    )
    add_parameter_flags(run)
    run.set_defaults(handler=command_run)


def _add_submit(commands: Any, common: argparse.ArgumentParser) -> None:
    submit = commands.add_parser(
        "submit", parents=[common], help="upload the pipeline to a KFP server and start a run"
    )
    submit.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://localhost:8080")
    submit.add_argument("--experiment", default="kftune", help="experiment name (default kftune)")
    submit.add_argument(
        "--schedule", help="cron expression: create a recurring run instead of one run"
    )
    submit.add_argument("--namespace", default="", help="Kubeflow profile namespace")
    submit.add_argument("--run-name", default="", help="run name (default <pipeline>-<UTC time>)")
    submit.add_argument(
        "--pipeline-name", default="kftune-lora-finetune", help="name of the uploaded pipeline"
    )
    submit.add_argument("--package", help="a compiled pipeline YAML (default: compile now)")
    submit.add_argument(
        "--runtime-image",
        default="",
        metavar="IMAGE",
        help="run the pipeline's steps in IMAGE instead of kftune's runtime image (a mirror "
        "in a private registry, say); the training pods take `trainer_image`",
    )
    submit.add_argument("--image-registry", default="", metavar="REGISTRY",
                        help="the registry `kftune images push` pushed to (the steps' image)")
    submit.add_argument(
        "--pvc",
        action="append",
        default=[],
        metavar="CLAIM",
        help="mount this PersistentVolumeClaim at /mnt/pvc/CLAIM in the download and evaluate "
        "steps, for pvc://CLAIM/... URIs (repeatable)",
    )
    auth = submit.add_argument_group(
        "authentication (multi-user Kubeflow)",
        "as kfp.Client does; the values are read from files or the pod, never from the command "
        "line, and never printed",
    )
    auth.add_argument(
        "--token-file", metavar="FILE",
        help="a bearer token for the KFP API (kfp.Client's existing_token), e.g. written by "
        "`kubectl create token`",
    )
    auth.add_argument(
        "--service-account-token", nargs="?", const="", default=None, metavar="PATH",
        help="the projected service-account token of this pod (kfp's "
        "ServiceAccountTokenVolumeCredentials; PATH default $KF_PIPELINES_SA_TOKEN_PATH or "
        "/var/run/secrets/kubeflow/pipelines/token)",
    )
    auth.add_argument(
        "--cookie-file", metavar="FILE",
        help="a Cookie header of a logged-in session, e.g. authservice_session=... "
        "(kfp.Client's cookies)",
    )
    add_parameter_flags(submit)
    submit.set_defaults(handler=command_submit)


def main(argv: Sequence[str] | None = None) -> int:
    """The `kftune` console script. Returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "launch":
        from ..components.train_lora.step.cli import launch_main

        return launch_main(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    configure_logging(args.debug)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("kftune: interrupted", file=sys.stderr)
        return 130
    except (CliError, ValueError) as error:
        if args.debug:
            raise
        code = getattr(error, "code", 2 if isinstance(error, ValueError) else 1)
        hint = getattr(error, "hint", "") or (PARAM_HINT if isinstance(error, InputError) else "")
        shown = error.listing() if isinstance(error, InputError) else error
        print(f"kftune {args.command}: error: {shown}", file=sys.stderr)
        if hint:
            print(f"hint: {hint}", file=sys.stderr)
        return code
    except Exception as error:  # one line instead of a traceback, unless --debug
        if args.debug:
            raise
        first = str(error).splitlines()[0] if str(error) else ""
        print(f"kftune {args.command}: error: {type(error).__name__}: {first}", file=sys.stderr)
        print("hint: re-run with --debug for the traceback", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
