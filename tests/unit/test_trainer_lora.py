"""The trainer pod's LoRA wrapping: a lora_config PEFT refuses is one clear InputError."""

from __future__ import annotations

import pytest
from kftune.components.common.errors import InputError
from kftune.components.train_lora.config import TrainConfig
from kftune.components.train_lora.pod.trainer import wrap_with_lora
from transformers import BertConfig, BertForSequenceClassification


def _tiny_bert() -> BertForSequenceClassification:
    config = BertConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                        intermediate_size=8, max_position_embeddings=16, num_labels=2)
    return BertForSequenceClassification(config)


def _config(lora_config: dict) -> TrainConfig:
    return TrainConfig(task="sequence-classification", model_dir="/m", data_dir="/d",
                       output_dir="/o", lora_config=lora_config)


@pytest.mark.parametrize(
    ("lora_config", "reason"),
    [
        ({"target_modules": "all-linear", "layers_to_transform": [0]},
         "`layers_to_transform` cannot be used when `target_modules` is a str."),
        ({"target_modules": ["query"], "use_dora": True, "lora_bias": True},
         "The argument lora_bias=True is not supported for DoRA"),
    ],
    ids=["layers_to_transform with a pattern", "dora with lora_bias"],
)
def test_a_lora_config_peft_refuses_is_one_message(lora_config: dict, reason: str) -> None:
    with pytest.raises(InputError) as caught:
        wrap_with_lora(_tiny_bert(), _config(lora_config))
    (problem,) = caught.value.problems
    assert problem.startswith(f"`lora_config` = {lora_config!r} is refused by peft.LoraConfig: ")
    assert reason in problem


def test_a_valid_lora_config_wraps_the_model() -> None:
    model = wrap_with_lora(_tiny_bert(), _config({"r": 2, "target_modules": ["query", "value"]}))
    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    assert any("lora_A" in name for name in trainable)
