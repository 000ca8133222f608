r"""`kftune launch`: the PyTorchJob or TrainJob of a training run, printed or submitted.

The flags are named after the reference's `TrainingClient.train(...)` parameters::

    kftune launch --dry-run --task sequence-classification \
        --model-uri s3://bucket/models/bert --dataset-uri s3://bucket/data/yelp \
        --output-uri s3://bucket/adapters/bert-yelp \
        --num-workers 4 --num-procs-per-worker 2 \
        --resources-per-worker '{"gpu": 2, "cpu": 5, "memory": "10G"}' \
        --training-parameters '{"learning_rate": 2e-5}' \
        --lora-config '{"r": 8, "lora_alpha": 8, "lora_dropout": 0.1}' | kubectl apply -f -

Instead of artifacts, the job can start from sources, which every pod fetches itself with the
download components' code (one process per pod, onto its node-local disk)::

    kftune launch --dry-run --task sequence-classification \
        --model-source hf://google-bert/bert-base-cased \
        --dataset-source hf://yelp_review_full --split 'train[:3000]' \
        --output-uri s3://bucket/adapters/bert-yelp --secret-env HF_TOKEN=hf-token:token ...

`--backend trainjob` makes it a Kubeflow Trainer v2 TrainJob (on `--runtime`, default
`torch-distributed`) instead of a Training Operator v1 PyTorchJob; `--backend auto` asks the
cluster which it serves. Without `--dry-run` the job is created with the current kubeconfig and
followed to its end (node 0's log streams to stderr). Bad input prints one line and exits with
status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from ...common.errors import InputError, read_json_file
from ...common.images import TRAINER_IMAGE, unset_image_problems
from ..config import shown
from .spec import TrainParameters

# `kftune launch` builds a Kubernetes job: PyTorchJob unless told otherwise, so that `--dry-run`
# needs no cluster to ask (`auto` asks it which kind it serves).
LAUNCH_BACKENDS = ("kubernetes", "trainjob", "auto")
LAUNCH_BACKEND = "kubernetes"
# `kftune launch` has no local backend (its --backend choices all need a cluster): this is its way.
NO_CLUSTER_FIX = "train on this machine with `kftune run` (its `local` training backend)"
# Help beyond the parameters' one-line docs, for the flags that need it.
FLAG_HELP = {
    "backend": "kubernetes: a PyTorchJob (Training Operator v1); trainjob: a TrainJob (Kubeflow "
    "Trainer v2); auto: whichever the cluster serves (TrainJob first)",
    "num_workers": "pods: Master 1 + Worker n-1",
    "num_procs_per_worker": "processes per pod, or auto",
}
# kubernetes_options has a flag per option instead (--service-account, --env, ...).
OWN_FLAGS = ("kubernetes_options",)


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would exit; we report one line instead
        raise _UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kftune launch",
        description="Print (--dry-run) or run the PyTorchJob or TrainJob of a LoRA fine-tuning "
        "run.",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the YAML, create nothing")
    _add_parameter_flags(parser)
    parser.add_argument("--runtime", default="",
                        help="the TrainJob's ClusterTrainingRuntime; default torch-distributed")
    parser.add_argument("--model-uri", default="",
                        help="the Model artifact (s3://, gs://, ...); or give --model-source")
    parser.add_argument("--dataset-uri", default="",
                        help="the Dataset artifact; or give --dataset-source")
    sources = parser.add_argument_group(
        "sources", "instead of artifacts: each pod fetches these itself, as download_model and "
        "download_dataset do (split, column mapping, label encoding), onto its node-local disk")
    sources.add_argument("--model-source", default="", metavar="URI",
                         help="hf://org/name[@revision], s3://, gs://, pvc://claim/path")
    sources.add_argument("--model-revision", default="", help="Hub revision of the model")
    sources.add_argument("--trust-remote-code", action="store_true",
                         help="allow the model repository's own code")
    sources.add_argument("--dataset-source", default="", metavar="URI",
                         help="hf://org/name, s3://, gs://, https://, pvc://claim/path")
    sources.add_argument("--split", default=None, help="rows, e.g. train[:3000] (default train)")
    sources.add_argument("--subset", default=None, help="the dataset configuration name")
    sources.add_argument("--dataset-revision", default=None, help="Hub revision of the dataset")
    sources.add_argument("--column-mapping", default=None,
                         help='JSON role -> column, e.g. \'{"text": "review", "label": "stars"}\'')
    sources.add_argument("--num-labels", type=int, default=None,
                         help="sequence-classification: the label count the rows must have "
                         "(default: counted)")
    parser.add_argument("--output-uri", required=True, help="where node rank 0 uploads the adapter")
    parser.add_argument("--name", "--job-name", dest="job_name", default="",
                        help="job name; default: derived from --output-uri")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--merge", action="store_true", help="also write merged full weights")
    parser.add_argument("--service-account", default="")
    parser.add_argument("--node-selector", default="{}", help="JSON label -> value")
    parser.add_argument("--tolerations", default="[]", help="JSON list of tolerations")
    parser.add_argument("--priority-class", default="")
    parser.add_argument("--queue-name", default="", help="Kueue LocalQueue")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--secret-env", action="append", default=[], metavar="NAME=SECRET:KEY",
                        help="environment from a Secret key (as secretKeyRef)")
    parser.add_argument("--elastic-policy", default="{}",
                        help='JSON {"min_nodes", "max_nodes", "max_restarts"}')
    parser.add_argument("--clean-pod-policy", default=None, help="None, Running (default) or All")
    parser.add_argument("--backoff-limit", type=int, default=None)
    parser.add_argument("--ttl-seconds-after-finished", type=int, default=None,
                        help="PyTorchJob only; default 3600")
    parser.add_argument("--pvc", default="", help="an existing claim to stage inputs on")
    return parser


def _flag(field: dataclasses.Field) -> str:
    return "--" + field.name.replace("_", "-")


def _add_parameter_flags(parser: argparse.ArgumentParser) -> None:
    """A flag per train step parameter (`TrainParameters`), with its default and doc."""
    for field in dataclasses.fields(TrainParameters):
        if field.name in OWN_FLAGS:
            continue
        help_text = FLAG_HELP.get(field.name, field.metadata["doc"])
        options: dict[str, Any] = {"default": field.default}
        if field.type == "dict":
            options = {"default": "{}", "metavar": "JSON"}
            help_text += " As JSON, or @FILE."
        elif field.type == "int":
            options["type"] = int
        if field.name == "backend":
            options.update(default=LAUNCH_BACKEND, choices=LAUNCH_BACKENDS)
        elif field.name == "image":
            options["default"] = TRAINER_IMAGE
        parser.add_argument(_flag(field), **options, help=help_text.replace("%", "%%"))


def _parameters(args: argparse.Namespace, options: dict[str, Any],
                problems: list[str]) -> TrainParameters:
    """The train step's parameters from the flags; JSON that does not parse is a problem."""
    values: dict[str, Any] = {"kubernetes_options": options}
    for field in dataclasses.fields(TrainParameters):
        if field.name in OWN_FLAGS:
            continue
        value = getattr(args, field.name)
        if field.type == "dict":
            value = _json(_flag(field), value, problems)
            value = value if value is not None else {}
        values[field.name] = value
    return TrainParameters(**values)


def _json(flag: str, text: str, problems: list[str]) -> Any:
    """The JSON value of a flag: its text, or with `@FILE` the content of that file."""
    if text.startswith("@"):
        try:
            return read_json_file(text[1:], parameter=flag, fix="write JSON in it")
        except InputError as error:
            problems.extend(error.problems)
            return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        problems.append(f"`{flag}` must be JSON, got {shown(text)} ({error.msg})")
        return None


def _pairs(flag: str, items: Sequence[str], problems: list[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            problems.append(f"`{flag}` must be NAME=VALUE, got {item.split('=')[0]!r}=...")
            continue
        pairs[name] = value
    return pairs


def _options(args: argparse.Namespace, problems: list[str]) -> dict[str, Any]:
    """The `kubernetes_options` the flags set (flags left at their default are not given)."""
    options: dict[str, Any] = {
        "namespace": args.namespace,
        "service_account": args.service_account,
        "node_selector": _json("--node-selector", args.node_selector, problems),
        "tolerations": _json("--tolerations", args.tolerations, problems),
        "priority_class": args.priority_class,
        "queue_name": args.queue_name,
        "env": _pairs("--env", args.env, problems),
        "secret_env": _pairs("--secret-env", args.secret_env, problems),
        "elastic_policy": _json("--elastic-policy", args.elastic_policy, problems),
        "clean_pod_policy": args.clean_pod_policy,
        "backoff_limit": args.backoff_limit,
        "ttl_seconds_after_finished": args.ttl_seconds_after_finished,
        "pvc": args.pvc or None,
        "job_name": args.job_name,
        "runtime": args.runtime,
    }
    # An option the user did not set is not "given": a backend that lacks it does not refuse it.
    return {key: value for key, value in options.items() if value not in (None, "", {}, [])}


def _pod_inputs(
    args: argparse.Namespace, options: dict[str, Any], problems: list[str]
) -> tuple[Any, dict[str, str]]:
    """The pods' inputs (artifacts or sources) and the artifact URIs for the launch's checks.

    Source problems (settings, and what the pods cannot read) are added to `problems`.
    """
    from . import job as job_lib
    from . import sources

    artifact_uris = {"--output-uri": args.output_uri}
    for artifact, source in (("--model-uri", "--model-source"),
                             ("--dataset-uri", "--dataset-source")):
        given = [flag for flag in (artifact, source)
                 if getattr(args, flag[2:].replace("-", "_"))]
        if len(given) != 1:
            problems.append(
                f"give one of `{artifact}` (a kftune artifact) and `{source}` (a source the pods "
                f"fetch), got {'both' if given else 'neither'}"
            )
    data_flags = {"--split": args.split, "--subset": args.subset,
                  "--dataset-revision": args.dataset_revision,
                  "--column-mapping": args.column_mapping, "--num-labels": args.num_labels}
    model_flags = {"--model-revision": args.model_revision,
                   "--trust-remote-code": args.trust_remote_code}
    for flags, source in ((model_flags, args.model_source), (data_flags, args.dataset_source)):
        stray = [flag for flag, value in flags.items() if value not in (None, "", False)]
        if stray and not source:
            problems.append(f"`{', '.join(stray)}` {'apply' if stray[1:] else 'applies'} to a "
                            "source: give "
                            f"`{'--model-source' if flags is model_flags else '--dataset-source'}`")
    if args.num_labels is not None and args.task != "sequence-classification":
        problems.append(f"`--num-labels` applies to `--task sequence-classification`, got "
                        f"`--task` {args.task!r}; remove `--num-labels`")
    model_source = data_source = None
    reach: dict[str, str] = {}
    if args.model_source:
        model_source, found = sources.model_source(
            args.model_source, revision=args.model_revision, task=args.task,
            trust_remote_code=args.trust_remote_code)
        problems += sources.renamed(found, {"uri": "--model-source", "revision": "--model-revision",
                                            "task": "--task"})
        reach["--model-source"] = args.model_source
    elif args.model_uri:
        artifact_uris["--model-uri"] = args.model_uri
    if args.dataset_source:
        mapping = _json("--column-mapping", args.column_mapping, problems) if (
            args.column_mapping) else {}
        data_source, found = sources.data_source(
            args.dataset_source, split=args.split or "train", subset=args.subset or "",
            revision=args.dataset_revision or "", column_mapping=mapping or {},
            num_labels=args.num_labels)
        problems += sources.renamed(found, {
            "uri": "--dataset-source", "split": "--split", "subset": "--subset",
            "revision": "--dataset-revision", "column_mapping": "--column-mapping",
            "num_labels": "--num-labels"})
        reach["--dataset-source"] = args.dataset_source
    elif args.dataset_uri:
        artifact_uris["--dataset-uri"] = args.dataset_uri
    if reach:
        pvc = options.get("pvc")
        problems += sources.pod_reach_problems(reach, {}, pvc if isinstance(pvc, str) else "")
    io = job_lib.PodIO(
        model_uri=args.model_source or args.model_uri,
        data_uri=args.dataset_source or args.dataset_uri,
        output_uri=args.output_uri,
        model_source=model_source,
        data_source=data_source,
    )
    return io, artifact_uris


def build_from_args(args: argparse.Namespace, api_client: Any = None) -> tuple[dict, Any, Any]:
    """The job manifest for parsed flags, the job, and the backend that creates it.

    Raises:
        InputError: listing every bad flag.
    """
    from . import job as job_lib
    from . import launch
    from .backends.cluster_training import ClusterTraining

    problems: list[str] = []
    # The order the problems are reported in: the JSON flags first.
    parameters = _parameters(args, {}, problems)
    options = _options(args, problems)
    io, artifact_uris = _pod_inputs(args, options, problems)
    plan = launch.plan(
        parameters.replace(kubernetes_options=options),
        cluster=True,
        merge=args.merge,
        uris=artifact_uris,
        extra_problems=tuple(problems),
    )
    backend = ClusterTraining(plan.target, api_client, no_cluster_fix=NO_CLUSTER_FIX)
    request = job_lib.request(plan.spec, plan.options, io, namespace=args.namespace)
    return backend.manifest(request, check_runtime=False), request, backend


def launch_main(argv: Sequence[str], api_client: Any = None) -> int:
    """`kftune launch [flags]`; returns the exit status (0 ok, 1 training failed, 2 bad input)."""
    try:
        args = _parser().parse_args(list(argv))
        manifest, request, backend = build_from_args(args, api_client)
    except _UsageError as error:
        print(f"kftune launch: error: {error}", file=sys.stderr)
        return 2
    except InputError as error:
        print(f"kftune launch: error: {'; '.join(error.problems)}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # discovery could not pick a kind
        print(f"kftune launch: {error}", file=sys.stderr)
        return 1
    unset = unset_image_problems(args.image, "--image")
    if args.dry_run:
        import yaml

        sys.stdout.write(yaml.safe_dump(manifest, sort_keys=False, default_flow_style=False))
        for problem in unset:  # printed all the same: the job is for reading, or for editing
            print(f"kftune launch: warning: this manifest cannot be applied as is: {problem}",
                  file=sys.stderr)
        return 0
    if unset:  # the pods could not pull their image: create nothing
        print(f"kftune launch: error: {'; '.join(unset)}", file=sys.stderr)
        return 2
    return _submit(backend, request, manifest)


def _submit(backend: Any, request: Any, manifest: dict[str, Any]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        backend.run(request, manifest)
    except InputError as error:
        print(f"kftune launch: error: {'; '.join(error.problems)}", file=sys.stderr)
        return 2
    except (RuntimeError, TimeoutError) as error:
        print(f"kftune launch: {error}", file=sys.stderr)
        return 1
    return 0


def main() -> None:
    """Entry point for `python -m kftune.components.train_lora.step.cli`."""
    sys.exit(launch_main(sys.argv[1:]))


if __name__ == "__main__":
    main()
