"""The training settings: their checks (table-driven, messages asserted), the config file, and
the documentation derived from them."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from kftune.components.common.errors import InputError
from kftune.components.train_lora.component import train_lora
from kftune.components.train_lora.config import (
    SETTINGS,
    TrainConfig,
    TrainingSettings,
    readme_table,
    training_parameters_help,
    validate_lora_config,
    validate_training_parameters,
)
from kftune.components.train_lora.step.spec import DEFAULT_TIMEOUT_MINUTES
from kftune.pipelines import parameters
from support.train_step import plan_of as plan


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
         ("`training_parameters.learning_rate` must be a finite number > 0, got -1.0",)),
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
    Case("infinite learning rate", {"learning_rate": float("inf")},
         ("`training_parameters.learning_rate` must be a finite number > 0, got inf",)),
    Case("NaN beta", {"adam_beta1": float("nan")},
         ("`training_parameters.adam_beta1` must be a number in [0, 1), got nan",)),
    Case("infinite save steps", {"save_steps": float("inf")},
         ("`training_parameters.save_steps` must be a step count",)),
    Case("scheduler kwargs the scheduler takes",
         {"lr_scheduler_type": "cosine_with_restarts", "lr_scheduler_kwargs": {"num_cycles": 2}}),
    Case("scheduler kwarg of another scheduler",
         {"lr_scheduler_kwargs": {"num_cycles": 2}},
         ("`training_parameters.lr_scheduler_kwargs.num_cycles` is not an argument of the linear "
          "scheduler (transformers.get_linear_schedule_with_warmup); it takes last_epoch",)),
    Case("constant scheduler drops its kwargs",
         {"lr_scheduler_type": "constant", "lr_scheduler_kwargs": {"last_epoch": 3}},
         ("`training_parameters.lr_scheduler_kwargs.last_epoch` is not an argument of the "
          "constant scheduler", "it takes no extra arguments")),
    Case("checkpointing kwargs torch takes",
         {"gradient_checkpointing_kwargs": {"use_reentrant": False, "preserve_rng_state": True}}),
    Case("checkpointing kwarg torch does not take",
         {"gradient_checkpointing_kwargs": {"use_reentrant": False, "reentrant": True}},
         ("`training_parameters.gradient_checkpointing_kwargs.reentrant` is not an argument of "
          "torch.utils.checkpoint.checkpoint",)),
    Case("nested kwargs reported beside other problems",
         {"learning_rate": 0, "lr_scheduler_kwargs": {"power": 2}},
         ("`training_parameters.learning_rate`",
          "`training_parameters.lr_scheduler_kwargs.power`")),
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


def test_token_budget_is_for_causal_lm_and_preference_only() -> None:
    parameters = {"max_tokens_per_micro_batch": 4096}
    assert validate_training_parameters(parameters, "causal-lm") == []
    assert validate_training_parameters(parameters, "preference") == []
    (problem,) = validate_training_parameters(parameters, "sequence-classification")
    assert problem.startswith("`training_parameters.max_tokens_per_micro_batch` applies to tasks "
                              "causal-lm and preference only, got it (4096) with task "
                              "'sequence-classification'")


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
    Case("peft cross-field rule", {"target_modules": "all-linear", "layers_to_transform": [0]},
         ("`lora_config` = {'target_modules': 'all-linear', 'layers_to_transform': [0]} is "
          "refused by peft.LoraConfig: `layers_to_transform` cannot be used when `target_modules` "
          "is a str.",)),
    Case("peft rule between dora and lora_bias", {"use_dora": True, "lora_bias": True},
         ("is refused by peft.LoraConfig: The argument lora_bias=True is not supported for DoRA",)),
    Case("layers_pattern alone", {"layers_pattern": "layers"},
         ("is refused by peft.LoraConfig: When `layers_pattern` is specified, "
          "`layers_to_transform` must also be specified",)),

]


@pytest.mark.parametrize("case", LORA_CASES, ids=[case.name for case in LORA_CASES])
def test_validate_lora_config(case: Case) -> None:
    assert_problems(validate_lora_config(case.value), case)


def test_training_parameter_checks_do_not_import_torch() -> None:
    # The light step checks plain training parameters without torch; only the nested kwargs
    # dicts (checked against their callee's signature) and lora_config (built with peft) need it.
    code = (
        "import sys\n"
        "from kftune.components.train_lora import config\n"
        "assert config.validate_training_parameters({'learning_rate': 1e-4}) == []\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _config(**overrides) -> dict:
    return {"task": "causal-lm", "model_dir": "/m", "data_dir": "/d", "output_dir": "/o",
            **overrides}


def test_the_step_check_reports_every_problem() -> None:
    with pytest.raises(InputError) as caught:
        plan(task="translation", training_parameters={"learning_rat": 1},
             lora_config={"r": -1}, num_workers=1, num_procs_per_worker="1",
             resources_per_worker={}, backend="local", image="", timeout_minutes=10,
             kubernetes_options={})
    message = str(caught.value)
    assert "`task` must be one of causal-lm, sequence-classification, preference; got 'translation'" in message
    assert "did you mean `learning_rate`" in message
    assert "`lora_config.r` must be an integer >= 1, got -1" in message


def test_task_type_must_match_task() -> None:
    (problem,) = validate_lora_config({"task_type": "SEQ_CLS"}, "causal-lm")
    assert problem.startswith("`lora_config.task_type` must be 'CAUSAL_LM'")


def test_config_file_round_trip(tmp_path) -> None:
    config = TrainConfig(**_config(training_parameters={"learning_rate": 1e-3},
                                   lora_config={"r": 4}, merge=True))
    path = config.to_file(tmp_path / "config.json")
    assert TrainConfig.from_file(path) == config


def test_config_file_unknown_and_missing_keys(tmp_path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"task": "causal-lm", "model_dir": "/m", "extra": 1}))
    with pytest.raises(InputError) as caught:
        TrainConfig.from_file(path)
    assert "unknown key 'extra'" in str(caught.value)
    assert "missing 'data_dir'" in str(caught.value)


def test_config_file_of_the_wrong_shape(tmp_path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_config(task="translation", model_dir="", lora_config=[],
                                       merge="yes")))
    with pytest.raises(InputError) as caught:
        TrainConfig.from_file(path)
    assert caught.value.problems == [
        "`task` must be one of causal-lm, sequence-classification, preference; got 'translation'",
        "`model_dir` must be a non-empty path, got ''",
        "`lora_config` must be an object (dict), got []",
        "`merge` must be true or false, got 'yes'",
    ]


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


def test_a_huge_dict_is_refused_with_one_short_line() -> None:
    huge = {f"key_{index}": "x" * 100 for index in range(100_000)}
    for problems in (validate_training_parameters(huge), validate_lora_config(huge)):
        (problem,) = problems
        assert "bytes as JSON, more than the 65536 bytes kftune accepts" in problem
        assert len(problem) < 200


def test_many_bad_keys_are_listed_up_to_a_bound() -> None:
    problems = validate_training_parameters({f"unknown_{index}": 1 for index in range(500)})
    assert len(problems) == 21
    assert problems[-1] == ("`training_parameters` has more problems; fix the ones above first")


def test_a_long_value_is_cut_in_the_message() -> None:
    (problem,) = validate_training_parameters({"optim": "x" * 5000})
    assert problem.endswith("got '" + "x" * 79 + "... (5002 characters)")


def test_readme_table_is_generated_from_the_settings() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    start = readme.index("<!-- training-parameters:start -->\n") + len(
        "<!-- training-parameters:start -->\n")
    end = readme.index("<!-- training-parameters:end -->")
    assert readme[start:end] == readme_table(), (
        "README.md's table is stale: paste `python -m kftune.components.train_lora.config`"
    )
    for name in SETTINGS:
        assert f"| `{name}`" in readme


def test_component_documents_every_kftune_key() -> None:
    description = train_lora.component_spec.inputs["training_parameters"].description
    assert training_parameters_help() in " ".join(description.split())
    for name, field in SETTINGS.items():
        assert name in description
        if field.metadata["kftune"]:
            assert f"`{name}` (default" in description


def test_timeout_default_is_one_value() -> None:
    assert train_lora.component_spec.inputs["timeout_minutes"].default == DEFAULT_TIMEOUT_MINUTES
    assert parameters.pipeline_parameters()["timeout_minutes"][1] == DEFAULT_TIMEOUT_MINUTES
