"""`fsdp`, `fsdp_config` and `quantization`: checked at the first boundary, resolved once."""

from __future__ import annotations

import dataclasses

import pytest
from kftune.components.common.errors import InputError
from kftune.components.train_lora import parallelism
from kftune.components.train_lora.config import validate_training_parameters
from support.train_step import plan_of as plan


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    parameters: dict
    problems: tuple[str, ...] = ()


CASES = [
    Case("reference spelling", {"fsdp": "full_shard auto_wrap"}),
    Case("list spelling", {"fsdp": ["hybrid_shard", "auto_wrap"],
                           "fsdp_config": {"activation_checkpointing": True,
                                           "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"],
                                           "use_orig_params": True, "version": 2}}),
    Case("auto", {"fsdp": "auto"}),
    Case("off", {"fsdp": ""}),
    Case("qlora", {"quantization": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                                    "bnb_4bit_compute_dtype": "bfloat16",
                                    "bnb_4bit_use_double_quant": True}}),
    Case("unknown word", {"fsdp": "full_shard sharded"},
         ("`training_parameters.fsdp` = 'full_shard sharded': unknown word(s) ['sharded']",)),
    Case("offload refused", {"fsdp": "full_shard offload"},
         ("'offload': CPU offload of the sharded weights is not supported",)),
    Case("two modes", {"fsdp": "full_shard shard_grad_op"},
         ("names 2 sharding modes ['full_shard', 'shard_grad_op']; pick one",)),
    Case("not a string", {"fsdp": True},
         ("`training_parameters.fsdp` must be a string or a list of strings",)),
    Case("config keys that cannot apply", {"fsdp": "full_shard", "fsdp_config": {
        "min_num_params": 1e6, "offload_params": True, "version": 1, "bogus": 1}},
         ("`training_parameters.fsdp_config.min_num_params` is not supported: kftune shards per "
          "layer", "`training_parameters.fsdp_config.offload_params` is not supported",
          "`training_parameters.fsdp_config.version` must be 2 (FSDP2), got 1",
          "`training_parameters.fsdp_config.bogus` is not an FSDP setting kftune knows")),
    Case("fsdp_config without sharding", {"fsdp_config": {"activation_checkpointing": True}},
         ("`training_parameters.fsdp_config` is set but `training_parameters.fsdp` shards "
          "nothing",)),
    Case("4-bit with sharding", {"fsdp": "full_shard", "quantization": {"load_in_4bit": True}},
         ("`training_parameters.quantization` (4-bit) cannot be combined with `fsdp`",)),
    Case("4-bit with use_cpu", {"use_cpu": True, "quantization": {"load_in_4bit": True}},
         ("`training_parameters.quantization` (4-bit) needs CUDA GPUs, got use_cpu true",)),
    Case("8-bit", {"quantization": {"load_in_8bit": True}},
         ("`training_parameters.quantization.load_in_8bit`: 8-bit loading is not supported",)),
    Case("bad quant fields", {"quantization": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf5",
                                               "bnb_4bit_compute_dtype": "int8", "x": 1}},
         ("`training_parameters.quantization.bnb_4bit_quant_type` must be one of nf4, fp4",
          "`training_parameters.quantization.bnb_4bit_compute_dtype` must be one of bfloat16",
          "`training_parameters.quantization.x` is not a BitsAndBytesConfig field")),
    Case("4-bit not asked", {"quantization": {"bnb_4bit_quant_type": "nf4"}},
         ("`training_parameters.quantization` must set load_in_4bit: true",)),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_settings_are_checked_at_the_first_boundary(case):
    problems = validate_training_parameters(case.parameters, "causal-lm")
    assert len(problems) == (1 if case.problems else 0), problems
    for fragment in case.problems:
        assert fragment in problems[0]


@pytest.mark.parametrize(
    ("fsdp", "options", "expected"),
    [
        ("", {}, parallelism.Parallelism()),
        ("no_shard", {}, parallelism.Parallelism()),
        ("full_shard auto_wrap", {}, parallelism.Parallelism(mode="shard")),
        ("shard_grad_op", {}, parallelism.Parallelism(mode="shard", reshard_after_forward=False)),
        ("hybrid_shard", {"reshard_after_forward": False, "activation_checkpointing": True},
         parallelism.Parallelism(mode="shard", hybrid=True, reshard_after_forward=False,
                                 activation_checkpointing=True)),
        ("hybrid_shard_zero2", {"transformer_layer_cls_to_wrap": "BertLayer"},
         parallelism.Parallelism(mode="shard", hybrid=True, reshard_after_forward=False,
                                 layer_classes=("BertLayer",))),
        ("auto", {}, parallelism.Parallelism(mode="auto")),
    ],
    ids=["off", "no_shard is DDP", "full_shard", "shard_grad_op", "hybrid, options",
         "hybrid zero2, layer class", "auto"],
)
def test_layout_resolves_from_the_reference_spellings(fsdp, options, expected):
    parameters = {"fsdp": fsdp, **({"fsdp_config": options} if options else {})}
    assert validate_training_parameters(parameters) == []
    assert parallelism.resolve(parameters) == expected


@pytest.mark.parametrize(
    ("parameters", "fragment"),
    [({"fsdp": "full_shard"}, "`merge` needs the whole base model in one process"),
     ({"quantization": {"load_in_4bit": True}}, "`merge` cannot merge into a 4-bit base")],
    ids=["sharded", "4-bit"])
def test_merge_needs_a_whole_bf16_base(parameters, fragment):
    with pytest.raises(InputError) as raised:
        plan(task="causal-lm", training_parameters=parameters, lora_config={}, num_workers=1,
             num_procs_per_worker=1, resources_per_worker={}, backend="local", merge=True)
    assert fragment in str(raised.value)
