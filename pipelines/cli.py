"""The `kftune` command: run the pipeline locally, compile it, submit it to KFP, launch training.

    kftune run [--param NAME=VALUE ...] [--NAME VALUE ...] [--output-dir DIR]
    kftune compile [--check] [--output-dir DIR]
    kftune submit --host URL [--experiment NAME] [--schedule CRON] [--namespace NS] [--param ...]
    kftune launch ...            (see `kftune launch --help`)

Every pipeline parameter can be set with `--param NAME=VALUE` (VALUE is JSON when it parses as
JSON, else a string; `--param training_parameters.max_steps=20` sets one key of a dict parameter)
or with its own flag, `--training-parameters '{"max_steps": 20}'`. Bad parameters are reported,
all at once, before any step runs. Errors are one line plus a hint; `--debug` shows tracebacks.
"""

from __future__ import annotations

import argparse
import ast
import collections
import datetime as dt
import difflib
import json
import logging
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kftune import __version__
from kftune.components.common.errors import InputError, Problems
from kftune.components.common.tasks import check_task

logger = logging.getLogger("kftune")

PIPELINE_FILE = "lora_finetune.yaml"
COMPONENTS_DIR = "components"
BACKENDS = ("auto", "local", "kubernetes")
URI_SCHEMES = ("hf", "s3", "gs", "https", "http", "file", "pvc", "pkg")
PARAM_HINT = (
    "`kftune run --help` lists the parameters; set one with --param NAME=VALUE (JSON values)"
)


class CliError(Exception):
    """A failure reported as one line plus a hint, exit code `code`."""

    def __init__(self, message: str, hint: str = "", code: int = 1):
        super().__init__(message)
        self.hint = hint
        self.code = code


# --------------------------------------------------------------------------- parameters


def pipeline_parameters() -> dict[str, tuple[str, Any]]:
    """Pipeline parameter name -> (KFP type name, default), in declaration order."""
    from kftune.pipelines.lora_finetune import lora_finetune_pipeline

    return {
        name: (spec.type, spec.default)
        for name, spec in lora_finetune_pipeline.component_spec.inputs.items()
    }


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _convert(name: str, kind: str, raw: Any) -> tuple[Any, str | None]:
    """Converts a command-line value to the parameter's type: (value, problem or None)."""
    value = raw
    if isinstance(raw, str) and kind != "String":
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            if kind == "Dict":
                return raw, (
                    f"`{name}` must be a JSON object, got {raw!r}; e.g. {_flag(name)} "
                    "'{\"key\": 1}' (quoted for the shell)"
                )
            if kind == "List":
                return raw, f"`{name}` must be a JSON array, got {raw!r}; e.g. {_flag(name)} '[]'"
            if kind == "Boolean" and raw.lower() in ("true", "false"):
                return raw.lower() == "true", None
    expected = {
        "String": (str,),
        "Integer": (int,),
        "Float": (int, float),
        "Boolean": (bool,),
        "Dict": (dict,),
        "List": (list,),
    }[kind]
    bad_bool = isinstance(value, bool) and kind in ("Integer", "Float")
    if not isinstance(value, expected) or bad_bool:
        readable = {"String": "a string", "Integer": "an integer", "Float": "a number",
                    "Boolean": "true or false", "Dict": "a JSON object",
                    "List": "a JSON array"}[kind]
        return raw, f"`{name}` must be {readable}, got {raw!r}"
    if kind == "Float":
        value = float(value)
    return value, None


def _unknown(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    suggestion = f"; did you mean `{close[0]}`?" if close else f"; known: {', '.join(known)}"
    return f"unknown pipeline parameter `{name}`{suggestion}"


def parse_overrides(
    pairs: Sequence[str], flags: dict[str, Any] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """Turns `--param NAME=VALUE` pairs and per-parameter flags into typed pipeline arguments.

    Args:
        pairs: `NAME=VALUE` strings; `NAME.KEY=VALUE` sets one key of a dict parameter (on top of
            its default).
        flags: parameter name -> raw string from its own flag (None when not given).

    Returns:
        (the arguments given, typed; problems).
    """
    parameters = pipeline_parameters()
    arguments: dict[str, Any] = {}
    problems: list[str] = []

    def set_value(name: str, raw: Any) -> None:
        if name not in parameters:
            problems.append(_unknown(name, list(parameters)))
            return
        value, problem = _convert(name, parameters[name][0], raw)
        if problem:
            problems.append(problem)
        else:
            arguments[name] = value

    for name, raw in (flags or {}).items():
        if raw is not None:
            set_value(name, raw)
    for pair in pairs:
        name, separator, raw = pair.partition("=")
        name = name.strip().replace("-", "_")
        if not separator or not name:
            problems.append(f"`--param` must be NAME=VALUE, got {pair!r}; e.g. --param split=train")
            continue
        if "." in name:
            name, _, key = name.partition(".")
            if name not in parameters:
                problems.append(_unknown(name, list(parameters)))
                continue
            if parameters[name][0] != "Dict":
                problems.append(
                    f"`{name}.{key}`: only dict parameters have keys, and `{name}` is a "
                    f"{parameters[name][0]}; use --param {name}=VALUE"
                )
                continue
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
            base = dict(arguments.get(name, parameters[name][1] or {}))
            base[key] = value
            arguments[name] = base
        else:
            set_value(name, raw)
    return arguments, problems


def _check_uri(name: str, uri: str) -> list[str]:
    if not isinstance(uri, str) or not uri.strip():
        return [f"`{name}` must be a URI or path, got {uri!r}; e.g. hf://org/name"]
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", uri)
    if match and match.group(1).lower() not in URI_SCHEMES:
        return [
            f"`{name}` has an unknown scheme {match.group(1)!r} in {uri!r}; use one of "
            + ", ".join(f"{scheme}://" for scheme in URI_SCHEMES)
            + " or a plain path"
        ]
    return []


def validate_arguments(arguments: dict[str, Any]) -> list[str]:
    """Problems with a full set of pipeline arguments, found without running any step."""
    from kftune.components.train_lora.config import (
        validate_lora_config,
        validate_training_parameters,
    )

    problems = Problems()
    problems.extend(check_task(arguments["task"]))
    problems.extend(_check_uri("model_uri", arguments["model_uri"]))
    problems.extend(_check_uri("dataset_uri", arguments["dataset_uri"]))
    for name in ("split", "eval_split"):
        value = arguments[name]
        if name == "eval_split" and not value:
            continue
        try:
            from datasets import ReadInstruction

            ReadInstruction.from_spec(value)
        except (ValueError, TypeError, AssertionError):
            problems.add(
                f"`{name}` must be a split in `datasets` slicing syntax, got {value!r}; e.g. "
                "train, train[:3000], train[10%:20%]"
            )
    if not 0 <= arguments["eval_fraction"] < 1:
        problems.add(
            f"`eval_fraction` must be in [0, 1), got {arguments['eval_fraction']}; e.g. 0.1"
        )
    if arguments["num_workers"] < 1:
        problems.add(f"`num_workers` must be >= 1, got {arguments['num_workers']}")
    procs = str(arguments["num_procs_per_worker"])
    if procs != "auto" and not (procs.isdigit() and int(procs) >= 1):
        problems.add(
            f"`num_procs_per_worker` must be a number >= 1 or \"auto\", got {procs!r}"
        )
    if arguments["backend"] not in BACKENDS:
        problems.add(
            f"`backend` must be one of {', '.join(BACKENDS)}; got {arguments['backend']!r}"
        )
    for name in ("timeout_minutes", "eval_batch_size", "eval_max_examples"):
        if arguments[name] < 1:
            problems.add(f"`{name}` must be >= 1, got {arguments[name]}")
    problems.extend(validate_training_parameters(arguments["training_parameters"],
                                                 arguments["task"]))
    problems.extend(validate_lora_config(arguments["lora_config"]))
    return problems.messages


def resolve_arguments(
    pairs: Sequence[str], flags: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(all arguments with defaults filled in, only the overridden ones), validated.

    Raises:
        InputError: every problem with the overrides, at once.
    """
    overrides, problems = parse_overrides(pairs, flags)
    if problems:
        raise InputError(problems)
    arguments = {name: default for name, (_, default) in pipeline_parameters().items()}
    arguments.update(overrides)
    problems = validate_arguments(arguments)
    if problems:
        raise InputError(problems)
    return arguments, overrides


def _add_parameter_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "pipeline parameters", "each also settable as --param NAME=VALUE; dicts/lists as JSON"
    )
    group.add_argument(
        "--param",
        "-p",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a pipeline parameter (JSON value); NAME.KEY=VALUE sets one key of a dict",
    )
    for name, (kind, default) in pipeline_parameters().items():
        shown = json.dumps(default) if not isinstance(default, str) else repr(default)
        group.add_argument(
            _flag(name),
            dest=f"param__{name}",
            default=None,
            metavar=kind.upper(),
            help=f"default {shown}",
        )


def _flags_from(namespace: argparse.Namespace) -> dict[str, Any]:
    return {
        key.removeprefix("param__"): value
        for key, value in vars(namespace).items()
        if key.startswith("param__")
    }


# --------------------------------------------------------------------------- compile


def default_compiled_dir() -> Path:
    """`compiled/` of the source checkout (editable installs), else `./compiled`."""
    import kftune

    root = Path(kftune.__file__).resolve().parent
    if (root / "pyproject.toml").is_file():
        return root / "compiled"
    return Path.cwd() / "compiled"


def compile_targets() -> dict[str, Any]:
    """Relative output path -> pipeline or component to compile into it."""
    from kftune.components.download_dataset.component import download_dataset
    from kftune.components.download_model.component import download_model
    from kftune.components.evaluate.component import evaluate
    from kftune.components.train_lora.component import train_lora
    from kftune.pipelines.lora_finetune import lora_finetune_pipeline

    targets: dict[str, Any] = {PIPELINE_FILE: lora_finetune_pipeline}
    for name, component in (
        ("download_dataset", download_dataset),
        ("download_model", download_model),
        ("train_lora", train_lora),
        ("evaluate", evaluate),
    ):
        targets[f"{COMPONENTS_DIR}/{name}.yaml"] = component
    return targets


_DEFAULT_COMMENT = re.compile(r"^(#    \w+: (?:dict|list) \[Default: )(.*)(\])$", re.MULTILINE)


def _sorted_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _sorted_keys(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted_keys(item) for item in value]
    return value


def _stable_header(text: str) -> str:
    """Prints the dict defaults of KFP's header comment with sorted keys.

    KFP prints them in protobuf map order, which changes from one process to the next.
    """

    def render(match: re.Match[str]) -> str:
        try:
            value = ast.literal_eval(match.group(2))
        except (ValueError, SyntaxError):
            return match.group(0)
        return f"{match.group(1)}{_sorted_keys(value)}{match.group(3)}"

    return _DEFAULT_COMMENT.sub(render, text)


def compile_all() -> dict[str, bytes]:
    """Relative output path -> compiled YAML bytes (deterministic)."""
    from kfp import compiler

    compiled: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="kftune-compile-") as scratch:
        for relative, target in compile_targets().items():
            path = Path(scratch) / relative.replace("/", "_")
            compiler.Compiler().compile(target, str(path))
            compiled[relative] = _stable_header(path.read_text()).encode()
    return compiled


def stale_files(directory: Path) -> list[str]:
    """Compiled files under `directory` that are missing or differ from a fresh compile."""
    stale = []
    for relative, content in compile_all().items():
        path = directory / relative
        if not path.is_file() or path.read_bytes() != content:
            stale.append(str(path))
    return stale


def command_compile(args: argparse.Namespace) -> int:
    """`kftune compile [--check]`."""
    directory = Path(args.output_dir) if args.output_dir else default_compiled_dir()
    if args.check:
        stale = stale_files(directory)
        if stale:
            raise CliError(
                f"compiled YAML is stale or missing: {', '.join(stale)}",
                hint="run `kftune compile` and commit the result",
            )
        print(f"compiled YAML in {directory} is up to date")
        return 0
    for relative, content in compile_all().items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_bytes() != content:
            path.write_bytes(content)
            print(f"wrote {path}")
        else:
            print(f"unchanged {path}")
    return 0


# --------------------------------------------------------------------------- run


def _configure_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not debug:
        # kfp.local's notes that Kubernetes settings and the image are not used on this machine:
        # expected for a local run, which uses this Python environment instead of the image.
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        warnings.filterwarnings("ignore", message=".*only works with Kubeflow Pipeline v2.*")


def _train_seconds(adapter_dir: Path) -> float | None:
    path = adapter_dir / "metrics.json"
    try:
        value = json.loads(path.read_text()).get("runtime_seconds")
    except (OSError, ValueError):
        return None
    return float(value) if isinstance(value, int | float) else None


def summarize(
    metrics: dict[str, Any], adapter_dir: Path, report: Path | None, wall_seconds: float
) -> dict[str, Any]:
    """The run summary: base vs fine-tuned metrics side by side, timings and locations."""
    base = {key[len("base_"):]: value for key, value in metrics.items() if key.startswith("base_")}
    tuned = {
        key[len("tuned_"):]: value for key, value in metrics.items() if key.startswith("tuned_")
    }
    if "accuracy" in tuned:
        primary, higher_is_better = "accuracy", True
    elif "perplexity" in tuned:
        primary, higher_is_better = "perplexity", False
    else:
        primary, higher_is_better = next(iter(tuned), ""), True
    improved = None
    if primary in base and primary in tuned:
        delta = tuned[primary] - base[primary]
        improved = delta > 0 if higher_is_better else delta < 0
    return {
        "primary_metric": primary,
        "higher_is_better": higher_is_better,
        "base": base,
        "tuned": tuned,
        "improved": improved,
        "train_seconds": _train_seconds(adapter_dir),
        "wall_seconds": round(wall_seconds, 1),
        "adapter_dir": str(adapter_dir),
        "report": str(report) if report else None,
    }


def format_table(summary: dict[str, Any]) -> str:
    """A short table for the end of `kftune run`."""
    rows = [("metric", "base", "fine-tuned")]
    headline = [summary["primary_metric"]] + [
        name
        for name in ("macro_f1", "eval_loss")
        if name in summary["tuned"] and name != summary["primary_metric"]
    ]
    for name in headline:
        if name in summary["base"] and name in summary["tuned"]:
            rows.append((name, f"{summary['base'][name]:.4f}", f"{summary['tuned'][name]:.4f}"))
    width = [max(len(row[column]) for row in rows) for column in range(3)]
    lines = ["  ".join(cell.ljust(width[i]) for i, cell in enumerate(row)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in width))
    train = summary["train_seconds"]
    lines.append("")
    lines.append(f"train time : {train:.1f} s" if train is not None else "train time : n/a")
    lines.append(f"total time : {summary['wall_seconds']:.1f} s")
    lines.append(f"adapter    : {summary['adapter_dir']}")
    if summary.get("report"):
        lines.append(f"report     : {summary['report']}")
    return "\n".join(lines)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXCEPTION_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(\w+(?:Error|Exception)): (.*)$")


def _strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


class _OutputTail:
    """Passes writes through to `stream` and keeps the last lines, to quote a step's error.

    kfp.local prints each step's output to stdout; when a step fails, its exception is the last
    "SomethingError: message" line there.
    """

    def __init__(self, stream: Any, keep: int = 400) -> None:
        self.stream = stream
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)
        self._partial = ""

    def write(self, text: str) -> int:
        self._partial += text
        *complete, self._partial = self._partial.split("\n")
        self.lines.extend(complete)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)

    def last_error(self) -> str:
        """`Type: message` of the last exception line (with its "  - ..." problem lines)."""
        lines = [_strip_ansi(line) for line in self.lines]
        for index in range(len(lines) - 1, -1, -1):
            match = _EXCEPTION_LINE.match(lines[index])
            if match:
                detail = [f"{match.group(1)}: {match.group(2)}"]
                for following in lines[index + 1 :]:
                    if not following.strip().startswith("- "):
                        break
                    detail.append(following.strip())
                return " ".join(detail)
        return ""


def _default_output_dir() -> Path:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / stamp


def command_run(args: argparse.Namespace) -> int:
    """`kftune run`: the whole pipeline through kfp.local on this machine."""
    arguments, overrides = resolve_arguments(args.param, _flags_from(args))
    output_dir = Path(args.output_dir) if args.output_dir else _default_output_dir()
    output_dir = output_dir.resolve()
    output_dir.mkdir(parents=True, exist_ok=True)

    from kfp import local
    from kftune.pipelines.lora_finetune import make_pipeline

    logger.info("kftune %s: running the LoRA fine-tuning pipeline locally", __version__)
    logger.info("Output directory: %s", output_dir)
    for name, value in overrides.items():
        logger.info("Parameter %s = %s", name, json.dumps(value))
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(output_dir / "artifacts"),
        workspace_root=str(output_dir / "workspace"),
        raise_on_error=True,
        enable_caching=args.cache,
        cache_root=str(output_dir.parent / ".kfp-cache") if args.cache else None,
    )
    (output_dir / "workspace").mkdir(exist_ok=True)
    pipeline = make_pipeline(download_retries=0)
    started = time.monotonic()
    tail = _OutputTail(sys.stdout)
    sys.stdout = tail
    try:
        task = pipeline(**overrides)
    except RuntimeError as error:
        message = _strip_ansi(str(error).splitlines()[0])
        failed_step = re.search(r"Inner task failed: '([^']+)'", message)
        step_error = tail.last_error()
        if failed_step and step_error:
            message = f"step {failed_step.group(1)!r} failed: {step_error}"
        raise CliError(
            f"the pipeline failed: {message}",
            hint=f"the failing step's log is above; its files are under {output_dir}",
        ) from error
    finally:
        sys.stdout = tail.stream
    wall = time.monotonic() - started
    outputs = task.outputs
    summary = summarize(
        dict(outputs["metrics"].metadata),
        Path(outputs["adapter"].path),
        Path(outputs["report"].path),
        wall,
    )
    summary = {
        "kftune_version": __version__,
        "output_dir": str(output_dir),
        "arguments": arguments,
        **summary,
    }
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print()
    print(format_table(summary))
    print(f"summary    : {output_dir / 'summary.json'}")
    return 0


# --------------------------------------------------------------------------- submit


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
    _, overrides = resolve_arguments(args.param, _flags_from(args))
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
            from kftune.pipelines.lora_finetune import make_pipeline

            compiler.Compiler().compile(make_pipeline(pvc_claims=args.pvc), str(package))
        else:
            package.write_bytes(compile_all()[PIPELINE_FILE])
        if args.runtime_image:
            from kftune.components.common.images import RUNTIME_IMAGE

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


# --------------------------------------------------------------------------- entry point


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
    _add_parameter_flags(run)
    run.set_defaults(handler=command_run)

    compile_ = commands.add_parser(
        "compile", parents=[common], help="write compiled/ (pipeline and component YAML)"
    )
    compile_.add_argument("--check", action="store_true", help="fail if compiled/ is stale")
    compile_.add_argument("--output-dir", help="default: compiled/ of the kftune checkout")
    compile_.set_defaults(handler=command_compile)

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
    submit.add_argument(
        "--pvc",
        action="append",
        default=[],
        metavar="CLAIM",
        help="mount this PersistentVolumeClaim at /mnt/pvc/CLAIM in the download and evaluate "
        "steps, for pvc://CLAIM/... URIs (repeatable)",
    )
    _add_parameter_flags(submit)
    submit.set_defaults(handler=command_submit)

    launch = commands.add_parser(
        "launch",
        help="run train_lora's launch step directly (see `kftune launch --help`)",
        add_help=False,
    )
    launch.set_defaults(handler=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The `kftune` console script. Returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "launch":
        from kftune.components.train_lora.cli import launch_main

        return launch_main(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    _configure_logging(args.debug)
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
        print(f"kftune {args.command}: error: {error}", file=sys.stderr)
        if hint:
            print(f"hint: {hint}", file=sys.stderr)
        return code
    except Exception as error:  # noqa: BLE001 (one line instead of a traceback, unless --debug)
        if args.debug:
            raise
        first = str(error).splitlines()[0] if str(error) else ""
        print(f"kftune {args.command}: error: {type(error).__name__}: {first}", file=sys.stderr)
        print("hint: re-run with --debug for the traceback", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
