"""Preference tuning (DPO): kftune's loss and rewards against TRL's DPOTrainer, and bad pairs.

The same PEFT model and the same token ids go through TRL's `DPOTrainer.compute_loss` and
through kftune's path (collate, sequence log-probabilities with the adapter on and off, loss),
packed and padded; the losses and TRL's reward metrics must agree within float tolerance.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from kftune.components.common import demo
from kftune.components.common.errors import InputError
from kftune.components.common.tokenization import Example, aligned_labels, tokenize_rows
from kftune.components.train_lora.config import validate_training_parameters

PAIRS = [
    {"prompt": "Tweet: I love this airline\nSentiment:", "chosen": " positive",
     "rejected": " negative"},
    {"prompt": "Tweet: the flight was late again and nobody told us\nSentiment:",
     "chosen": " negative", "rejected": " positive and happy"},
    {"prompt": "Tweet: ok\nSentiment:", "chosen": " neutral", "rejected": " negative"},
]


@dataclasses.dataclass(frozen=True)
class LossCase:
    name: str
    loss_type: str
    beta: float
    label_smoothing: float = 0.0


LOSS_CASES = [
    LossCase("sigmoid", "sigmoid", 0.1),
    LossCase("sigmoid beta 0.5", "sigmoid", 0.5),
    LossCase("robust", "robust", 0.1, 0.2),
    LossCase("ipo", "ipo", 0.3),
]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo.tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "model")


def _lora() -> Any:
    from peft import LoraConfig

    # A random (not zero) adapter, so that the policy differs from the reference.
    return LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False,
                      task_type="CAUSAL_LM")


def _base(model_dir: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa")


def _peft_model(model_dir: Path) -> Any:
    from peft import get_peft_model

    return get_peft_model(_base(model_dir), _lora())


def _trl_loss(model_dir: Path, tokenizer: Any, case: LossCase, output_dir: Path) -> tuple[
    float, dict[str, float], dict[str, Any], Any
]:
    """TRL's loss and metrics of its first batch, the batch, and the PEFT model TRL built."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(output_dir), use_cpu=True, bf16=False, report_to="none",
                     per_device_train_batch_size=len(PAIRS), beta=case.beta,
                     loss_type=[case.loss_type], label_smoothing=case.label_smoothing,
                     max_length=128)
    # The base model and a LoRA config: TRL's reference is then the base with the adapter off,
    # as kftune's (given a PEFT model, TRL would copy its adapter as the reference instead).
    trainer = DPOTrainer(model=_base(model_dir), args=args, peft_config=_lora(),
                         train_dataset=Dataset.from_list(PAIRS), processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    loss = trainer.compute_loss(trainer.model, batch)
    metrics = {name: values[-1] for name, values in trainer._metrics["train"].items()}
    return float(loss), metrics, batch, trainer.model


def _examples_from(batch: dict[str, Any]) -> list[Example]:
    """kftune examples holding exactly the token ids of TRL's batch (chosen rows, then rejected)."""
    pairs = batch["input_ids"].shape[0] // 2
    examples = []
    for index in range(pairs):
        ids: list[int] = []
        labels: list[int] = []
        split = 0
        for row in (index, index + pairs):
            keep = batch["attention_mask"][row].bool()
            sequence = batch["input_ids"][row][keep].tolist()
            completion = batch["completion_mask"][row][keep].bool().tolist()
            ids += sequence
            labels += aligned_labels(sequence, completion)
            split = split or len(ids)
        examples.append(Example(index, tuple(ids), tuple(labels), split))
    return examples


def _kftune_loss(model: Any, examples: list[Example], pad_id: int, case: LossCase,
                 packing: bool) -> tuple[float, list[float]]:
    from kftune.components.train_lora.pod import data, preference

    batch = data.collate_preference(examples, pad_id, packing)
    spec = preference.PreferenceLoss(case.beta, case.loss_type, case.label_smoothing)
    loss_sum, sums = preference.micro_batch_loss(model, model, batch, spec)
    return float(loss_sum) / len(examples), [float(value) / len(examples) for value in sums]


@pytest.mark.parametrize("case", LOSS_CASES, ids=lambda case: case.name)
def test_loss_and_rewards_equal_trl_dpo_trainer_packed_and_padded(
        tiny_model_dir: Path, tmp_path: Path, case: LossCase) -> None:
    pytest.importorskip("trl", reason="TRL is a test dependency (kftune[test])")
    from kftune.components.train_lora.pod import preference
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    trl_loss, trl_metrics, batch, model = _trl_loss(tiny_model_dir, tokenizer, case, tmp_path)
    examples = _examples_from(batch)
    for packing in (True, False):
        loss, metrics = _kftune_loss(model, examples, tokenizer.pad_token_id, case, packing)
        assert loss == pytest.approx(trl_loss, rel=1e-4, abs=1e-5), (packing, loss, trl_loss)
        for name, value in zip(preference.METRIC_NAMES, metrics, strict=True):
            assert value == pytest.approx(trl_metrics[name], rel=1e-3, abs=1e-5), (packing, name)
    assert abs(trl_metrics["rewards/margins"]) > 1e-4  # the adapter moved the policy


def test_packed_and_padded_gradients_agree(tiny_model_dir: Path) -> None:
    import torch
    from kftune.components.train_lora.pod import data, preference
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = _peft_model(tiny_model_dir)
    examples = tokenize_rows("preference", PAIRS, tokenizer, 64)
    grads = []
    for packing in (True, False):
        model.zero_grad()
        batch = data.collate_preference(examples, tokenizer.pad_token_id, packing, 8)
        loss_sum, _ = preference.micro_batch_loss(model, model, batch, preference.PreferenceLoss())
        loss_sum.backward()
        grads.append(torch.cat([param.grad.flatten() for param in model.parameters()
                                if param.requires_grad]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


@dataclasses.dataclass(frozen=True)
class BadCase:
    name: str
    rows: list[dict[str, Any]]
    max_seq_length: int
    expected: list[str]


GOOD = {"prompt": "Tweet: fine\nSentiment:", "chosen": " neutral", "rejected": " negative"}
BAD_CASES = [
    BadCase("missing column", [{"prompt": "p", "chosen": "a"}], 64,
            ["`train_data` must have columns prompt, chosen and rejected", "missing ['rejected']",
             "column_mapping"]),
    BadCase("empty chosen", [GOOD, {**GOOD, "chosen": "  "}], 64,
            ["`train_data` column 'chosen' is empty in 1 row(s) (rows 1)", "fill those rows"]),
    BadCase("empty rejected", [{**GOOD, "rejected": ""}, GOOD], 64,
            ["`train_data` column 'rejected' is empty in 1 row(s) (rows 0)"]),
    BadCase("identical", [GOOD, {**GOOD, "rejected": " neutral"}], 64,
            ["columns 'chosen' and 'rejected' are identical in 1 row(s) (rows 1)"]),
    BadCase("prompt too long", [GOOD, {**GOOD, "prompt": "word " * 80}], 16,
            ["`train_data` column 'prompt' has 1 prompt(s) of at least "
             "`training_parameters.max_seq_length` = 16 tokens (rows 1;",
             "raise max_seq_length above"]),
]


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda case: case.name)
def test_bad_pairs_are_one_line_each_naming_the_column_and_fix(tiny_model_dir: Path,
                                                               case: BadCase) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    with pytest.raises(InputError) as raised:
        tokenize_rows("preference", case.rows, tokenizer, case.max_seq_length)
    assert len(raised.value.problems) == 1, raised.value.problems
    for part in case.expected:
        assert part in raised.value.problems[0]


def test_every_bad_pair_kind_is_reported_at_once(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [GOOD, {**GOOD, "chosen": ""}, {**GOOD, "rejected": " neutral"}]
    with pytest.raises(InputError) as raised:
        tokenize_rows("preference", rows, tokenizer, 64)
    assert len(raised.value.problems) == 2


def test_chat_pairs_use_the_chat_template(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    row = {"prompt": [{"role": "user", "content": "How was the flight?"}],
           "chosen": [{"role": "assistant", "content": "Fine."}],
           "rejected": [{"role": "assistant", "content": "Awful."}]}
    (example,) = tokenize_rows("preference", [row], tokenizer, 64)
    chosen = tokenizer.decode(example.input_ids[: example.split])
    assert chosen.startswith("<|user|>\nHow was the flight?<|end|>\n<|assistant|>\n")
    targets = [label for label in example.labels[: example.split] if label != -100]
    assert tokenizer.decode(targets) == "Fine.<|end|>\n"


@pytest.mark.parametrize(("task", "parameters", "expected"), [
    ("causal-lm", {"beta": 0.2}, "`training_parameters.beta` applies to task preference only"),
    ("preference", {"loss_type": "ipo", "label_smoothing": 0.1},
     "`training_parameters.label_smoothing` does not apply to loss_type 'ipo'"),
    ("preference", {"loss_type": "hinge"}, "`training_parameters.loss_type` must be one of"),
    ("preference", {"label_smoothing": 0.5}, "`training_parameters.label_smoothing` must be"),
], ids=["beta without preference", "ipo smoothing", "unknown loss", "smoothing 0.5"])
def test_preference_settings_are_checked(task: str, parameters: dict[str, Any],
                                         expected: str) -> None:
    problems = validate_training_parameters(parameters, task)
    assert len(problems) == 1 and expected in problems[0], problems


def test_preference_settings_are_valid() -> None:
    assert validate_training_parameters(
        {"beta": 0.5, "loss_type": "robust", "label_smoothing": 0.1,
         "max_tokens_per_micro_batch": 4096}, "preference") == []


def test_the_train_step_refuses_bad_pairs_before_anything_starts(tmp_path: Path) -> None:
    from kftune.components.train_lora.step import inputs

    data = demo.write_dataset_artifact(tmp_path / "data", [GOOD, {**GOOD, "chosen": ""},
                                                           {**GOOD, "rejected": " neutral"}])
    problems = inputs.pair_problems(data)
    assert len(problems) == 2
    assert "column 'chosen' is empty in 1 row(s) (rows 1)" in problems[0]
    assert "identical in 1 row(s) (rows 2)" in problems[1]
    missing = demo.write_dataset_artifact(tmp_path / "missing", [{"prompt": "p", "chosen": "c"}])
    (problem,) = inputs.pair_problems(missing)
    assert "missing ['rejected']" in problem


def test_pairs_collate_into_sequences_with_their_own_positions() -> None:
    from kftune.components.train_lora.pod import data

    pairs = [Example(0, (1, 2, 3, 4, 5), (-100, 3, -100, -100, 5), split=3),
             Example(1, (6, 7, 8, 9), (7, -100, 9, -100), split=2)]
    packed = data.collate_preference(pairs, 0, packing=True, pad_to_multiple_of=4)
    assert packed["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 0, 0]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 0, 1, 0, 1, 2]]
    assert packed["sequence_ids"].tolist() == [[0, 0, 0, 1, 1, 2, 2, 3, 3, 0, 0, 0]]
    assert packed["cu_seq_lens"].tolist() == [0, 3, 5, 7, 9, 12]
    assert packed["completion_tokens"].tolist() == [1, 1, 1, 1] and packed["num_sequences"] == 4
    padded = data.collate_preference(pairs, 0, packing=False)
    assert padded["input_ids"].tolist() == [[1, 2, 3], [4, 5, 0], [6, 7, 0], [8, 9, 0]]
    assert padded["sequence_ids"][:, 0].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize(("policy", "reference", "expected"), [
    ([-1.0, -2.0, -3.0, -1.0], [-1.0, -2.0, -3.0, -1.0],
     {"preference_accuracy": 0.5, "reward_accuracy": 0.0, "reward_margin": 0.0}),
    ([-1.0, -3.0, -2.0, -2.5], [-2.0, -2.0, -2.0, -2.0],
     {"preference_accuracy": 1.0, "reward_accuracy": 1.0, "reward_margin": 0.125}),
], ids=["the reference itself", "tuned"])
def test_preference_metrics(policy: list[float], reference: list[float],
                            expected: dict[str, float]) -> None:
    from kftune.components.evaluate.evaluation import preference_metrics

    assert preference_metrics(policy, reference, beta=0.1) == pytest.approx(expected)


def test_the_run_summary_judges_a_preference_run_by_preference_accuracy(tmp_path: Path) -> None:
    from kftune.pipelines.run import summarize

    metrics = {"base_reward_accuracy": 0.0, "tuned_reward_accuracy": 0.6,
               "base_preference_accuracy": 0.5, "tuned_preference_accuracy": 0.45}
    summary = summarize(metrics, tmp_path, None, 1.0)
    assert summary["primary_metric"] == "preference_accuracy"
    assert summary["improved"] is False


def test_a_preference_adapter_is_served_as_the_causal_lm_adapter_it_is() -> None:
    from kftune.components.deploy_model import deploy

    assert deploy.serving_kinds("preference") == deploy.serving_kinds("causal-lm")
    assert deploy.task_problems("preference", "auto", merged=False) == []


def test_the_chunked_per_token_head_equals_plain_cross_entropy_with_its_gradient() -> None:
    """The GPU head (`_ChunkedLinearTokenCrossEntropy`) is plain torch: checked here on CPU."""
    import torch
    from kftune.components.train_lora.pod import kernels

    torch.manual_seed(0)
    hidden = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64)
    labels = torch.randint(0, 50, (37,))
    labels[::5] = -100
    scale = torch.randn(37, dtype=torch.float64)
    chunked = kernels._ChunkedLinearTokenCrossEntropy.apply(hidden, weight, labels, 8)
    (chunked.double() * scale).sum().backward()
    grad = hidden.grad.clone()
    hidden.grad = None
    plain = torch.nn.functional.cross_entropy(hidden @ weight.t(), labels, reduction="none")
    (plain * scale).sum().backward()
    assert torch.allclose(chunked.double(), plain, atol=1e-6)
    assert torch.allclose(grad, hidden.grad, atol=1e-6)
