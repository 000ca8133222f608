"""HTML reports for the KFP UI: curves and bars drawn here as inline SVG.

The KFP UI shows an `HTML` artifact as is. Everything a report needs is in the file: the charts
are SVG elements written by this module (no script, no fetched font or stylesheet), so a report
renders the same offline, in a sandboxed frame, or in a file browser.

- `training_report(history, training, summary)`: the train step's loss, learning-rate, gradient
  norm and throughput curves (one point per logged step), then the run's settings.
- `evaluation_report(result)`: base vs fine-tuned, a pair of bars per metric, then the table.

`history` is the trainer's per-step record (`HISTORY_FILE` in the adapter directory, one JSON
object per line: step, epoch, loss, learning_rate, grad_norm, tokens_per_second, and eval_loss
where evaluated). Each chart's data series is a `<polyline class="series" data-name=...>` whose
`points` hold one "x,y" pair per logged step.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

HISTORY_FILE = "history.jsonl"
"""The trainer's per-step history, kept in the adapter directory."""

WIDTH, HEIGHT = 560, 240
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 64, 16, 28, 40
COLORS = ("#1f6feb", "#d9480f", "#2f9e44", "#7048e8")
STYLE = """
body { font-family: sans-serif; margin: 16px; color: #1b1f24; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 24px; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; margin-bottom: 12px; }
svg { background: #fff; border: 1px solid #d0d7de; }
svg text { font-family: sans-serif; font-size: 11px; fill: #57606a; }
svg .title { font-size: 13px; fill: #1b1f24; font-weight: bold; }
table { border-collapse: collapse; font-size: 13px; }
td, th { border: 1px solid #d0d7de; padding: 3px 8px; text-align: left; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
"""


@dataclasses.dataclass(frozen=True)
class Series:
    """One curve: its name and (x, y) points."""

    name: str
    points: Sequence[tuple[float, float]]


# -- history ---------------------------------------------------------------------------------------


def read_history(directory: str | Path) -> list[dict[str, Any]]:
    """The per-step records in `directory`'s `HISTORY_FILE`; [] when it has none."""
    path = Path(directory) / HISTORY_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_history(directory: str | Path, records: Iterable[Mapping[str, Any]]) -> Path:
    """Writes `records` as `directory`'s `HISTORY_FILE` (one JSON object per line)."""
    path = Path(directory) / HISTORY_FILE
    path.write_text("".join(json.dumps(dict(record)) + "\n" for record in records))
    return path


# -- charts ----------------------------------------------------------------------------------------


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round values spanning [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return [0.0]
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(factor * magnitude for factor in (1, 2, 2.5, 5, 10) if factor * magnitude >= raw)
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 12))
    return ticks


def _label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.1e}"
    return f"{value:.4g}"


def _frame(title: str, x_ticks: list[float], y_ticks: list[float], x_label: str,
           place: Any, width: int = WIDTH) -> list[str]:
    """The chart's title, axes, grid lines and tick labels."""
    parts = [f'<text class="title" x="{MARGIN_LEFT}" y="18">{html.escape(title)}</text>']
    bottom, right = HEIGHT - MARGIN_BOTTOM, width - MARGIN_RIGHT
    for tick in y_ticks:
        _, y = place(x_ticks[0] if x_ticks else 0, tick)
        parts.append(f'<line x1="{MARGIN_LEFT}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" '
                     'stroke="#eaeef2"/>')
        parts.append(f'<text x="{MARGIN_LEFT - 6}" y="{y + 4:.1f}" '
                     f'text-anchor="end">{_label(tick)}</text>')
    for tick in x_ticks:
        x, _ = place(tick, y_ticks[0])
        parts.append(f'<text x="{x:.1f}" y="{bottom + 16}" '
                     f'text-anchor="middle">{_label(tick)}</text>')
    parts.append(f'<line x1="{MARGIN_LEFT}" y1="{bottom}" x2="{right}" y2="{bottom}" '
                 'stroke="#8c959f"/>')
    parts.append(f'<line x1="{MARGIN_LEFT}" y1="{MARGIN_TOP}" x2="{MARGIN_LEFT}" y2="{bottom}" '
                 'stroke="#8c959f"/>')
    parts.append(f'<text x="{(MARGIN_LEFT + right) / 2:.1f}" y="{HEIGHT - 6}" '
                 f'text-anchor="middle">{html.escape(x_label)}</text>')
    return parts


def line_chart(title: str, series: Sequence[Series], x_label: str = "step") -> str:
    """An SVG line chart of `series` (each point marked; a legend when there are several)."""
    points = [point for line in series for point in line.points
              if all(math.isfinite(value) for value in point)]
    if not points:
        return ""
    xs, ys = [x for x, _ in points], [y for _, y in points]
    x_ticks = _nice_ticks(min(xs), max(xs)) if max(xs) > min(xs) else [min(xs) - 1, min(xs) + 1]
    y_ticks = _nice_ticks(min(ys), max(ys))
    x_span, y_span = x_ticks[-1] - x_ticks[0], y_ticks[-1] - y_ticks[0]
    plot_width = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_height = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM

    def place(x: float, y: float) -> tuple[float, float]:
        return (MARGIN_LEFT + (x - x_ticks[0]) / x_span * plot_width,
                HEIGHT - MARGIN_BOTTOM - (y - y_ticks[0]) / y_span * plot_height)

    parts = _frame(title, x_ticks, y_ticks, x_label, place)
    for index, line in enumerate(series):
        color = COLORS[index % len(COLORS)]
        placed = [place(x, y) for x, y in line.points
                  if math.isfinite(x) and math.isfinite(y)]
        coordinates = " ".join(f"{x:.1f},{y:.1f}" for x, y in placed)
        parts.append(f'<polyline class="series" data-name="{html.escape(line.name)}" '
                     f'points="{coordinates}" fill="none" stroke="{color}" stroke-width="2"/>')
        if len(placed) <= 200:
            parts.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{color}"/>'
                         for x, y in placed)
        if len(series) > 1:
            legend_x = WIDTH - MARGIN_RIGHT - 110
            legend_y = MARGIN_TOP + 4 + 16 * index
            parts.append(f'<rect x="{legend_x}" y="{legend_y}" width="10" height="10" '
                         f'fill="{color}"/><text x="{legend_x + 14}" y="{legend_y + 9}">'
                         f'{html.escape(line.name)}</text>')
    return _svg(title, parts)


def bar_chart(title: str, bars: Sequence[tuple[str, float]], width: int = 280) -> str:
    """An SVG chart of one bar per (name, value), each labelled with its value."""
    finite = [(name, value) for name, value in bars if math.isfinite(value)]
    if not finite:
        return ""
    values = [value for _, value in finite]
    y_ticks = _nice_ticks(min(0.0, *values), max(0.0, *values))
    y_span = y_ticks[-1] - y_ticks[0]
    plot_width = width - MARGIN_LEFT - MARGIN_RIGHT
    plot_height = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    slot = plot_width / len(finite)

    def place(x: float, y: float) -> tuple[float, float]:
        return (MARGIN_LEFT + x * slot,
                HEIGHT - MARGIN_BOTTOM - (y - y_ticks[0]) / y_span * plot_height)

    parts = _frame(title, [], y_ticks, "", place, width)
    for index, (name, value) in enumerate(finite):
        left, top = place(index + 0.2, max(value, 0.0))
        _, bottom = place(index, min(value, 0.0))
        color = COLORS[index % len(COLORS)]
        parts.append(f'<rect class="bar" data-name="{html.escape(name)}" data-value="{value}" '
                     f'x="{left:.1f}" y="{top:.1f}" width="{slot * 0.6:.1f}" '
                     f'height="{max(bottom - top, 1):.1f}" fill="{color}"/>')
        parts.append(f'<text x="{left + slot * 0.3:.1f}" y="{top - 4:.1f}" '
                     f'text-anchor="middle">{_label(value)}</text>')
        parts.append(f'<text x="{left + slot * 0.3:.1f}" y="{HEIGHT - MARGIN_BOTTOM + 16}" '
                     f'text-anchor="middle">{html.escape(name)}</text>')
    return _svg(title, parts, width)


def _svg(title: str, parts: list[str], width: int = WIDTH) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{HEIGHT}" '
            f'viewBox="0 0 {width} {HEIGHT}" role="img" aria-label="{html.escape(title)}">'
            + "".join(parts) + "</svg>")


# -- pages -----------------------------------------------------------------------------------------


def _page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>" + "\n".join(body) + "</body></html>\n")


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return f"<td>{html.escape(json.dumps(value))}</td>"
    if isinstance(value, float):
        return f'<td class="number">{_label(value)}</td>'
    if isinstance(value, int):
        return f'<td class="number">{value}</td>'
    if isinstance(value, str):
        return f"<td>{html.escape(value)}</td>"
    return f"<td>{html.escape(json.dumps(value, default=str))}</td>"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """An HTML table; numbers right-aligned, other values as JSON."""
    head = "".join(f"<th>{html.escape(name)}</th>" for name in header)
    body = "".join("<tr>" + "".join(_cell(value) for value in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _curve(history: Sequence[Mapping[str, Any]], key: str) -> list[tuple[float, float]]:
    return [(float(record["step"]), float(record[key])) for record in history
            if isinstance(record.get(key), (int, float))]


def training_report(history: Sequence[Mapping[str, Any]], training: Mapping[str, Any],
                    summary: Mapping[str, Any]) -> str:
    """The train step's HTML page: curves of `history`, then `summary` and the `training` settings.

    Args:
        history: the trainer's per-step records (see the module docstring).
        training: the run's settings (the adapter manifest's `training`, plus `lora`).
        summary: the final figures (steps, final loss, tokens/s, runtime, ...).
    """
    charts = [
        line_chart("Loss", [Series(name, _curve(history, key))
                            for name, key in (("train loss", "loss"), ("eval loss", "eval_loss"))
                            if _curve(history, key)]),
        line_chart("Learning rate", [Series("learning rate", _curve(history, "learning_rate"))]),
        line_chart("Gradient norm (before clipping)",
                   [Series("grad norm", _curve(history, "grad_norm"))]),
        line_chart("Tokens per second (whole job)",
                   [Series("tokens/s", _curve(history, "tokens_per_second"))]),
    ]
    body = [f"<p>{len(history)} logged steps.</p>" if history else
            "<p>No step was logged (<code>logging_strategy</code> \"no\").</p>",
            '<div class="charts">' + "".join(chart for chart in charts if chart) + "</div>",
            "<h2>Result</h2>", table(["figure", "value"], summary.items()),
            "<h2>Settings</h2>", table(["setting", "value"], sorted(training.items()))]
    return _page("Training: LoRA fine-tuning", body)


def evaluation_report(result: Mapping[str, Any]) -> str:
    """The evaluate step's HTML page: base vs fine-tuned, one pair of bars per metric."""
    charts = [bar_chart(name, [("base", float(result["base"][name])),
                               ("fine-tuned", float(result["tuned"][name]))])
              for name in result["headline"]]
    rows = [(name, float(result["base"][name]), float(result["tuned"][name]),
             float(result["tuned"][name]) - float(result["base"][name]))
            for name in result["headline"]]
    better = "higher" if result.get("higher_is_better") else "lower"
    body = [f"<p>Task <code>{html.escape(str(result['task']))}</code>, "
            f"{result['examples']} held-out rows; {html.escape(str(result['primary']))}: "
            f"{better} is better.</p>",
            '<div class="charts">' + "".join(chart for chart in charts if chart) + "</div>",
            table(["metric", "base", "fine-tuned", "change"], rows)]
    if result["task"] == "sequence-classification":
        body.append("<h2>F1 per class</h2>")
        body.append(table(["class", "base", "fine-tuned"], [
            (name, float(result["base"]["f1"][index]), float(result["tuned"]["f1"][index]))
            for index, name in enumerate(result["label_names"])]))
    for number, sample in enumerate(result.get("samples") or [], start=1):
        body.append(f"<h2>Sample {number}</h2>")
        body.append(table(["prompt", "base", "fine-tuned"],
                          [(sample["prompt"], sample["base"], sample["tuned"])]))
    return _page("Evaluation: base vs fine-tuned", body)
