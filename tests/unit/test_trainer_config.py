"""The trainer's config checks: pure, table-driven, messages asserted."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
from kftune.components.common.errors import InputError
from kftune.components.train_lora.config import (
    TrainConfig,
    TrainingSettings,
    validate_lora_config,
    validate_training_parameters,
)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    value: dict
    expected_fragments: tuple[str, ...] = ()  # empty: valid


TRAINING_CASES = [
    Case("empty", {}),
    Case("reference recipe", {
        "output_dir": "test_trainer", "save_strategy": "no", "eval_strategy": "no",
        "do_eval": False, "disable_tqdm": True, "log_level": "info",
        "per_device_train_batch_size": 8, "num_train_epochs": 3, "learning_rate": 2e-5,
        "report_to": "none",
    }),
    Case("common fields", {
        "learning_rate": 2e-4, "max_steps": 100, "gradient_accumulation_steps": 4,
        "warmup_steps": 0.1, "lr_scheduler_type": "cosine", "weight_decay": 0.01, "seed": 7,
        "bf16": True, "gradient_checkpointing": True, "logging_steps": 5, "save_steps": 50,
        "save_total_limit": 2, "max_grad_norm": 1.0, "optim": "adamw_torch", "adam_beta1": 0.9,
        "adam_beta2": 0.95, "adam_epsilon": 1e-8, "dataloader_num_workers": 2,
    }),
    Case("step counts written as whole floats", {"warmup_steps": 10.0, "save_steps": 500.0,
                                                 "logging_steps": 0.05}),
    Case("fractional step count", {"save_steps": 2.5},
         ("`training_parameters.save_steps` must be a step count (integer >= 1) or a fraction",
          "got 2.5")),
    Case("kftune extras", {"max_seq_length": 2048, "packing": False, "global_batch_size": 64,
                           "shuffle": False}),
    Case("unknown key with suggestion", {"learning_rat": 1e-4},
         ("`training_parameters.learning_rat`", "unknown key", "did you mean `learning_rate`")),
    Case("unknown key without near name", {"zzzzqqq": 1},
         ("`training_parameters.zzzzqqq`", "unknown key 'zzzzqqq'")),
    Case("existing but unsupported field", {"neftune_noise_alpha": 5},
         ("`training_parameters.neftune_noise_alpha`", "does not support")),
    Case("unsupported switch on", {"eval_strategy": "steps"},
         ("`training_parameters.eval_strategy` = 'steps' is not supported", "'no'")),
    Case("fp16 on", {"fp16": True}, ("`training_parameters.fp16` = True", "use bf16")),
    Case("push to hub", {"push_to_hub": True}, ("`training_parameters.push_to_hub`",)),
    Case("negative learning rate", {"learning_rate": -1.0},
         ("`training_parameters.learning_rate` must be a number > 0, got -1.0",)),
    Case("zero batch size", {"per_device_train_batch_size": 0},
         ("`training_parameters.per_device_train_batch_size` must be an integer >= 1, got 0",)),
    Case("bool is not an int", {"gradient_accumulation_steps": True},
         ("`training_parameters.gradient_accumulation_steps` must be an integer >= 1, got True",)),
    Case("unknown scheduler", {"lr_scheduler_type": "cosinus"},
         ("`training_parameters.lr_scheduler_type` must be one of", "got 'cosinus'")),
    Case("unsupported optimizer", {"optim": "adamw_bnb_8bit"},
         ("`training_parameters.optim` must be one of", "got 'adamw_bnb_8bit'")),
    Case("warmup ratio out of range", {"warmup_ratio": 1.5},
         ("`training_parameters.warmup_ratio` must be a number in [0, 1], got 1.5",)),
    Case("warmup both ways", {"warmup_ratio": 0.1, "warmup_steps": 10},
         ("`training_parameters.warmup_steps` and `training_parameters.warmup_ratio`",)),
    Case("global batch and accumulation", {"global_batch_size": 32,
                                           "gradient_accumulation_steps": 2},
         ("`training_parameters.global_batch_size`", "set only one")),
    Case("token budget", {"max_tokens_per_micro_batch": 16384, "max_seq_length": 4096,
                          "gradient_accumulation_steps": 2}),
    Case("token budget below max_seq_length", {"max_tokens_per_micro_batch": 512},
         ("`training_parameters.max_tokens_per_micro_batch` must be >= max_seq_length (1024)",
          "got 512")),
    Case("token budget without packing", {"max_tokens_per_micro_batch": 4096, "packing": False},
         ("`training_parameters.max_tokens_per_micro_batch` needs packing",)),
    Case("token budget and global batch", {"max_tokens_per_micro_batch": 4096,
                                           "global_batch_size": 64},
         ("`training_parameters.max_tokens_per_micro_batch` and "
          "`training_parameters.global_batch_size` are both set",)),
    Case("pad to multiple", {"pad_to_multiple_of": 16}),
    Case("pad to multiple zero", {"pad_to_multiple_of": 0},
         ("`training_parameters.pad_to_multiple_of` must be an integer >= 1, got 0",)),
    Case("token budget not a number", {"max_tokens_per_micro_batch": "16k"},
         ("`training_parameters.max_tokens_per_micro_batch` must be an integer >= 1, got '16k'",)),
    Case("report to wandb", {"report_to": "wandb"}, ("`training_parameters.report_to`",)),
    Case("several problems at once", {"learning_rate": 0, "max_seq_length": 0, "foo": 1},
         ("learning_rate", "max_seq_length", "'foo'")),
]


def assert_problems(problems: list[str], case: Case) -> None:
    """No problems for a valid case; else every expected fragment among the messages."""
    if not case.expected_fragments:
        assert problems == []
        return
    joined = "\n".join(problems)
    for fragment in case.expected_fragments:
        assert fragment in joined


@pytest.mark.parametrize("case", TRAINING_CASES, ids=[case.name for case in TRAINING_CASES])
def test_validate_training_parameters(case: Case) -> None:
    assert_problems(validate_training_parameters(case.value), case)


def test_token_budget_is_for_causal_lm_only() -> None:
    parameters = {"max_tokens_per_micro_batch": 4096}
    assert validate_training_parameters(parameters, "causal-lm") == []
    (problem,) = validate_training_parameters(parameters, "sequence-classification")
    assert problem.startswith("`training_parameters.max_tokens_per_micro_batch` applies to task "
                              "causal-lm only, got it (4096) with task 'sequence-classification'")


LORA_CASES = [
    Case("empty", {}),
    Case("reference", {"r": 8, "lora_alpha": 8, "lora_dropout": 0.1, "bias": "none"}),
    Case("full", {"r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj"],
                  "modules_to_save": ["lm_head"], "use_rslora": True, "init_lora_weights":
                  "gaussian", "layers_to_transform": [0, 1], "task_type": "CAUSAL_LM"}),
    Case("all-linear", {"target_modules": "all-linear"}),
    Case("zero rank", {"r": 0}, ("`lora_config.r` must be an integer >= 1, got 0",)),
    Case("dropout 1", {"lora_dropout": 1.0},
         ("`lora_config.lora_dropout` must be a number in [0, 1), got 1.0",)),
    Case("bad bias", {"bias": "some"}, ("`lora_config.bias` must be one of", "got 'some'")),
    Case("empty target list", {"target_modules": []}, ("`lora_config.target_modules` must be",)),
    Case("typo", {"lora_alfa": 8}, ("`lora_config.lora_alfa`", "did you mean `lora_alpha`")),
    Case("unsupported field", {"loftq_config": {}},
         ("`lora_config.loftq_config` is a peft.LoraConfig field that kftune does not support",)),
    Case("bad task type", {"task_type": "TOKEN_CLS"}, ("`lora_config.task_type` must be one of",)),
]


@pytest.mark.parametrize("case", LORA_CASES, ids=[case.name for case in LORA_CASES])
def test_validate_lora_config(case: Case) -> None:
    assert_problems(validate_lora_config(case.value), case)


def test_validators_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from kftune.components.train_lora import config\n"
        "config.validate_training_parameters({'learning_rate': 1e-4})\n"
        "config.validate_lora_config({'r': 4})\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _config(**overrides) -> dict:
    return {"task": "causal-lm", "model_dir": "/m", "data_dir": "/d", "output_dir": "/o",
            **overrides}


def test_train_config_reports_every_problem() -> None:
    with pytest.raises(InputError) as caught:
        TrainConfig(**_config(task="translation", training_parameters={"learning_rat": 1},
                              lora_config={"r": -1}, model_dir=""))
    message = str(caught.value)
    assert "`task` must be one of causal-lm, sequence-classification; got 'translation'" in message
    assert "`model_dir` must be a non-empty path, got ''" in message
    assert "did you mean `learning_rate`" in message
    assert "`lora_config.r` must be an integer >= 1, got -1" in message


def test_task_type_must_match_task() -> None:
    with pytest.raises(InputError, match="`lora_config.task_type` must be 'CAUSAL_LM'"):
        TrainConfig(**_config(lora_config={"task_type": "SEQ_CLS"}))


def test_config_json_round_trip(tmp_path) -> None:
    config = TrainConfig(**_config(training_parameters={"learning_rate": 1e-3},
                                   lora_config={"r": 4}, merge=True))
    path = tmp_path / "config.json"
    path.write_text(config.to_json())
    assert TrainConfig.from_json(path) == config


def test_config_json_unknown_and_missing_keys(tmp_path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"task": "causal-lm", "model_dir": "/m", "extra": 1}))
    with pytest.raises(InputError) as caught:
        TrainConfig.from_json(path)
    assert "unknown key 'extra'" in str(caught.value)
    assert "missing 'data_dir'" in str(caught.value)


@pytest.mark.parametrize(
    ("global_batch", "per_device", "world", "expected"),
    [(None, 4, 2, 1), (32, 4, 2, 4), (8, 8, 1, 1)],
    ids=["no global batch", "derived", "exact"],
)
def test_accumulation_steps(global_batch, per_device, world, expected) -> None:
    settings = TrainingSettings(global_batch_size=global_batch,
                                per_device_train_batch_size=per_device)
    assert settings.accumulation_steps(world) == expected


def test_global_batch_that_does_not_fit_world_size() -> None:
    settings = TrainingSettings(global_batch_size=30, per_device_train_batch_size=4)
    with pytest.raises(InputError) as caught:
        settings.accumulation_steps(4)
    assert ("`training_parameters.global_batch_size` must be a multiple of "
            "per_device_train_batch_size x world size = 4 x 4 = 16, got 30") in str(caught.value)
