"""The train and evaluate steps' HTML reports from a demo-sized local run, rendered by Chromium."""

import os
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from kftune.components.common import demo, report
from kftune.components.evaluate.evaluation import run_evaluation
from kftune.pipelines.lora_finetune import DEMO_LORA_CONFIG, DEMO_TRAINING_PARAMETERS
from support.browser import ink, screenshot
from support.train_step import run_step

pytestmark = pytest.mark.local

# The demo's settings, fewer steps; every other step logged (and the first).
PARAMETERS = {**DEMO_TRAINING_PARAMETERS, "max_steps": 16, "logging_steps": 2}
LOGGED_STEPS = [1, *range(2, 17, 2)]
# Where the README's picture of the report comes from: KFTUNE_UPDATE_DOCS=1 refreshes it.
README_PICTURE = Path(__file__).parents[2] / "docs" / "training-report.png"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    model = demo.demo_classifier_model(root / "minilm")
    rows = demo.sentiment_rows(600, seed=0, min_confidence=0.6)
    labels = demo.SENTIMENT_LABELS
    train = demo.write_dataset_artifact(root / "train", rows[:480], label_names=labels)
    held_out = demo.write_dataset_artifact(root / "eval", rows[480:], label_names=labels,
                                           source_uri="memory://held-out")
    run_step(
        model_dir=str(model), model_uri=str(model), data_dir=str(train), data_uri=str(train),
        adapter_dir=str(root / "adapter"), adapter_uri=str(root / "adapter"), metrics=None,
        task="sequence-classification", training_parameters=PARAMETERS,
        lora_config=DEMO_LORA_CONFIG, num_workers=1, num_procs_per_worker="1",
        resources_per_worker={}, backend="local", image="", timeout_minutes=10,
        kubernetes_options={"env": {"OMP_NUM_THREADS": "1"}},
        report_path=str(root / "report" / "training.html"))
    run_evaluation(base_model_dir=str(model), adapter_dir=str(root / "adapter"),
                   eval_data_dir=str(held_out), task="sequence-classification",
                   max_examples=60, html_report_path=str(root / "report" / "evaluation.html"))
    return root


def loss_points(page: str) -> list[tuple[float, float]]:
    for svg in re.findall(r"<svg.*?</svg>", page, flags=re.S):
        root = ElementTree.fromstring(svg)
        if root.get("aria-label") == "Loss":
            line = next(root.iter("{http://www.w3.org/2000/svg}polyline"))
            return [tuple(map(float, pair.split(","))) for pair in line.get("points").split()]
    raise AssertionError("the page has no loss chart")


def test_the_loss_curve_has_one_point_per_logged_step(trained):
    history = report.read_history(trained / "adapter")
    assert [record["step"] for record in history] == LOGGED_STEPS
    assert all(record["learning_rate"] >= 0 and record["grad_norm"] > 0 for record in history)
    page = (trained / "report" / "training.html").read_text()
    assert len(loss_points(page)) == len(LOGGED_STEPS)
    assert "<script" not in page
    assert "per_device_train_batch_size" in page  # the settings


def test_chromium_draws_the_reports(trained, tmp_path):
    for name in ("training", "evaluation"):
        picture = screenshot(trained / "report" / f"{name}.html", tmp_path / f"{name}.png",
                             size=(1180, 880) if name == "training" else (1180, 700))
        seen = ink(picture)
        # Curves, axes and text: far from a blank (white) page, in several colours.
        assert seen["non_white"] > 0.03 and seen["colors"] > 20, (name, seen)
    if os.environ.get("KFTUNE_UPDATE_DOCS"):
        from PIL import Image

        with Image.open(tmp_path / "training.png") as image:  # a palette keeps the file small
            image.convert("RGB").quantize(64).save(README_PICTURE, optimize=True)
