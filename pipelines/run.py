"""`kftune run`: the whole pipeline through kfp.local on this machine, and its summary."""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import fcntl
import itertools
import json
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import __version__
from .errors import CliError
from .parameters import flags_from, parse_arguments, resolve_arguments, serving_config
from .process_tree import RunStopped, stop_on_signal
from .run_output import StepCounter, step_counter

logger = logging.getLogger("kftune")


# kfp.local's own notes, logged on the root logger: the switches it skipped (the step counter
# already counts only the steps that run) and its workspace clean-up.
_ROOT_NOTES = ("Skipping conditional task ", "Skipping task ", "Cleaned up workspace")


def _not_a_launcher_note(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(_ROOT_NOTES)


def configure_logging(debug: bool) -> None:
    """Log format and level for the `kftune` command; without `debug`, kfp.local's notes hidden."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    root = logging.getLogger()
    root.removeFilter(_not_a_launcher_note)
    if not debug:
        root.addFilter(_not_a_launcher_note)
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
    elif "preference_accuracy" in tuned:
        primary, higher_is_better = "preference_accuracy", True
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
    if summary.get("training_report"):  # HTML pages, as the KFP UI shows them
        lines.append(f"curves     : {summary['training_report']}")
        lines.append(f"comparison : {summary['evaluation_report']}")
    if summary.get("benchmark_report"):
        lines.append(f"benchmark  : {summary['benchmark_report']}")
    if summary.get("merged_model_dir"):
        lines.append(f"merged     : {summary['merged_model_dir']}")
    # With `register` on the run registered these; else it shows what a run with it would.
    registered = "registered" if summary.get("arguments", {}).get("register") else "would register"
    for entry in summary.get("would_register") or []:
        lines.append(f"registry   : {registered} {entry['name']}:{entry['version']} "
                     f"({entry['format']}) {entry['uri']}")
    served = summary.get("would_deploy")
    if served:  # only with `deploy` on, which kfp.local cannot do
        lines.append(f"serving    : would deploy {' or '.join(served['kinds'])} {served['name']}: "
                     f"{served['model_name']} = {served['model_uri']}")
        lines += [f"             + LoRA adapter {adapter['name']} = {adapter['uri']}"
                  for adapter in served["adapters"]]
        lines.append(f"             called with model={served['call_with_model']!r}")
    return "\n".join(lines)


def registration_preview(arguments: dict[str, Any], metrics: dict[str, Any], adapter_dir: Path,
                         merged: Path | None, run_name: str) -> list[dict[str, Any]] | None:
    """What register_model would record for this run's artifacts (None: not computable)."""
    from ..components.register_model import registry

    try:
        target = registry.RegistryTarget(
            server_address=arguments["registry_address"],
            model_name=arguments["registered_model_name"],
            version=arguments["model_version"] or run_name)
        entries = registry.registration_plan(
            str(adapter_dir), str(adapter_dir), target, eval_metrics=metrics,
            merged_dir=str(merged) if merged else None, merged_uri=str(merged) if merged else None,
            run={"run_name": run_name})
    except (ValueError, KeyError, OSError) as error:
        logger.debug("no registration preview: %s", error)
        return None
    return [{"name": entry["name"], "version": entry["version"], "uri": entry["uri"],
             "format": entry["model_format_name"], "metadata": entry["metadata"]}
            for entry in entries]


def deployment_preview(arguments: dict[str, Any], adapter_dir: Path, merged: Path | None,
                       base: Path | None) -> dict[str, Any] | None:
    """What deploy_model would serve for this run's artifacts, with `deploy` on (else None).

    The manifests name this machine's artifact paths; on a cluster they are the artifact
    store's URIs (`minio://` written as `s3://`).
    """
    from ..components.deploy_model import deploy

    if not arguments.get("deploy"):
        return None
    try:
        config = serving_config(arguments)
        plan = deploy.serving_plan(
            str(adapter_dir), str(adapter_dir), config, base_uri=str(base or ""),
            merged_dir=str(merged) if merged else None, merged_uri=str(merged) if merged else None,
            check_uris=False)
    except (ValueError, KeyError, OSError) as error:
        logger.debug("no deployment preview: %s", error)
        return None
    kinds = plan.kinds if config.kind == "auto" else (config.kind,)
    return {"kind": config.kind, "kinds": [deploy.RESOURCES[kind][2] for kind in kinds],
            "name": config.name, **plan.summary(config.name),
            "manifests": {deploy.RESOURCES[kind][2]: deploy.manifest(kind, plan, config, "")
                          for kind in kinds}}


def base_model_dir(artifacts: Path) -> Path | None:
    """download_model's output under a kfp.local run's artifacts."""
    found = sorted(artifacts.glob("*/download-model/model/manifest.json"))
    return found[-1].parent if found else None


def benchmark_report(artifacts: Path) -> Path | None:
    """The benchmark step's Markdown report under a kfp.local run's artifacts (if it ran)."""
    found = sorted(path for path in artifacts.glob("*/benchmark*/report") if path.is_file())
    return found[-1] if found else None


def merged_model_dir(artifacts: Path) -> Path | None:
    """export_model's output under a kfp.local run's artifacts (there only with `merge` on)."""
    found = sorted(artifacts.glob("*/export-model/merged_model/manifest.json"))
    return found[-1].parent if found else None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXCEPTION_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(\w+(?:Error|Exception|Interrupt|Exit)): ?(.*)$")
# kfp.local indents a step's streamed output by 4 spaces; its own log lines start with a time.
_STEP_INDENT = "    "
_KFP_LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d+ - ")
_SEPARATOR = re.compile(r"^-{20,}$")
_NODE_LINE = re.compile(r"\[node-(\d+)\] (.*)$")
_RANK_PREFIX = re.compile(r"^\[rank\d+\]: ?")
# torch.distributed.elastic's glog-style lines ("E1202 04:04:07.629000 21761 torch/...").
_TORCH_ELASTIC_LINE = re.compile(r"^[DIWEF]\d{4} \d\d:\d\d:\d\d\.\d+ \d+ ")
_LAUNCHER_NOTES = ("Looking for component `", 'Loading KFP component "',
                   "Wrote executor output file to", "Streamed logs:",
                   "Skipping conditional task ", "Skipping task ")


def _strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def _node_content(node: re.Match[str]) -> str:
    """A node's line without torchrun's `[rank<N>]: ` prefix of a worker's own output."""
    return _RANK_PREFIX.sub("", node.group(2))


class QuietFilter:
    """Which lines of kfp.local's output a person reads without `--debug`.

    Hidden: the launcher's internals (the executor input as JSON, component loading, executor
    output notes, each task's output artifacts), Python tracebacks (the error is the last line
    `kftune run` prints) and torchrun's failure reports. Kept: the steps, their log lines and
    progress, and kfp.local's task status lines.
    """

    def __init__(self) -> None:
        self._state = ""
        self._node = ""
        self._report_rules = 0

    def keep(self, raw: str) -> bool:
        """Whether `raw` (one line, without its newline) is shown."""
        line = _strip_ansi(raw)
        if self._state == "json":
            if line.rstrip() == _STEP_INDENT + "}":
                self._state = ""
            return False
        if self._state in ("traceback", "outputs"):
            if not (_KFP_LOG_LINE.match(line) or _SEPARATOR.match(line)):
                return False
            self._state = ""
        node = _NODE_LINE.search(line)
        if self._state.startswith("node-") and node and node.group(1) == self._node:
            return self._keep_node_line(_node_content(node))
        self._state = ""
        if "Got executor_input:" in line:
            self._state = "json"
            return False
        if any(note in line for note in _LAUNCHER_NOTES):
            return False
        if re.search(r"Task .* outputs:$", line):
            self._state = "outputs"
            return False
        if line.rstrip() == _STEP_INDENT + "Traceback (most recent call last):":
            self._state = "traceback"
            return False
        if node:
            content = _node_content(node)
            if content.startswith("Traceback (most recent call last):"):
                self._state, self._node = "node-traceback", node.group(1)
                return False
            if _TORCH_ELASTIC_LINE.match(content):
                return False
        return True

    def _keep_node_line(self, content: str) -> bool:
        if self._state == "node-traceback":
            if content[:1].isspace() or not content:
                return False
            # The exception line ends the traceback; torchrun's ChildFailedError is followed by
            # its failure report between two "=====" rules.
            self._state = "node-report" if "ChildFailedError" in content else ""
            self._report_rules = 0
            return False
        if content.startswith("====="):
            self._report_rules += 1
            if self._report_rules == 2:
                self._state = ""
        return False


class _OutputTail:
    """Passes writes through to `stream` and keeps the last lines, to quote a step's error.

    kfp.local prints each step's output to stdout; when a step fails, its exception is the line
    that ends the executor's traceback. With `quiet`, only the lines `QuietFilter` keeps are
    passed through (all are kept for the error).
    """

    def __init__(self, stream: Any, keep: int = 2000, quiet: bool = False,
                 counter: StepCounter | None = None) -> None:
        self.stream = stream
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)
        self._partial = ""
        self._filter = QuietFilter() if quiet else None
        self._counter = counter or StepCounter(None)
        # kfp.local colours task names and states: plain text into a file or a pipe.
        isatty = getattr(stream, "isatty", None)
        self._plain = not (callable(isatty) and isatty())

    def write(self, text: str) -> int:
        self._partial += text
        *complete, self._partial = self._partial.split("\n")
        self.lines.extend(complete)
        if self._filter is None:  # everything, as it comes (a log record is one write)
            out = self._counter.label(text)
        else:
            shown = [self._counter.label(line) for line in complete if self._filter.keep(line)]
            out = "\n".join(shown) + "\n" if shown else ""
        if out:
            self.stream.write(_strip_ansi(out) if self._plain else out)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)

    def last_error(self) -> str:
        """`Type: message` of the last step's exception (with its "  - ..." problem lines)."""
        return step_error(list(self.lines))


_TRACEBACK = _STEP_INDENT + "Traceback (most recent call last):"
_CHAINED = ("During handling of the above exception, another exception occurred:",
            "The above exception was the direct cause of the following exception:")


def step_error(lines: list[str]) -> str:
    """`Type: message` of the exception that ended the last failed step's executor.

    Read from the executor's traceback (printed at the step indent): the exception line after
    its frames; of chained exceptions, the last. The lines after an exception line are its
    message, which may quote a training node's log with tracebacks of its own: they are skipped.
    Without such a traceback, the last exception line of the output.
    """
    lines = [_strip_ansi(line) for line in lines]
    task_start = max((index for index, line in enumerate(lines)
                      if _KFP_LOG_LINE.match(line) and "Executing task" in line), default=0)
    found = ""
    state = ""
    for index in range(task_start, len(lines)):
        line = lines[index]
        if state in ("", "chained") and line.rstrip() == _TRACEBACK:
            state = "frames"
            continue
        if state == "frames":
            if line.startswith(_STEP_INDENT + " "):
                continue
            match = _EXCEPTION_LINE.match(line)
            if match:
                found = _with_problem_lines(match, lines[index + 1 :])
                state = "message"
            continue
        if state == "message" and line.strip() in _CHAINED and line.startswith(_STEP_INDENT):
            state = "chained"
    if found:
        return found
    for index in range(len(lines) - 1, -1, -1):
        match = _EXCEPTION_LINE.match(lines[index])
        if match:
            return _with_problem_lines(match, lines[index + 1 :])
    return ""


def _with_problem_lines(match: re.Match[str], following: list[str]) -> str:
    detail = [f"{match.group(1)}: {match.group(2)}".rstrip()]
    for line in following:
        if not line.strip().startswith("- "):
            break
        detail.append(line.strip())
    return " ".join(detail)


# -- the output directory -------------------------------------------------------------------------

LOCK_FILE = ".kftune-run.lock"
INCOMPLETE = "INCOMPLETE"
SUMMARY = "summary.json"


def _utc_stamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")


def new_run_dir(root: Path) -> Path:
    """A new directory `root/<UTC time>`, `-2`, `-3`... when another run took that second.

    `mkdir` either creates the directory or fails: two runs starting together never share one.
    """
    root.mkdir(parents=True, exist_ok=True)
    stamp = _utc_stamp()
    for attempt in itertools.count(1):
        candidate = root / (stamp if attempt == 1 else f"{stamp}-{attempt}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise AssertionError("unreachable")


class RunDirectory:
    """Holds an output directory for one run: locked, marked INCOMPLETE until it succeeds.

    The lock is an `flock` on `.kftune-run.lock`, released by the kernel when this process ends
    however it ends, so a killed run never leaves a stale lock. `INCOMPLETE` is written before
    any step runs and removed only after `summary.json` is written: a run that failed, was
    stopped or was killed leaves a directory that says so.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock: Any = None

    def acquire(self) -> None:
        """Takes the directory for this run.

        Raises:
            CliError: when another run holds it, or a finished run's summary is in it.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        lock = open(self.path / LOCK_FILE, "a+")  # held for the run's lifetime
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            lock.close()
            raise CliError(
                f"`--output-dir` {self.path} is in use by another kftune run ({holder}); two "
                "runs into one directory would overwrite each other's results",
                hint="give each run its own --output-dir, or leave it out: each run then gets "
                "a new runs/<UTC time> directory",
                code=2,
            ) from None
        if (self.path / SUMMARY).exists():
            lock.close()
            raise CliError(
                f"`--output-dir` {self.path} already holds a finished run ({SUMMARY}); a new "
                "run would replace its results",
                hint="choose a new --output-dir, or remove that one first",
                code=2,
            )
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}, started {_utc_stamp()} UTC\n")
        lock.flush()
        self._lock = lock
        self.mark_incomplete("the run has not finished")

    def mark_incomplete(self, reason: str) -> None:
        """Writes (or rewrites) the INCOMPLETE marker with `reason`."""
        (self.path / INCOMPLETE).write_text(
            f"This run did not finish: {reason}.\nIts artifacts are partial; do not use them.\n"
        )

    def complete(self, summary: dict[str, Any]) -> Path:
        """Writes `summary.json`, then removes the INCOMPLETE marker."""
        path = self.path / SUMMARY
        partial = path.with_name(f".{SUMMARY}.partial")
        partial.write_text(json.dumps(summary, indent=2, default=str) + "\n")
        os.replace(partial, path)
        (self.path / INCOMPLETE).unlink(missing_ok=True)
        return path

    def release(self) -> None:
        """Releases the lock (the kernel does it too when the process ends)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None


# Environment of the steps without `--debug`: libraries' progress bars, load reports and
# deprecation notes are not what a person running the pipeline reads.
QUIET_STEP_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning",
}


@contextlib.contextmanager
def _step_environment(values: dict[str, str]) -> Iterator[None]:
    """`values` in the environment the steps inherit, where not set already, for the block."""
    added = {name: value for name, value in values.items() if name not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def run_pipeline(
    arguments: dict[str, Any],
    overrides: dict[str, Any],
    *,
    output_dir: str | Path | None = None,
    cache: bool = False,
) -> dict[str, Any]:
    """Runs the pipeline through kfp.local and writes `summary.json`; returns the summary.

    `kftune run` and `kftune.run(...)` both come here, after `parameters.resolve_arguments`.
    The output shows the steps and their progress; the launcher's internals, tracebacks and
    library notes too when the `kftune` logger is at DEBUG (`kftune run --debug`).

    Args:
        arguments: every pipeline argument, defaults filled in, already validated.
        overrides: the ones the user set (passed to the pipeline; the rest stay its defaults).
        output_dir: the run's directory; default a new `runs/<UTC time>` (`-2`, `-3`... when
            another run took that second).
        cache: reuse step outputs of earlier runs with the same inputs.

    Returns:
        The summary (as written to `summary.json`).

    Raises:
        CliError: when `output_dir` is in use by another run or holds a finished one (before
            any step), when a step fails (naming the step and its error), and when SIGTERM or
            SIGINT stopped the run (every process it started is stopped first; `code` is 143
            or 130).
    """
    if output_dir:
        path = Path(output_dir).resolve()
    else:
        path = new_run_dir(Path("runs").resolve())
    run_dir = RunDirectory(path)
    run_dir.acquire()
    try:
        return _run_in(run_dir, arguments, overrides, cache=cache)
    finally:
        run_dir.release()


def _run_in(
    run_dir: RunDirectory, arguments: dict[str, Any], overrides: dict[str, Any], *, cache: bool
) -> dict[str, Any]:
    output_dir = run_dir.path
    debug = logger.isEnabledFor(logging.DEBUG)
    from kfp import local

    from .lora_finetune import make_pipeline

    logger.info("kftune %s: running the LoRA fine-tuning pipeline locally", __version__)
    logger.info("Output directory: %s", output_dir)
    for name, value in overrides.items():
        logger.info("Parameter %s = %s", name, json.dumps(value))
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(output_dir / "artifacts"),
        workspace_root=str(output_dir / "workspace"),
        raise_on_error=True,
        enable_caching=cache,
        cache_root=str(output_dir.parent / ".kfp-cache") if cache else None,
    )
    (output_dir / "workspace").mkdir(exist_ok=True)
    pipeline = make_pipeline(download_retries=0)
    if overrides.get("deploy"):
        # The deploy step needs a cluster: here it is shown (`would_deploy`), not run.
        logger.info("deploy: kftune run shows what it would deploy; a KFP run deploys")
        overrides = {**overrides, "deploy": False}
    started = time.monotonic()
    tail = _OutputTail(sys.stdout, quiet=not debug, counter=step_counter(pipeline, overrides))
    sys.stdout = tail
    try:
        with stop_on_signal(), _step_environment({} if debug else QUIET_STEP_ENV):
            task = pipeline(**overrides)
    except RunStopped as stopped:
        run_dir.mark_incomplete(f"stopped by {stopped}")
        raise CliError(
            f"stopped by {stopped}: every step process and training node was stopped; "
            f"{output_dir} is incomplete (see its {INCOMPLETE} file)",
            hint="run again to start over; nothing was left running",
            code=stopped.exit_code,
        ) from None
    except RuntimeError as error:
        message = _strip_ansi(str(error).splitlines()[0])
        failed_step = re.search(r"Inner task failed: '([^']+)'", message)
        step_message = tail.last_error()
        if failed_step and step_message:
            message = f"step {failed_step.group(1)!r} failed: {step_message}"
        run_dir.mark_incomplete(message)
        hint = f"its files are under {output_dir}"
        if not debug:
            hint = f"re-run with --debug for the step's full log and traceback; {hint}"
        raise CliError(f"the pipeline failed: {message}", hint=hint) from error
    except BaseException as error:
        run_dir.mark_incomplete(f"{type(error).__name__}: {error}")
        raise
    finally:
        sys.stdout = tail.stream
    summary = _summary(arguments, task.outputs, output_dir, time.monotonic() - started)
    run_dir.complete(summary)
    return summary


def _summary(arguments: dict[str, Any], outputs: Any, output_dir: Path,
             wall: float) -> dict[str, Any]:
    metrics, adapter = dict(outputs["metrics"].metadata), Path(outputs["adapter"].path)
    merged = merged_model_dir(output_dir / "artifacts")
    benchmark = benchmark_report(output_dir / "artifacts")
    return {
        "kftune_version": __version__,
        "output_dir": str(output_dir),
        "arguments": arguments,
        **summarize(metrics, adapter, Path(outputs["report"].path), wall),
        **{name: str(Path(outputs[name].path)) if name in outputs else None
           for name in ("training_report", "evaluation_report")},
        "merged_model_dir": str(merged) if merged else None,
        "benchmark_report": str(benchmark) if benchmark else None,
        "would_register": registration_preview(arguments, metrics, adapter, merged,
                                               output_dir.name),
        "would_deploy": deployment_preview(arguments, adapter, merged,
                                           base_model_dir(output_dir / "artifacts")),
    }


def command_run(args: argparse.Namespace) -> int:
    """`kftune run`: the command-line syntax of `kftune.run(...)`, and the table at the end."""
    from .api import run

    if args.check:
        resolve_arguments(args.param, flags_from(args), on_this_host=True)
        print("all parameters are valid")
        return 0
    parameters = parse_arguments(args.param, flags_from(args), on_this_host=True)
    summary = run(output_dir=args.output_dir, cache=args.cache, **parameters)
    print()
    print(summary.table())
    print(f"summary    : {summary.output_dir / 'summary.json'}")
    return 0
