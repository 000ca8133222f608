"""Training jobs that start from sources: what the pods fetch themselves, checked before submission.

A job normally reads the model and the data as kftune artifacts (made by download_model and
download_dataset). `kftune launch --model-source/--dataset-source` and `TrainingClient().train`
give sources instead (hf://, s3://, gs://, https://, pvc://), which every pod fetches with the
download components' own code (pod/entrypoint.py). Their settings are checked here, by building
the download components' `ModelSource` / `DatasetSource` (the one set of rules for split syntax,
column roles and revisions), and so is where they are: a pod cannot read this machine's files or a
`pkg://` module of this Python environment, nor write an adapter to the Hub.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ...common import uris

# What a training pod can read a source from (pvc:// only from the claim mounted in the pods).
POD_SOURCE_SCHEMES = ("hf", "s3", "gs", "https", "http")
# Where a training pod can write the adapter (pvc:// likewise).
POD_OUTPUT_SCHEMES = ("minio", "s3", "gs")


def model_source(
    uri: str, *, revision: str = "", task: str, trust_remote_code: bool = False
) -> tuple[dict[str, Any], list[str]]:
    """The `--model-source` settings of a pod (everything but the URI), and their problems.

    The problems name `uri`, `revision`, `task`, `trust_remote_code` (rename them for the caller
    with `renamed`).
    """
    from ...download_model.model import ModelSource

    settings = {"revision": revision, "task": task, "trust_remote_code": trust_remote_code}
    try:
        ModelSource(uri=uri, **settings)
    except ValueError as error:
        return settings, list(getattr(error, "problems", [str(error)]))
    return settings, []


def data_source(
    uri: str,
    *,
    split: str = "train",
    subset: str = "",
    revision: str = "",
    column_mapping: Mapping[str, str] | None = None,
    num_labels: int | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """The `--data-source` settings of a pod (everything but the URI), and their problems.

    `num_labels`, when given, is the label count the pods must find in the rows.
    """
    from ...download_dataset.dataset import DatasetSource

    settings: dict[str, Any] = {
        "split": split,
        "subset": subset,
        "revision": revision,
        "column_mapping": dict(column_mapping or {}),
    }
    problems: list[str] = []
    try:
        DatasetSource(uri=uri, **settings)
    except ValueError as error:
        problems += getattr(error, "problems", [str(error)])
    if num_labels is not None:
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 2:
            problems.append(f"`num_labels` must be an integer >= 2, got {num_labels!r}")
        settings["num_labels"] = num_labels
    return settings, problems


def renamed(problems: list[str], names: Mapping[str, str]) -> list[str]:
    """`problems` with each backquoted parameter name replaced by the caller's name for it."""
    if not names:
        return list(problems)
    pattern = re.compile(r"`(" + "|".join(map(re.escape, names)) + r")`")
    return [pattern.sub(lambda match: f"`{names[match.group(1)]}`", problem)
            for problem in problems]


def pod_reach_problems(
    sources: Mapping[str, str], outputs: Mapping[str, str], claim: str = ""
) -> list[str]:
    """What the training pods could not read (`sources`) or write (`outputs`), by parameter name.

    Args:
        sources: parameter name -> source URI the pods fetch.
        outputs: parameter name -> URI the pods upload the adapter to.
        claim: the PersistentVolumeClaim mounted in the pods, where `pvc://<claim>/...` resolves.
    """
    problems: list[str] = []
    for name, uri in {**sources, **outputs}.items():
        credentials = uris.credential_problems(uri, parameter=name)
        if credentials:
            problems += credentials
            continue
        if name in outputs and isinstance(uri, str) and uri.startswith("minio://"):
            continue  # KFP's artifact store, which the job reaches as S3 (see job.py)
        location, parse_problems = uris.parse_problems(uri, parameter=name)
        if location is None:
            problems += parse_problems
            continue
        shown = uris.display_uri(uri)
        writing = name in outputs
        allowed = POD_OUTPUT_SCHEMES if writing else POD_SOURCE_SCHEMES
        if location.scheme in allowed:
            continue
        if location.scheme == "pvc":
            if claim and location.authority == claim:
                continue
            problems.append(
                f"`{name}` {shown!r} is on claim {location.authority!r}, which is not mounted in "
                "the training pods; set `kubernetes_options.pvc` to that claim (`--pvc "
                f"{location.authority}`) or put the {'adapter' if writing else 'source'} in an "
                "object store"
            )
        elif location.scheme in ("file", "pkg"):
            where = ("a module of this Python environment" if location.scheme == "pkg"
                     else "a path on this machine")
            problems.append(
                f"`{name}` {shown!r} is {where}, which the training pods cannot "
                f"{'write' if writing else 'read'}; upload it to s3:// or gs:// (or a claim "
                "mounted in the pods), or train on this machine with the local backend"
            )
        else:
            problems.append(
                f"`{name}` {shown!r}: the training pods write the adapter to an object store "
                f"({', '.join(f'{scheme}://' for scheme in POD_OUTPUT_SCHEMES)}) or a mounted "
                f"claim (pvc://), not to {location.scheme}://; push it to the Hub after training "
                "if you want it there"
            )
    return problems
