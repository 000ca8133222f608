"""Peak RSS of export_model's streaming merge, against the model's size.

    .venv/bin/python bench/export_peak_rss.py [--model demo-bert|tiny-llama|llama-300m|llama3-8b]
        [--check] [--modes baseline,merge,check] [--workdir DIR]

`llama3-8b` is Llama-3-8B's shape (16 GB in bf16), random-init weights written shard by shard
(5 GB shards, drawn on the GPU when there is one) so that building it never holds the model; its
adapter is LoRA r=16 on all linear projections with random B, saved by PEFT from the model built
on the meta device. With `--workdir` the artifacts are kept there and reused by a later run (so
another checkout's code can be measured on the same files); each output is deleted once measured.

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
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys
from pathlib import Path
import torch
from kftune.components.export_model import export as ex
base, adapter, out, task, mode, labels, shard = sys.argv[1:8]
config = ex.task_config(Path(base), task, json.loads(labels), "bfloat16")
shapes, required, prefix, arch = ex.meta_model(config, task)
if mode != "baseline":
    ex.export_model(base, adapter, out, task=task,
                    config=ex.ExportConfig(max_shard_size=shard,
                                           check_inputs=4 if mode == "check" else 0))
from kftune.components.export_model.merge import peak_rss_bytes
manifest = Path(out) / "manifest.json"
check = json.loads(manifest.read_text())["check"] if mode != "baseline" else None
print(json.dumps({"peak_rss_bytes": peak_rss_bytes(), "check": check}))
"""

LLAMA3_8B = {"vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
             "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
             "max_position_embeddings": 8192, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
             "tie_word_embeddings": False}


def write_random_llama(directory: Path, settings: dict, shard_bytes: int = 5 * 10**9) -> None:
    """A random-init bf16 Llama written shard by shard: one shard in memory at a time."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**settings, dtype="bfloat16")
    with torch.device("meta"):
        shapes = {name: tuple(t.shape) for name, t in LlamaForCausalLM(config).state_dict().items()}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator(device).manual_seed(0)
    groups, filled = [[]], 0
    for name, shape in shapes.items():
        size = math.prod(shape) * 2
        if groups[-1] and filled + size > shard_bytes:
            groups.append([])
            filled = 0
        groups[-1].append(name)
        filled += size
    directory.mkdir(parents=True)
    weight_map = {}
    for index, names in enumerate(groups):
        file = f"model-{index + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {name: (torch.ones(shapes[name], dtype=torch.bfloat16) if name.endswith(
            "norm.weight") else (torch.randn(shapes[name], generator=generator, device=device)
                                 * 0.02).to(torch.bfloat16).cpu()) for name in names}
        save_file(tensors, str(directory / file), metadata={"format": "pt"})
        del tensors
        weight_map.update(dict.fromkeys(names, file))
    total = sum(math.prod(shape) * 2 for shape in shapes.values())
    (directory / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    config.save_pretrained(directory)


def random_adapter_on_meta(base: Path, adapter: Path) -> None:
    """PEFT's adapter for the meta-device model: LoRA r=16 on all linear layers, random B."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base))
    peft_model = get_peft_model(model, LoraConfig(
        r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, module in peft_model.named_modules():
            if name.endswith(("lora_A.default", "lora_B.default")):
                module.to_empty(device="cpu")
                if "lora_A" in name:  # PEFT's own init's range, kaiming-uniform
                    bound = 1 / math.sqrt(module.in_features)
                    module.weight.uniform_(-bound, bound)
                else:
                    module.weight.normal_(0, 0.02)
    peft_model.save_pretrained(adapter)

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
    if kind == "llama3-8b":
        write_random_llama(base, LLAMA3_8B)
        tokenizer_dir = demo.tiny_causal_lm(root / "tiny")
        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(base)
        write_manifest(base, {"kind": "model", "source": {"uri": "random://llama3-8b"},
                              "task": "causal-lm", "model_type": "llama",
                              "trust_remote_code": False})
        random_adapter_on_meta(base, adapter)
        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(adapter)
        write_manifest(adapter, {"kind": "adapter", "task": "causal-lm", "label_names": None})
        return base, adapter, "causal-lm", None
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


def measure(root: Path, task: str, labels: list[str] | None, mode: str, shard: str) -> dict:
    """One export in a fresh process: its peak RSS, wall time and logits check; output deleted."""
    out = root / f"out-{mode}"
    started = time.monotonic()
    completed = subprocess.run(
        [sys.executable, "-c", CHILD, str(root / "base"), str(root / "adapter"), str(out), task,
         mode, json.dumps(labels), shard], capture_output=True, text=True, check=False)
    if completed.returncode:
        sys.exit(completed.stderr[-3000:])
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    figures = {f"{mode}_peak_rss_bytes": result["peak_rss_bytes"],
               f"{mode}_wall_s": round(time.monotonic() - started, 1)}
    if mode != "baseline":
        figures["merged_weights_bytes"] = weights_bytes(out)
    if result["check"]:
        figures["check"] = result["check"]
    shutil.rmtree(out, ignore_errors=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="llama-300m",
                        choices=["demo-bert", "tiny-llama", "llama-300m", "llama3-8b"])
    parser.add_argument("--check", action="store_true", help="also --modes' check")
    parser.add_argument("--modes", default=None, help="comma list of baseline, merge, check")
    parser.add_argument("--workdir", default=None, help="keep (and reuse) the artifacts here")
    args = parser.parse_args()
    modes = args.modes.split(",") if args.modes else (
        ["baseline", "merge"] + (["check"] if args.check else []))
    shard = "5GB" if args.model == "llama3-8b" else "100MB"
    with tempfile.TemporaryDirectory(prefix="kftune-export-bench-") as scratch:
        root = Path(args.workdir or scratch)
        started = time.monotonic()
        if (root / "adapter" / "manifest.json").is_file():
            _, _, task, labels = root, root, *json.loads((root / "task.json").read_text())
        else:
            root.mkdir(parents=True, exist_ok=True)
            _, _, task, labels = build(args.model, root)
            (root / "task.json").write_text(json.dumps([task, labels]))
        result = {"model": args.model, "build_s": round(time.monotonic() - started, 1),
                  "max_shard_size": shard, "base_weights_bytes": sum(
                      path.resolve().stat().st_size for path in (root / "base").glob(
                          "*.safetensors"))}
        for mode in modes:
            result.update(measure(root, task, labels, mode, shard))
            print(json.dumps({"mode": mode, **result}), flush=True)
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
