"""`kftune run`: the whole pipeline through kfp.local on this machine, and its summary."""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import logging
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from .. import __version__
from .errors import CliError
from .parameters import flags_from, parse_arguments

logger = logging.getLogger("kftune")


def configure_logging(debug: bool) -> None:
    """Log format and level for the `kftune` command; kfp.local's expected warnings hidden."""
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


def run_pipeline(
    arguments: dict[str, Any],
    overrides: dict[str, Any],
    *,
    output_dir: str | Path | None = None,
    cache: bool = False,
) -> dict[str, Any]:
    """Runs the pipeline through kfp.local and writes `summary.json`; returns the summary.

    `kftune run` and `kftune.run(...)` both come here, after `parameters.resolve_arguments`.

    Args:
        arguments: every pipeline argument, defaults filled in, already validated.
        overrides: the ones the user set (passed to the pipeline; the rest stay its defaults).
        output_dir: the run's directory; default `runs/<UTC time>`.
        cache: reuse step outputs of earlier runs with the same inputs.

    Returns:
        The summary (as written to `summary.json`).

    Raises:
        CliError: when a step fails (naming the step and its error).
    """
    output_dir = Path(output_dir) if output_dir else _default_output_dir()
    output_dir = output_dir.resolve()
    output_dir.mkdir(parents=True, exist_ok=True)

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
    return summary


def command_run(args: argparse.Namespace) -> int:
    """`kftune run`: the command-line syntax of `kftune.run(...)`, and the table at the end."""
    from .api import run

    parameters = parse_arguments(args.param, flags_from(args))
    summary = run(output_dir=args.output_dir, cache=args.cache, **parameters)
    print()
    print(summary.table())
    print(f"summary    : {summary.output_dir / 'summary.json'}")
    return 0
