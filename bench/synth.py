"""Synthetic inputs shared by every benchmark run: model shapes, a word-level tokenizer, data.

Nothing here downloads anything. The two model shapes are the published Llama-3.2-1B and
Llama-3.1-8B configurations, written out by hand; weights are random (throughput does not depend
on weight values). The tokenizer maps the word ``w<id>`` to token id ``<id>``, so a synthetic
"text" tokenizes to exactly the token sequence it was written from: the reference recipe and the
kftune trainer see the same tokens, through the same Dataset artifact (data.parquet + manifest).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

VOCAB_SIZE = 128256
BOS_ID, EOS_ID, UNK_ID = 128000, 128001, 128002
SPECIAL = {BOS_ID: "<|begin_of_text|>", EOS_ID: "<|end_of_text|>", UNK_ID: "<|unk|>"}

_LLAMA_COMMON: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": BOS_ID,
    "eos_token_id": EOS_ID,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": VOCAB_SIZE,
}

# Published configs of meta-llama/Llama-3.2-1B and meta-llama/Llama-3.1-8B (hidden sizes, layers,
# heads, rope scaling), hardcoded so that nothing is fetched.
SHAPES: dict[str, dict[str, Any]] = {
    "1b": {
        **_LLAMA_COMMON,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "head_dim": 64,
        "tie_word_embeddings": True,
        "rope_scaling": {
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
    },
    "8b": {
        **_LLAMA_COMMON,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "head_dim": 128,
        "tie_word_embeddings": False,
        "rope_scaling": {
            "factor": 8.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
    },
}

# A tiny shape for CPU smoke runs of the benchmark driver (not a benchmark).
SHAPES["tiny"] = {
    **SHAPES["1b"],
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}

# The two LoRA configurations of the issue: the reference's, and a modern one.
LORA_CONFIGS: dict[str, dict[str, Any]] = {
    "r8qv": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
    "r16all": {
        "r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.0,
        "target_modules": [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
    },
}

MIN_LEN, MAX_LEN, MEDIAN_LEN, SIGMA = 32, 2048, 350, 0.8


def hf_config(shape: str):
    """A transformers LlamaConfig for one of SHAPES."""
    from transformers import LlamaConfig

    fields = {k: v for k, v in SHAPES[shape].items() if k not in ("architectures", "model_type")}
    config = LlamaConfig(**fields)
    config.architectures = ["LlamaForCausalLM"]
    return config


def example_lengths(rows: int, seed: int = 0) -> np.ndarray:
    """Log-normal lengths, median MEDIAN_LEN, clipped to [MIN_LEN, MAX_LEN]."""
    rng = np.random.default_rng(seed)
    lengths = rng.lognormal(mean=math.log(MEDIAN_LEN), sigma=SIGMA, size=rows)
    return np.clip(np.round(lengths), MIN_LEN, MAX_LEN).astype(np.int64)


def example_tokens(lengths: np.ndarray, seed: int = 0) -> list[np.ndarray]:
    """Token ids with something to learn: a Zipf unigram law plus per-example repeated motifs."""
    rng = np.random.default_rng(seed + 1)
    permutation = rng.permutation(BOS_ID)  # ids 0..127999, none special
    rows = []
    for length in lengths:
        ranks = np.minimum(rng.zipf(1.3, size=int(length)), BOS_ID) - 1
        tokens = permutation[ranks]
        motif = permutation[rng.integers(0, 4000, size=8)]
        repeat = rng.random(int(length)) < 0.3
        tokens[repeat] = motif[np.arange(int(length))[repeat] % 8]
        rows.append(tokens.astype(np.int64))
    return rows


def token_stats(lengths: np.ndarray) -> dict[str, float]:
    """Mean length and the token-weighted attended length E[len^2]/E[len]."""
    lengths = lengths.astype(np.float64)
    return {
        "mean_len": float(lengths.mean()),
        "median_len": float(np.median(lengths)),
        "attended_len": float((lengths**2).mean() / lengths.mean()),
    }


def build_tokenizer():
    """A fast word-level tokenizer: 'w<id>' -> id; special tokens as in Llama 3."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB_SIZE)}
    for token_id, name in SPECIAL.items():
        del vocab[f"w{token_id}"]
        vocab[name] = token_id
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL[UNK_ID]))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=SPECIAL[BOS_ID],
        eos_token=SPECIAL[EOS_ID],
        unk_token=SPECIAL[UNK_ID],
        model_max_length=MAX_LEN,
    )
    return fast


def write_dataset(directory: Path, rows: int, seed: int = 0) -> dict[str, Any]:
    """Writes a kftune Dataset artifact (data.parquet with a `text` column + manifest.json)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    lengths = example_lengths(rows, seed)
    texts = [" ".join(f"w{t}" for t in tokens) for tokens in example_tokens(lengths, seed)]
    pq.write_table(pa.table({"text": texts}), directory / "data.parquet")
    fingerprint = hashlib.sha256(
        f"synthetic:{rows}:{seed}:{MEDIAN_LEN}:{SIGMA}".encode()
    ).hexdigest()
    manifest = {
        "format_version": 1,
        "kind": "dataset",
        "part": "train",
        "source": {
            "uri": f"synthetic://lognormal?median={MEDIAN_LEN}&sigma={SIGMA}&seed={seed}",
            "revision": None,
            "resolved_revision": None,
            "subset": None,
            "split": "train",
        },
        "rows": rows,
        "columns": ["text"],
        "column_mapping": {},
        "label_names": None,
        "num_labels": None,
        "fingerprint": fingerprint[:16],
        "row_ranges": [[0, rows]],
        "selection": {},
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return {"rows": rows, **token_stats(lengths)}


def write_pairs(directory: Path, texts: list[str]) -> dict[str, Any]:
    """A preference Dataset artifact from the synthetic texts (see `pair_rows`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = pair_rows(texts)
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), directory / "data.parquet")
    manifest = {
        "format_version": 1, "kind": "dataset", "part": "train",
        "source": {"uri": "synthetic://pairs", "revision": None, "resolved_revision": None,
                   "subset": None, "split": "train"},
        "rows": len(rows), "columns": ["prompt", "chosen", "rejected"], "column_mapping": {},
        "label_names": None, "num_labels": None,
        "fingerprint": hashlib.sha256(f"pairs:{len(rows)}".encode()).hexdigest()[:16],
        "row_ranges": [[0, len(rows)]], "selection": {},
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    lengths = np.array([2 * len(row["prompt"].split()) + len(row["chosen"].split())
                        + len(row["rejected"].split()) + 2 for row in rows])
    return {"pairs": len(rows), "mean_pair_tokens": float(lengths.mean())}


def pair_rows(texts: list[str]) -> list[dict[str, str]]:
    """Preference pairs: a text's first half is the prompt, its second half the chosen
    completion, the second half of the next text the rejected one (same length law)."""
    rows = []
    for text, other in zip(texts, texts[1:], strict=False):
        words, others = text.split(), other.split()
        cut, other_cut = len(words) // 2, len(others) // 2
        chosen, rejected = " ".join(words[cut:]), " ".join(others[other_cut:])
        if cut and chosen and rejected and chosen != rejected:
            rows.append({"prompt": " ".join(words[:cut]), "chosen": " " + chosen,
                         "rejected": " " + rejected})
    return rows


def read_texts(directory: Path) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(directory / "data.parquet").column("text").to_pylist()


def write_model(directory: Path, shape: str, seed: int = 0) -> Path:
    """Writes a random-weight model of `shape` in Hugging Face layout + a kftune model manifest."""
    import torch
    from transformers import AutoModelForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    if (directory / "manifest.json").is_file():
        return directory
    torch.manual_seed(seed)
    config = hf_config(shape)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(directory, max_shard_size="5GB")
    build_tokenizer().save_pretrained(directory)
    parameters = sum(p.numel() for p in model.parameters())
    del model
    manifest = {
        "format_version": 1,
        "kind": "model",
        "source": {
            "uri": f"synthetic://llama-{shape}",
            "revision": None,
            "resolved_revision": "random",
        },
        "task": "causal-lm",
        "architecture": "LlamaForCausalLM",
        "model_type": "llama",
        "parameters": parameters,
        "dtype": "bfloat16",
        "size_bytes": sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()),
        "trust_remote_code": False,
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return directory


def flops_per_token(model, lora_params: int, attended_len: float) -> dict[str, float]:
    """DESIGN.md LoRA-MFU numerator per token: 4 N_mm + 6 N_lora + 6 L d T."""
    import torch

    config = model.config
    embed = model.get_input_embeddings().weight
    n_mm = 0
    seen = set()
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, torch.nn.Linear) and "lora_" not in name and weight is not None:
            if id(weight) in seen:
                continue
            seen.add(id(weight))
            n_mm += weight.numel()
    if config.tie_word_embeddings and id(embed) not in seen:
        n_mm += embed.numel()  # the tied LM head is a matmul even though it shares the embedding
    layers, hidden = config.num_hidden_layers, config.hidden_size
    per_token = 4 * n_mm + 6 * lora_params + 6 * layers * hidden * attended_len
    return {"n_mm": n_mm, "n_lora": lora_params, "flops_per_token": per_token}


def mfu(tokens_per_s_per_gpu: float, flops_token: float) -> float:
    return tokens_per_s_per_gpu * flops_token / 989e12
