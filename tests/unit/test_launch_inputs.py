"""What the train_lora step refuses or fits before any job or process starts.

`max_seq_length` against the model's positions, a one-class classification dataset, the number of
local processes this host can run; and the pipeline-level refusals of `kftune run` (no held-out
rows, too many local processes) before any step.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kftune.components.common.artifacts import write_manifest
from kftune.components.common.demo import write_dataset_artifact
from kftune.components.common.errors import InputError
from kftune.components.train_lora.step import inputs
from kftune.pipelines import cli
from support.train_step import run_step


@dataclass
class Case:
    name: str
    input: Any
    expected: Any = None
    expected_error: list[str] = field(default_factory=list)


def model_artifact(directory: Path, config: dict | None, tokenizer: dict | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    write_manifest(directory, {"kind": "model", "task": "sequence-classification"})
    if config is not None:
        (directory / "config.json").write_text(json.dumps(config))
    if tokenizer is not None:
        (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    return directory


BERT = {"model_type": "bert", "max_position_embeddings": 512}
# The context-extension parts of real configs (Qwen2.5-7B-Instruct's README YaRN recipe,
# Llama-3.1-8B's config.json).
QWEN_YARN = {"model_type": "qwen2", "max_position_embeddings": 32768, "rope_scaling": {
    "type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}}
LLAMA_31 = {"model_type": "llama", "max_position_embeddings": 131072, "rope_scaling": {
    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192}}
SEQ_LENGTH = [
    Case("default above BERT's positions is lowered", (BERT, None, {}), {"max_seq_length": 512}),
    Case("default within GPT-2's positions stays", ({"n_positions": 2048}, None, {}), {}),
    Case("explicit value within the positions stays", (BERT, None, {"max_seq_length": 256}),
         {"max_seq_length": 256}),
    Case("explicit value above the positions is refused", (BERT, None, {"max_seq_length": 1024}),
         expected_error=["`training_parameters.max_seq_length` must be <= 512, the model's "
                         "positions (max_position_embeddings in its config.json), got 1024"]),
    Case("GPT-2 n_positions", ({"n_positions": 1024}, None, {"max_seq_length": 2048}),
         expected_error=["must be <= 1024", "(n_positions in its config.json), got 2048"]),
    Case("RoBERTa: the tokenizer's 512 of the 514 positions",
         ({"max_position_embeddings": 514}, {"model_max_length": 512}, {"max_seq_length": 514}),
         expected_error=["must be <= 512", "(model_max_length in its tokenizer_config.json)"]),
    Case("the tokenizer's 'no limit' placeholder is ignored",
         ({"max_position_embeddings": 4096}, {"model_max_length": int(1e30)},
          {"max_seq_length": 2048}), {"max_seq_length": 2048}),
    Case("no position limit (relative positions): unchanged", ({"model_type": "t5"}, None, {}), {}),
    # RoPE scaling (transformers' rope_scaling / rope_parameters): for yarn, llama3 and longrope a
    # `factor` of x covers x times `original_max_position_embeddings` (default: the config's
    # max_position_embeddings); the longer of that and max_position_embeddings is the context.
    Case("Qwen2.5 with YaRN x4 takes 4 x 32768",
         (QWEN_YARN, None, {"max_seq_length": 65536}), {"max_seq_length": 65536}),
    Case("Qwen2.5 with YaRN x4: beyond 131072 refused, naming rope_scaling",
         (QWEN_YARN, None, {"max_seq_length": 200000}),
         expected_error=["must be <= 131072", "(rope_scaling yarn: factor 4.0 x "
                         "original_max_position_embeddings 32768 in its config.json), got 200000"]),
    Case("YaRN without original_max_position_embeddings scales max_position_embeddings",
         ({"max_position_embeddings": 4096, "rope_scaling": {"rope_type": "yarn", "factor": 2.0}},
          None, {"max_seq_length": 8192}), {"max_seq_length": 8192}),
    Case("transformers 5 spelling: rope_parameters",
         ({"max_position_embeddings": 32768, "rope_parameters": {
             "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768,
             "rope_theta": 1e6}}, None, {"max_seq_length": 131072}), {"max_seq_length": 131072}),
    Case("DeepSeek-V3: 40 x 4096 is its max_position_embeddings",
         ({"max_position_embeddings": 163840, "rope_scaling": {
             "type": "yarn", "factor": 40, "original_max_position_embeddings": 4096}},
          None, {"max_seq_length": 163841}), expected_error=["must be <= 163840"]),
    Case("Llama 3.1: max_position_embeddings is already the extended context",
         (LLAMA_31, None, {"max_seq_length": 131072}), {"max_seq_length": 131072}),
    Case("Llama 3.1: beyond 131072 refused",
         (LLAMA_31, None, {"max_seq_length": 131073}),
         expected_error=["must be <= 131072", "(max_position_embeddings in its config.json)"]),
    Case("Phi-3 longrope (no factor; original at the top level): max_position_embeddings",
         ({"max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
           "rope_scaling": {"type": "longrope", "long_factor": [1.0], "short_factor": [1.0]}},
          None, {"max_seq_length": 131073}), expected_error=["must be <= 131072"]),
    Case("the tokenizer's pre-extension length does not undo the extension",
         (QWEN_YARN, {"model_max_length": 32768}, {"max_seq_length": 65536}),
         {"max_seq_length": 65536}),
    Case("a tokenizer limit below the positions still counts under YaRN",
         (QWEN_YARN, {"model_max_length": 16384}, {"max_seq_length": 65536}),
         expected_error=["must be <= 16384", "(model_max_length in its tokenizer_config.json)"]),
    # Linear and dynamic scaling name no original length, and checkpoints disagree on whether
    # max_position_embeddings is the extended context (Gemma 3, LLaMA-2-7B-32K) or the original
    # one: the cap stays at max_position_embeddings rather than guess a longer context.
    Case("linear scaling: max_position_embeddings",
         ({"max_position_embeddings": 4096, "rope_scaling": {"type": "linear", "factor": 2.0}},
          None, {"max_seq_length": 8192}), expected_error=["must be <= 4096"]),
    Case("rope_scaling null", ({"max_position_embeddings": 2048, "rope_scaling": None}, None,
                               {"max_seq_length": 4096}), expected_error=["must be <= 2048"]),
]


@pytest.mark.parametrize("case", SEQ_LENGTH, ids=[case.name for case in SEQ_LENGTH])
def test_max_seq_length_is_fitted_to_the_model(case: Case, tmp_path: Path) -> None:
    config, tokenizer, parameters = case.input
    model = model_artifact(tmp_path / "model", config, tokenizer)
    fitted, problems = inputs.fit_max_seq_length(parameters, model)
    if case.expected_error:
        (message,) = problems
        for text in case.expected_error:
            assert text in message
    else:
        assert problems == []
        assert fitted == case.expected


def test_lowering_the_default_is_logged_with_both_numbers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    inputs.fit_max_seq_length({}, model_artifact(tmp_path / "model", BERT))
    assert "the default 1024 is more than the model's 512 positions" in caplog.text


def data_artifact(directory: Path, labels: list[int], names: list[str]) -> Path:
    rows = [{"text": f"row {i}", "label": label} for i, label in enumerate(labels)]
    return write_dataset_artifact(directory, rows, label_names=names)


CLASSES = [
    Case("one class", ([2] * 6, ["neg", "neu", "pos"]),
         expected_error=["`train_data` holds 1 class(es) ('pos') in its 6 rows",
                         "needs at least 2", "column_mapping`['label']"]),
    Case("two classes", ([0, 1, 0], ["neg", "pos"]), []),
]


@pytest.mark.parametrize("case", CLASSES, ids=[case.name for case in CLASSES])
def test_a_classifier_needs_two_classes(case: Case, tmp_path: Path) -> None:
    problems = inputs.class_problems(data_artifact(tmp_path / "data", *case.input))
    if case.expected_error:
        (message,) = problems
        for text in case.expected_error:
            assert text in message
    else:
        assert problems == []


PROCESSES = [
    Case("one node", (1, 1), []),
    Case("two per core", (inputs.usable_cpus(), 2), []),
    Case("ten thousand nodes", (10000, 1),
         expected_error=["`num_workers` (10000) x `num_procs_per_worker` (1) = 10000 training "
                         "processes, more than this host can run",
                         f"(at most {2 * inputs.usable_cpus()}: 2 per CPU core"]),
    Case("processes per node count too", (1, str(2 * inputs.usable_cpus() + 1)),
         expected_error=["training processes, more than this host can run"]),
]


@pytest.mark.parametrize("case", PROCESSES, ids=[case.name for case in PROCESSES])
def test_local_processes_are_bounded_by_the_host(case: Case) -> None:
    problems = inputs.local_process_problems(*case.input)
    if case.expected_error:
        (message,) = problems
        for text in case.expected_error:
            assert text in message
    else:
        assert problems == []


def test_run_training_refuses_every_problem_before_starting_anything(tmp_path: Path) -> None:
    model = model_artifact(tmp_path / "model", BERT)
    data = data_artifact(tmp_path / "data", [1] * 8, ["neg", "pos"])
    adapter = tmp_path / "out" / "adapter"
    with pytest.raises(InputError) as caught:
        run_step(
            model_dir=str(model), model_uri=str(model), data_dir=str(data), data_uri=str(data),
            adapter_dir=str(adapter), adapter_uri=str(adapter), metrics=None,
            task="sequence-classification",
            training_parameters={"max_steps": 1, "max_seq_length": 1024},
            lora_config={"r": 8, "target_modules": ["query"]}, num_workers=10000,
            num_procs_per_worker="1", resources_per_worker={}, backend="local", image="",
            timeout_minutes=5, kubernetes_options={},
        )
    message = str(caught.value)
    assert "3 problems" in message
    for text in ("must be <= 512", "holds 1 class(es) ('pos')", "= 10000 training processes"):
        assert text in message
    assert not adapter.parent.exists() or list(adapter.parent.iterdir()) == []


RUN_REFUSALS = [
    Case("no held-out rows", ["--eval-fraction", "0"],
         expected_error=["`eval_fraction` is 0 and `eval_split` is empty: the evaluate step "
                         "would have no held-out rows", "eval_split (e.g. test[:500])"]),
    Case("too many local processes", ["--num-workers", "10000"],
         expected_error=["= 10000 training processes, more than this host can run"]),
]


@pytest.mark.parametrize("case", RUN_REFUSALS, ids=[case.name for case in RUN_REFUSALS])
def test_kftune_run_refuses_before_any_step(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output_dir = tmp_path / "run"
    code = cli.main(["run", "--output-dir", str(output_dir), *case.input])
    err = capsys.readouterr().err
    assert code == 2
    for text in case.expected_error:
        assert text in err
    assert not output_dir.exists()


def test_held_out_rows_from_eval_split_are_enough(tmp_path: Path) -> None:
    from kftune.pipelines.parameters import resolve_arguments

    arguments, _ = resolve_arguments(["eval_fraction=0", "eval_split=test[:100]"])
    assert arguments["eval_fraction"] == 0 and arguments["eval_split"] == "test[:100]"
