"""Peak RSS of export_model's streaming merge, against the model's size.

    .venv/bin/python bench/export_peak_rss.py [--model demo-bert|tiny-llama|llama-300m] [--check]

Builds the base Model artifact and a LoRA adapter with random B matrices (the merge's memory does
not depend on the values), then runs the merge in a fresh process and reads that process's peak
RSS (`ru_maxrss`), next to a baseline process that only imports the same libraries and builds
the task model on the meta device. `--check` also runs the logits check (float32 PeftModel, then
the merged model: one model at a time). Peak RSS is the child's `VmHWM`, which, unlike
`ru_maxrss`, does not include the parent's memory at fork.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys
from pathlib import Path
import torch
from kftune.components.export_model import export as ex
base, adapter, out, task, mode = sys.argv[1:6]
config = ex.task_config(Path(base), task, json.loads(sys.argv[6]), "bfloat16")
shapes, required, prefix, arch = ex.meta_model(config, task)
if mode != "baseline":
    ex.export_model(base, adapter, out, task=task,
                    config=ex.ExportConfig(max_shard_size="100MB",
                                           check_inputs=4 if mode == "check" else 0))
from kftune.components.export_model.merge import peak_rss_bytes
print(json.dumps({"peak_rss_bytes": peak_rss_bytes()}))
"""


def build(kind: str, root: Path) -> tuple[Path, Path, str, list[str] | None]:
    import torch
    from kftune.components.common import demo
    from kftune.components.common.artifacts import write_manifest
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoTokenizer,
        BertForSequenceClassification,
        LlamaConfig,
        LlamaForCausalLM,
    )

    base, adapter = root / "base", root / "adapter"
    labels = None
    if kind == "demo-bert":
        demo.demo_classifier_model(base)
        labels = list(demo.SENTIMENT_LABELS)
        model = BertForSequenceClassification.from_pretrained(base, num_labels=3)
        lora = LoraConfig(r=8, lora_alpha=16, target_modules=["query", "key", "value", "dense"],
                          modules_to_save=["classifier"], task_type="SEQ_CLS")
        task, tokenizer_dir = "sequence-classification", base
    else:
        tokenizer_dir = demo.tiny_causal_lm(root / "tiny")
        if kind == "tiny-llama":
            shutil.copytree(tokenizer_dir, base)
            model = LlamaForCausalLM.from_pretrained(base)
        else:  # a few hundred MB in bf16: the merge is the same code at any size
            torch.manual_seed(0)
            model = LlamaForCausalLM(LlamaConfig(
                vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=12,
                num_attention_heads=16, num_key_value_heads=8, tie_word_embeddings=False))
            model.to(torch.bfloat16).save_pretrained(base, max_shard_size="100MB")
            AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(base)
            write_manifest(base, {"kind": "model", "source": {"uri": "random://llama-300m"},
                                  "task": "causal-lm", "model_type": "llama",
                                  "trust_remote_code": False})
            model = model.float()
        lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
        task = "causal-lm"
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.02)
    peft_model.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(adapter)
    write_manifest(adapter, {"kind": "adapter", "task": task, "label_names": labels})
    return base, adapter, task, labels


def weights_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.glob("*.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="llama-300m",
                        choices=["demo-bert", "tiny-llama", "llama-300m"])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kftune-export-bench-") as scratch:
        root = Path(scratch)
        base, adapter, task, labels = build(args.model, root)
        result = {"model": args.model, "base_weights_bytes": weights_bytes(base.resolve())
                  if not base.is_symlink() else None}
        modes = ["baseline", "merge"] + (["check"] if args.check else [])
        for mode in modes:
            out = root / f"out-{mode}"
            completed = subprocess.run(
                [sys.executable, "-c", CHILD, str(base), str(adapter), str(out), task, mode,
                 json.dumps(labels)], capture_output=True, text=True, check=False)
            if completed.returncode:
                sys.exit(completed.stderr[-3000:])
            result[f"{mode}_peak_rss_bytes"] = json.loads(
                completed.stdout.strip().splitlines()[-1])["peak_rss_bytes"]
            if mode != "baseline":
                result["merged_weights_bytes"] = weights_bytes(out)
        result["base_weights_bytes"] = sum(
            (base / name).resolve().stat().st_size for name in
            [p.name for p in base.glob("*.safetensors")])
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
