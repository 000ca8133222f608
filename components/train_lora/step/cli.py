r"""`kftune launch`: the PyTorchJob of a training run, printed for `kubectl apply` or submitted.

The flags are named after the reference's `TrainingClient.train(...)` parameters::

    kftune launch --dry-run --task sequence-classification \
        --model-uri s3://bucket/models/bert --dataset-uri s3://bucket/data/yelp \
        --output-uri s3://bucket/adapters/bert-yelp \
        --num-workers 4 --num-procs-per-worker 2 \
        --resources-per-worker '{"gpu": 2, "cpu": 5, "memory": "10G"}' \
        --training-parameters '{"learning_rate": 2e-5}' \
        --lora-config '{"r": 8, "lora_alpha": 8, "lora_dropout": 0.1}' | kubectl apply -f -

Without `--dry-run` the job is created with the current kubeconfig and followed to its end (the
master's log streams to stderr). Bad input prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from ...common.errors import InputError
from ...common.images import TRAINER_IMAGE


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would exit; we report one line instead
        raise _UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kftune launch",
        description="Print (--dry-run) or run the PyTorchJob of a LoRA fine-tuning run.",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the YAML, create nothing")
    parser.add_argument("--task", default="causal-lm", help="causal-lm or sequence-classification")
    parser.add_argument("--model-uri", required=True, help="the Model artifact (s3://, gs://, ...)")
    parser.add_argument("--dataset-uri", required=True, help="the Dataset artifact")
    parser.add_argument("--output-uri", required=True, help="where node rank 0 uploads the adapter")
    parser.add_argument("--name", "--job-name", dest="job_name", default="",
                        help="PyTorchJob name; default: derived from --output-uri")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--num-workers", type=int, default=1, help="pods: Master 1 + Worker n-1")
    parser.add_argument("--num-procs-per-worker", default="1", help="processes per pod, or auto")
    parser.add_argument("--resources-per-worker", default="{}",
                        help='JSON, e.g. \'{"gpu": 2, "cpu": 5, "memory": "10G"}\'')
    parser.add_argument("--training-parameters", default="{}", help="JSON TrainingArguments fields")
    parser.add_argument("--lora-config", default="{}", help="JSON LoraConfig fields")
    parser.add_argument("--merge", action="store_true", help="also write merged full weights")
    parser.add_argument("--image", default=TRAINER_IMAGE)
    parser.add_argument("--timeout-minutes", type=int, default=1440)
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
    parser.add_argument("--clean-pod-policy", default="Running", help="None, Running or All")
    parser.add_argument("--backoff-limit", type=int, default=None)
    parser.add_argument("--ttl-seconds-after-finished", type=int, default=3600)
    parser.add_argument("--pvc", default="", help="an existing claim to stage inputs on")
    return parser


def _json(flag: str, text: str, problems: list[str]) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        problems.append(f"`{flag}` must be JSON, got {text!r} ({error.msg})")
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


def build_from_args(args: argparse.Namespace) -> Any:
    """The PyTorchJob model for parsed flags.

    Raises:
        InputError: listing every bad flag.
    """
    from . import job as job_lib

    problems: list[str] = []
    resources = _json("--resources-per-worker", args.resources_per_worker, problems)
    training_parameters = _json("--training-parameters", args.training_parameters, problems)
    lora_config = _json("--lora-config", args.lora_config, problems)
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
    }
    config = job_lib.from_component(
        task=args.task,
        training_parameters=training_parameters if training_parameters is not None else {},
        lora_config=lora_config if lora_config is not None else {},
        num_workers=args.num_workers,
        num_procs_per_worker=args.num_procs_per_worker,
        resources_per_worker=resources if resources is not None else {},
        image=args.image,
        timeout_minutes=args.timeout_minutes,
        kubernetes_options=options,
        extra_problems=problems,
    )
    config = _with_merge(config, args.merge)
    io = job_lib.PodIO(
        model_uri=args.model_uri, data_uri=args.dataset_uri, output_uri=args.output_uri
    )
    name = config.job_name or job_lib.derive_job_name(args.output_uri, config.task)
    return job_lib.build_pytorchjob(config, io, job_name=name, namespace=config.namespace)


def _with_merge(config: Any, merge: bool) -> Any:
    import dataclasses

    return dataclasses.replace(config, merge=True) if merge else config


def launch_main(argv: Sequence[str]) -> int:
    """`kftune launch [flags]`; returns the exit status (0 ok, 1 training failed, 2 bad input)."""
    from . import job as job_lib

    try:
        args = _parser().parse_args(list(argv))
        job = build_from_args(args)
    except _UsageError as error:
        print(f"kftune launch: error: {error}", file=sys.stderr)
        return 2
    except InputError as error:
        print(f"kftune launch: error: {'; '.join(error.problems)}", file=sys.stderr)
        return 2
    if args.dry_run:
        sys.stdout.write(job_lib.to_yaml(job))
        return 0
    return _submit(job_lib.to_dict(job), args.timeout_minutes)


def _submit(manifest: dict[str, Any], timeout_minutes: int) -> int:
    from .backends.base import deleting_on_exit
    from .backends.kubernetes import PyTorchJobBackend
    from .launch import default_api_client

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    backend = PyTorchJobBackend(default_api_client(), manifest)
    try:
        with deleting_on_exit(backend):
            backend.submit()
            backend.wait(timeout_seconds=timeout_minutes * 60)
    except (RuntimeError, TimeoutError) as error:
        print(f"kftune launch: {error}", file=sys.stderr)
        return 1
    return 0


def main() -> None:
    """Entry point for `python -m kftune.components.train_lora.step.cli`."""
    sys.exit(launch_main(sys.argv[1:]))


if __name__ == "__main__":
    main()
