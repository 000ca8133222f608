"""The pipeline's parameters on the command line: flags, `--param NAME=VALUE`, and their checks.

Every problem is reported at once, before any step runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from ..components.common import secrets, uris
from ..components.common.errors import InputError, Problems, read_json_file
from ..components.train_lora.config import shown, training_parameters_help

PARAM_HINT = (
    "`kftune run --help` lists the parameters; set one with --param NAME=VALUE (JSON values)"
)

def pipeline_parameters() -> dict[str, tuple[str, Any]]:
    """Pipeline parameter name -> (KFP type name, default), in declaration order."""
    from .lora_finetune import lora_finetune_pipeline

    return {
        name: (spec.type, spec.default)
        for name, spec in lora_finetune_pipeline.component_spec.inputs.items()
    }


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _convert(name: str, kind: str, raw: Any) -> tuple[Any, str | None]:
    """Converts a command-line value to the parameter's type: (value, problem or None).

    A dict or list parameter given as `@FILE` is read from that JSON file.
    """
    if isinstance(raw, str) and kind in ("Dict", "List") and raw.startswith("@"):
        what = "object" if kind == "Dict" else "array"
        try:
            raw = read_json_file(raw[1:], parameter=name, fix=f"write a JSON {what} in it")
        except InputError as error:
            return raw, error.problems[0]
    value = raw
    if isinstance(raw, str) and kind != "String":
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            if kind == "Dict":
                return raw, (
                    f"`{name}` must be a JSON object, got {shown(raw)}; e.g. {_flag(name)} "
                    "'{\"key\": 1}' (quoted for the shell) or @FILE"
                )
            if kind == "List":
                return raw, (
                    f"`{name}` must be a JSON array, got {shown(raw)}; e.g. {_flag(name)} '[]' "
                    "or @FILE"
                )
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
        return raw, f"`{name}` must be {readable}, got {shown(raw)}"
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


@dataclasses.dataclass(frozen=True)
class CheckedRun:
    """A whole run's parameters, checked: the typed values each step is given."""

    arguments: dict[str, Any]
    """Every pipeline argument, defaults filled in."""
    dataset: Any
    """download_dataset's `DatasetSource`."""
    model: Any
    """download_model's `ModelSource`."""
    training: Any
    """train_lora's `launch.Plan`."""
    evaluation: Any
    """evaluate's `EvalConfig`."""
    registry: Any
    """register_model's `RegistryTarget` (its version is the run's name when `model_version` is
    empty)."""
    serving: Any
    """deploy_model's `DeployConfig`."""


# Each step's own names for the pipeline parameters it takes (as its checks name them).
_DATASET_NAMES = {"uri": "dataset_uri", "revision": "dataset_revision",
                  "subset": "dataset_subset", "encoding": "dataset_encoding"}
_MODEL_NAMES = {"uri": "model_uri", "revision": "model_revision"}
_EVAL_NAMES = {"batch_size": "eval_batch_size", "max_examples": "eval_max_examples"}
_REGISTRY_NAMES = {"model_name": "registered_model_name", "version": "model_version"}


def _checked(problems: Problems, names: Mapping[str, str], build: Any) -> Any:
    """`build()`, a step's own check of its slice: its value, or None with its problems added."""
    from ..components.train_lora.step.sources import renamed

    try:
        return build()
    except InputError as error:
        problems.extend(renamed(error.problems, names))
        return None


def check_run(arguments: Mapping[str, Any], *, on_this_host: bool = False) -> CheckedRun:
    """The one check of a whole run, before anything is fetched or created.

    Every step's own check of its slice (the same function its component runs), the rules
    between steps, a secret scan over every string in the parameters, and with `on_this_host`
    what this machine must have (local paths that exist, the local backend's processes and GPUs).

    Args:
        arguments: every pipeline argument (defaults filled in).
        on_this_host: the run happens on this machine (`backend=auto` is local), rather than
            submitted to a cluster (where `auto` is a cluster backend).

    Returns:
        The typed values each step takes.

    Raises:
        InputError: every problem at once, one line each, never quoting a credential.
    """
    from ..components.download_dataset.dataset import DatasetSource
    from ..components.download_model.model import ModelSource
    from ..components.evaluate.evaluation import EvalConfig
    from ..components.register_model.registry import RegistryTarget
    from ..components.train_lora.step.launch import plan
    from ..components.train_lora.step.spec import TrainParameters

    args = dict(arguments)
    problems = Problems()
    found_problems, found = secrets.scan_all(args)
    problems.extend(found_problems)
    dataset = _checked(problems, _DATASET_NAMES, lambda: DatasetSource(
        uri=args["dataset_uri"], split=args["split"], revision=args["dataset_revision"],
        subset=args["dataset_subset"], column_mapping=args["column_mapping"] or {},
        eval_fraction=args["eval_fraction"], eval_split=args["eval_split"], seed=args["seed"],
        encoding=args["dataset_encoding"]))
    if args["eval_fraction"] == 0 and not args["eval_split"]:
        problems.add(
            "`eval_fraction` is 0 and `eval_split` is empty: the evaluate step would have no "
            "held-out rows (after the whole training); set eval_fraction (e.g. 0.1) or "
            "eval_split (e.g. test[:500])"
        )
    model = _checked(problems, _MODEL_NAMES, lambda: ModelSource(
        uri=args["model_uri"], revision=args["model_revision"], task=args["task"],
        trust_remote_code=args["trust_remote_code"]))
    # `auto` picks the backend where the step runs: this machine for `kftune run`, the cluster
    # for a submitted run.
    training = _checked(problems, {"image": "trainer_image"}, lambda: plan(
        TrainParameters.from_pipeline(args), cluster=None if on_this_host else True))
    evaluation = _checked(problems, _EVAL_NAMES, lambda: EvalConfig(
        task=args["task"], batch_size=args["eval_batch_size"],
        max_examples=args["eval_max_examples"]))
    registry = _checked(problems, _REGISTRY_NAMES, lambda: RegistryTarget(
        server_address=args["registry_address"], model_name=args["registered_model_name"],
        version=args["model_version"] or "run")) if args["register"] else None
    serving = _checked(problems, {}, lambda: serving_config(args))
    if args["deploy"]:
        from ..components.deploy_model import deploy

        problems.extend(deploy.task_problems(args["task"], args["serving_kind"],
                                             merged=bool(args["merge"])))
    problems.extend(_benchmark_problems(args, on_this_host=on_this_host))
    if on_this_host:
        problems.extend(_host_problems(args, dataset, model, training))
    messages = secrets.scrub(problems.messages, found)
    if messages:
        raise InputError(messages)
    return CheckedRun(arguments=args, dataset=dataset, model=model, training=training,
                      evaluation=evaluation, registry=registry, serving=serving)


def _benchmark_problems(arguments: Mapping[str, Any], *, on_this_host: bool) -> list[str]:
    """The benchmark step's own check (none when `benchmark_tasks` is empty: no step runs)."""
    from ..components.benchmark.tasks import benchmark_problems

    return benchmark_problems(
        arguments["benchmark_tasks"], num_fewshot=arguments["benchmark_num_fewshot"],
        limit=arguments["benchmark_limit"], batch_size=arguments["benchmark_batch_size"],
        task_source=arguments["benchmark_task_source"], model_task=arguments["task"],
        runs_here=on_this_host, prefix="benchmark_")


def _host_problems(arguments: Mapping[str, Any], dataset: Any, model: Any,
                   training: Any) -> list[str]:
    """What this machine must have for a run here: its local inputs, the local backend's needs."""
    from ..components.train_lora.step.inputs import host_problems

    problems = []
    for name, source in (("dataset_uri", dataset), ("model_uri", model)):
        if source is not None:
            problems += uris.missing_problems(source.location, parameter=name)
    if training is not None and training.target.is_local:
        problems += host_problems(arguments["num_workers"], arguments["num_procs_per_worker"],
                                  arguments["training_parameters"])
    return problems


def validate_arguments(arguments: dict[str, Any], *, on_this_host: bool = False) -> list[str]:
    """The problems `check_run` finds with a full set of pipeline arguments (none: valid)."""
    try:
        check_run(arguments, on_this_host=on_this_host)
    except InputError as error:
        return error.problems
    return []


def serving_config(arguments: Mapping[str, Any]) -> Any:
    """The `deploy.DeployConfig` the pipeline's serving parameters give deploy_model.

    Raises:
        InputError: every problem with them.
    """
    from ..components.deploy_model import deploy

    return deploy.DeployConfig(name=arguments["serving_name"], kind=arguments["serving_kind"],
                               service_account=arguments["serving_service_account"],
                               resources=arguments["serving_resources"])


def parse_arguments(
    pairs: Sequence[str], flags: dict[str, Any] | None = None, *, on_this_host: bool = False
) -> dict[str, Any]:
    """The pipeline arguments given on the command line, typed (validated by `resolve_arguments`).

    `on_this_host` as for `validate_arguments`.

    Raises:
        InputError: when a name is unknown or a value unparsable: those problems and every
            problem of the other parameters, at once.
    """
    arguments, problems = parse_overrides(pairs, flags)
    if problems:
        raise InputError([
            *problems,
            *validate_arguments({**_defaults(), **arguments}, on_this_host=on_this_host),
        ])
    return arguments


def _defaults() -> dict[str, Any]:
    return {name: default for name, (_, default) in pipeline_parameters().items()}


def resolve_arguments(
    pairs: Sequence[str], flags: dict[str, Any] | None = None, *, on_this_host: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(all arguments with defaults filled in, only the overridden ones), validated.

    A parameter that cannot be parsed keeps its default for the other checks, so every problem
    is reported at once.

    Args:
        pairs: `NAME=VALUE` strings, as for `parse_overrides`.
        flags: parameter name -> raw string from its own flag.
        on_this_host: the run happens here (`kftune run`): `backend=auto` is local, and what
            this host can run is checked too; else it is submitted to a cluster.

    Raises:
        InputError: every problem with the overrides, at once.
    """
    overrides, problems = parse_overrides(pairs, flags)
    arguments = {**_defaults(), **overrides}
    problems = [*problems, *validate_arguments(arguments, on_this_host=on_this_host)]
    if problems:
        raise InputError(problems)
    return arguments, overrides


def add_parameter_flags(parser: argparse.ArgumentParser) -> None:
    """Adds `--param` and one flag per pipeline parameter to `parser`."""
    group = parser.add_argument_group(
        "pipeline parameters",
        "each also settable as --param NAME=VALUE; dicts/lists as JSON or @FILE (a JSON file)"
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
        text = json.dumps(default) if not isinstance(default, str) else repr(default)
        described = {"training_parameters": f"{training_parameters_help()} "}.get(name, "")
        from_file = " (or @FILE: a JSON file)" if kind in ("Dict", "List") else ""
        group.add_argument(
            _flag(name),
            dest=f"param__{name}",
            default=None,
            metavar=kind.upper(),
            # argparse formats help with %-style: a literal % must be doubled.
            help=f"{described}default {text}{from_file}".replace("%", "%%"),
        )



def flags_from(namespace: argparse.Namespace) -> dict[str, Any]:
    """Parameter name -> raw value of its own flag, from parsed arguments."""
    return {
        key.removeprefix("param__"): value
        for key, value in vars(namespace).items()
        if key.startswith("param__")
    }
