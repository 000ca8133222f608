"""Which lm-evaluation-harness tasks a benchmark runs, and every check that needs no model.

Tasks come from the harness's registry (its packaged task YAMLs, whose data mostly lives on the
Hugging Face Hub) and from a local task source: a task YAML, or a directory of them, that the user
passes. `benchmark_problems` checks the settings and the task names (an unknown name gets the
closest registered names), and refuses a task that reads its data from the Hub where the Hub
cannot be reached, one line per problem, before any model is loaded. The pipeline's pre-run check
calls it with `prefix="benchmark_"`, so its lines name the pipeline's parameters.

The harness is imported inside the functions that need it, so importing this module stays light.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import os
import re
import socket
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..common import tasks as kftune_tasks
from ..common import uris
from ..common.errors import InputError

# `datasets` builders that read local files (`data_files`) rather than a Hub repository.
LOCAL_BUILDERS = frozenset({"json", "csv", "parquet", "arrow", "text", "pandas", "webdataset"})
# The fine-tuning task whose models the harness can score (it scores a language model's text).
CAUSAL_LM = "causal-lm"
HUB_PROBE_TIMEOUT_S = 3.0


def parse_tasks(tasks: str | Sequence[str]) -> tuple[str, ...]:
    """Task names from a comma- or space-separated string (or a list of names), in order."""
    names = re.split(r"[,\s]+", tasks) if isinstance(tasks, str) else list(tasks)
    return tuple(dict.fromkeys(str(name).strip() for name in names if str(name).strip()))


def is_remote(task_source: str) -> bool:
    """Whether `task_source` is a URI fetched at run time (s3, gs, https) rather than a path."""
    if not task_source:
        return False
    location = uris.parse_uri(task_source, parameter="task_source")
    return not location.is_local


def local_source(task_source: str, *, parameter: str) -> Path | None:
    """The local task YAML or directory `task_source` names; None when it is empty.

    Raises:
        InputError: a malformed URI, a missing path, or a file that is not a `.yaml`/`.yml`.
    """
    if not task_source:
        return None
    location = uris.parse_uri(task_source, parameter=parameter)
    path = uris.fetch(location, "", parameter=parameter)
    if path.is_file() and path.suffix not in (".yaml", ".yml"):
        raise InputError([
            f"`{parameter}` must be a task YAML (.yaml) or a directory of them, got "
            f"{uris.display_uri(task_source)!r}; see the harness's task guide for the format"
        ])
    return path


def include_directory(source: Path | None) -> str | None:
    """The directory the harness indexes for a local source.

    A directory is indexed as it is; for one YAML, a directory holding only a link to it (the
    YAML's own directory may hold anything).
    """
    if source is None:
        return None
    # Absolute: the step runs the harness from another working directory (see harness.py).
    resolved = source.resolve()
    if resolved.is_dir():
        return str(resolved)
    key = hashlib.sha256(str(resolved).encode()).hexdigest()[:16]
    staging = Path(tempfile.gettempdir()) / f"kftune-benchmark-task-{key}"
    staging.mkdir(exist_ok=True)
    link = staging / resolved.name
    if not link.is_symlink():
        with contextlib.suppress(FileExistsError):  # another process made it first
            link.symlink_to(resolved)
    return str(staging)


@functools.lru_cache(maxsize=4)
def task_manager(include_path: str | None = None) -> Any:
    """The harness's `TaskManager` (its registry plus `include_path`), built once per process.

    Indexing the registry reads a few thousand YAML files (seconds), so the pre-run check and the
    step share one.
    """
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path)


def _leaves(manager: Any, name: str, seen: set[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(task name, raw config) of every task a task, group or tag name stands for."""
    from lm_eval.tasks._index import Kind

    entry = manager.task_index.get(name)
    if entry is None or name in seen:
        return
    seen.add(name)
    if entry.kind in (Kind.TASK, Kind.PY_TASK):
        yield name, entry.cfg or {}
    elif entry.kind == Kind.TAG:
        for child in sorted(entry.tags):
            yield from _leaves(manager, child, seen)
    elif entry.kind == Kind.GROUP:
        children = (entry.cfg or {}).get("task") or []
        for child in children if isinstance(children, list) else [children]:
            if isinstance(child, dict) and child.get("dataset_path"):
                yield str(child.get("task", name)), child
            elif isinstance(child, dict | str):
                child_name = child.get("task") if isinstance(child, dict) else child
                if isinstance(child_name, str):
                    yield from _leaves(manager, child_name, seen)


def hub_dataset(config: dict[str, Any]) -> str | None:
    """The Hub dataset a task config reads, or None when its data is local."""
    path = config.get("dataset_path")
    if config.get("custom_dataset") or not isinstance(path, str) or not path:
        return None
    if path in LOCAL_BUILDERS or os.path.isabs(path) or os.path.isdir(path):
        return None
    return path


def hub_unreachable() -> str | None:
    """Why the Hugging Face Hub cannot be reached from here, or None when it can."""
    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(variable, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return f"{variable}={os.environ[variable]}"
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError as error:
        return f"{host}:{port} cannot be reached ({error.strerror or error})"
    return None


def _numeric_problems(num_fewshot: Any, limit: Any, batch_size: Any, prefix: str) -> list[str]:
    problems = []
    rules = (("num_fewshot", num_fewshot, 0, "e.g. 0 (zero-shot) or 5"),
             ("limit", limit, 1, "the examples per task, e.g. 100"),
             ("batch_size", batch_size, 1, "e.g. 8"))
    for name, value, least, example in rules:
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            problems.append(f"`{prefix}{name}` must be an integer >= {least}, got {value!r}; "
                            f"{example}")
    return problems


def _name_problems(manager: Any, names: Sequence[str], prefix: str, local: bool) -> list[str]:
    problems = []
    known = manager.all_tasks
    for name in names:
        if name in manager.task_index:
            continue
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = (f"did you mean {', '.join(repr(match) for match in close)}?" if close
                else "`python -m lm_eval ls tasks` lists the registered ones")
        where = " or in `" + prefix + "task_source`" if local else ""
        problems.append(f"`{prefix}tasks`: {name!r} is no task of lm-evaluation-harness's "
                        f"registry{where}; {hint}")
    return problems


def _hub_problems(manager: Any, names: Sequence[str], prefix: str) -> list[str]:
    needs_hub: dict[str, str] = {}
    for name in names:
        for leaf, config in _leaves(manager, name, set()):
            dataset = hub_dataset(config)
            if dataset and name not in needs_hub:
                needs_hub[name] = (f"the Hub dataset {dataset!r}" if leaf == name
                                   else f"Hub datasets (its task {leaf!r} reads {dataset!r})")
    if not needs_hub:
        return []
    reason = hub_unreachable()
    if reason is None:
        return []
    return [f"`{prefix}tasks`: {name!r} reads {what}, and the Hugging Face Hub is unreachable "
            f"here ({reason}); give a local task through `{prefix}task_source`, or run where "
            "the Hub (or HF_ENDPOINT's mirror) is reachable"
            for name, what in needs_hub.items()]


def benchmark_problems(
    tasks: str | Sequence[str],
    *,
    num_fewshot: Any,
    limit: Any,
    batch_size: Any,
    task_source: str = "",
    model_task: str = CAUSAL_LM,
    runs_here: bool = True,
    prefix: str = "",
) -> list[str]:
    """Every problem with a benchmark's settings, one line each, found without loading a model.

    Nothing is checked (and the harness is not imported) when `tasks` is empty: the benchmark
    does not run.

    Args:
        tasks: Task, group or tag names of the harness (comma-separated, or a list).
        num_fewshot: Few-shot examples per prompt (>= 0).
        limit: Examples per task (>= 1).
        batch_size: Requests per forward pass (>= 1).
        task_source: A task YAML or a directory of them (path, `file://`, `pkg://`, `pvc://`);
            a remote URI (s3, gs, https), or any source of a run that runs elsewhere, is read
            by the step, so task names are not checked here then.
        model_task: The fine-tuning task; the harness scores causal language models only.
        runs_here: The benchmark runs in this Python environment: the harness must be
            installed, and tasks whose data is on the Hub are refused when the Hub cannot be
            reached from here. False where it runs elsewhere (a run submitted to a cluster).
        prefix: Prepended to the parameter names in the messages (`benchmark_` in the pipeline).

    Returns:
        One line per problem (parameter, value, fix); empty when the benchmark can run.
    """
    names = parse_tasks(tasks)
    if not names:
        return []
    problems = _numeric_problems(num_fewshot, limit, batch_size, prefix)
    if kftune_tasks.model_task(model_task) != CAUSAL_LM:  # a preference adapter is causal
        problems.append(
            f"`{prefix}tasks` needs a causal-lm run (the harness scores the text a language "
            f"model writes or ranks), got task {model_task!r}, whose model is a classifier; "
            f"leave `{prefix}tasks` empty, or fine-tune with task causal-lm"
        )
        return problems
    try:
        # A source the step fetches, or one on the step's own disk (a run submitted to a
        # cluster), cannot be read here: its task names are checked by the step.
        elsewhere = is_remote(task_source) or bool(task_source and not runs_here)
        source = None if elsewhere else local_source(task_source,
                                                     parameter=f"{prefix}task_source")
    except InputError as error:
        return [*problems, *error.problems]
    if elsewhere and not runs_here:
        return problems
    try:
        manager = task_manager(include_directory(source))
    except ImportError:
        if runs_here:
            problems.append(f"`{prefix}tasks` needs lm-evaluation-harness, which is not "
                            "installed here; pip install 'kftune[benchmark]'")
        return problems
    if not elsewhere:
        problems += _name_problems(manager, names, prefix, local=source is not None)
    if runs_here:
        problems += _hub_problems(manager, names, prefix)
    return problems
