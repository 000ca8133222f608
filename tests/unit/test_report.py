"""The HTML reports: curves and bars as inline SVG, nothing fetched, one point per logged step."""

import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass

import pytest
from kftune.components.common import report

SVG = "{http://www.w3.org/2000/svg}"


def history(steps):
    return [{"step": step, "loss": 2.0 / step, "learning_rate": 1e-3 * (1 - step / 100),
             "grad_norm": 0.5, "tokens_per_second": 1000.0 + step} for step in steps]


def charts(page):
    """{chart title: {series name: [(x, y), ...]}} of every SVG in `page`."""
    found = {}
    for svg in re.findall(r"<svg.*?</svg>", page, flags=re.S):
        root = ElementTree.fromstring(svg)
        series = {line.get("data-name"): [tuple(map(float, pair.split(",")))
                                          for pair in line.get("points").split()]
                  for line in root.iter(f"{SVG}polyline")}
        found[root.get("aria-label")] = series
    return found


@dataclass
class Case:
    name: str
    steps: list
    eval_steps: list


CASES = [
    Case("one logged step", [1], []),
    Case("every 10 steps", [1, 10, 20, 30], []),
    Case("with eval loss", [1, 5, 10, 15, 20], [10, 20]),
    Case("many steps", list(range(1, 1001)), []),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_the_loss_curve_has_one_point_per_logged_step(case):
    records = history(case.steps)
    for record in records:
        if record["step"] in case.eval_steps:
            record["eval_loss"] = 1.0
    page = report.training_report(records, {"learning_rate": 1e-3}, {"steps": case.steps[-1]})

    drawn = charts(page)
    assert len(drawn["Loss"]["train loss"]) == len(case.steps)
    assert len(drawn["Learning rate"]["learning rate"]) == len(case.steps)
    assert len(drawn["Loss"].get("eval loss", [])) == len(case.eval_steps)
    # Steps go left to right; a lower loss is drawn higher up (smaller y).
    xs = [x for x, _ in drawn["Loss"]["train loss"]]
    assert xs == sorted(xs)
    if len(case.steps) > 1:
        ys = [y for _, y in drawn["Loss"]["train loss"]]
        assert ys[0] < ys[-1] or ys[0] == ys[-1]


def test_the_page_is_self_contained_and_escaped():
    page = report.training_report(history([1, 2]), {"lora.target_modules": ["<q>"]},
                                  {"final_loss": 1.0})
    assert "<script" not in page and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page and "@import" not in page and "url(" not in page
    assert "&lt;q&gt;" in page and "<q>" not in page


def test_a_run_that_logged_nothing_still_has_a_page():
    page = report.training_report([], {"logging_strategy": "no"}, {"steps": 3})
    assert "No step was logged" in page and charts(page) == {}


def test_the_history_file_round_trips(tmp_path):
    records = history([1, 2, 3])
    report.write_history(tmp_path, records)
    assert report.read_history(tmp_path) == records
    assert report.read_history(tmp_path / "missing") == []


def test_the_evaluation_page_sets_base_beside_tuned():
    result = {"task": "sequence-classification", "examples": 500, "primary": "accuracy",
              "higher_is_better": True, "headline": ["accuracy", "macro_f1"],
              "label_names": ["negative", "neutral", "positive"],
              "base": {"accuracy": 0.35, "macro_f1": 0.28, "f1": [0.1, 0.2, 0.3]},
              "tuned": {"accuracy": 0.64, "macro_f1": 0.61, "f1": [0.6, 0.5, 0.7]}}
    page = report.evaluation_report(result)
    bars = {(match[0], float(match[1])) for match in re.findall(
        r'<rect class="bar" data-name="([^"]+)" data-value="([^"]+)"', page)}
    assert bars == {("base", 0.35), ("fine-tuned", 0.64), ("base", 0.28), ("fine-tuned", 0.61)}
    assert "neutral" in page and "<script" not in page


@pytest.mark.parametrize("low,high", [(0, 1), (0.0001, 0.0003), (2.3, 2.3), (-1, 5), (1e3, 5e5)])
def test_ticks_span_the_values(low, high):
    ticks = report._nice_ticks(low, high)
    assert ticks[0] <= low and ticks[-1] >= high and len(ticks) >= 2
