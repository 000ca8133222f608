"""Checks that a downloaded model directory loads: config, tokenizer, and the task fits.

Run as `python -m kftune.components.download_model.verify DIR --task TASK [--trust-remote-code]`:
it prints one JSON object (`inspect_model_dir`'s result). download_model runs it in a child
process because importing transformers imports torch when it is installed; the download step
itself stays light, and remote code (when trusted) runs in a process that then exits.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..common.tasks import model_task

# Model types transformers maps to *ForCausalLM that are encoder models at heart (BERT-likes have
# a decoder variant only when `is_decoder` is set); a causal-lm fine-tune of those is a mistake.
_CAUSAL_HEADS = "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"
_MASKED_HEADS = "MODEL_FOR_MASKED_LM_MAPPING_NAMES"
_CLASSIFICATION_HEADS = "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES"
_AUTO_CLASS = {
    "causal-lm": "AutoModelForCausalLM",
    "sequence-classification": "AutoModelForSequenceClassification",
}


def task_problems(config: Any, task: str, *, uri: str, trust_remote_code: bool) -> list[str]:
    """Whether `task` fits the architecture of `config` (a transformers PretrainedConfig)."""
    from transformers.models.auto import modeling_auto

    task = model_task(task)  # a preference adapter is a causal-LM adapter

    model_type = getattr(config, "model_type", "") or ""
    architectures = getattr(config, "architectures", None) or []
    architecture = architectures[0] if architectures else f"model_type {model_type!r}"
    auto_map = getattr(config, "auto_map", None) or {}
    if trust_remote_code and _AUTO_CLASS.get(task) in auto_map:
        return []
    causal = getattr(modeling_auto, _CAUSAL_HEADS)
    masked = getattr(modeling_auto, _MASKED_HEADS)
    classification = getattr(modeling_auto, _CLASSIFICATION_HEADS)
    if task == "causal-lm":
        encoder_only = model_type in masked and not getattr(config, "is_decoder", False)
        if getattr(config, "is_encoder_decoder", False):
            return [
                f"`task` 'causal-lm' does not fit the model at `uri` {uri!r}: {architecture} "
                f"(model_type {model_type!r}) is an encoder-decoder model; use a decoder-only model"
            ]
        if model_type not in causal or encoder_only:
            kind = "an encoder-only model" if model_type in masked else "not a causal LM"
            return [
                f"`task` 'causal-lm' does not fit the model at `uri` {uri!r}: {architecture} "
                f"(model_type {model_type!r}) is {kind}; use task 'sequence-classification' "
                f"with it, or a decoder-only model (e.g. Llama, Qwen, GPT-2) for causal-lm"
            ]
    elif task == "sequence-classification" and model_type not in classification:
        return [
            f"`task` 'sequence-classification' does not fit the model at `uri` {uri!r}: "
            f"transformers has no sequence-classification head for {architecture} (model_type "
            f"{model_type!r}); pick a model that has one"
        ]
    return []


def inspect_model_dir(
    model_dir: str | Path, *, task: str, uri: str, trust_remote_code: bool = False
) -> dict[str, Any]:
    """Loads config and tokenizer of `model_dir` and checks `task` against the architecture.

    Returns:
        {"model_type", "architecture", "config_class", "tokenizer_class", "problems": [...]}; the
        problems are bad-input messages (empty when everything loads and fits).
    """
    from transformers import AutoConfig, AutoTokenizer
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    result: dict[str, Any] = {
        "model_type": None,
        "architecture": None,
        "config_class": None,
        "tokenizer_class": None,
        "problems": [],
    }
    raw = json.loads((Path(model_dir) / "config.json").read_text())
    model_type = raw.get("model_type")
    if raw.get("auto_map") and model_type not in CONFIG_MAPPING_NAMES and not trust_remote_code:
        result["problems"].append(
            f"`trust_remote_code` is False but the model at `uri` {uri!r} needs its own Python "
            f"code (model_type {model_type!r} is not built into transformers); set "
            f"trust_remote_code=True only if you trust that repository"
        )
        return result
    try:
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except Exception as error:  # transformers raises many types for a bad config
        result["problems"].append(
            f"`uri` {uri!r}: config.json does not load ({type(error).__name__}: "
            f"{str(error)[:300]}); check that it is a transformers model"
        )
        return result
    architectures = getattr(config, "architectures", None) or []
    result.update(
        model_type=config.model_type,
        architecture=architectures[0] if architectures else None,
        config_class=type(config).__name__,
    )
    result["problems"].extend(
        task_problems(config, task, uri=uri, trust_remote_code=trust_remote_code)
    )
    fix = (
        "the model needs tokenizer files (tokenizer.json, or vocab/merges, or a sentencepiece "
        "model)"
    )
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except Exception as error:
        result["problems"].append(
            f"`uri` {uri!r}: the tokenizer does not load ({type(error).__name__}: "
            f"{str(error)[:300]}); {fix}"
        )
        return result
    result["tokenizer_class"] = type(tokenizer).__name__
    # Without vocabulary files some tokenizer classes load empty (only their special tokens).
    vocabulary = len(tokenizer.get_vocab())
    if vocabulary <= len(set(tokenizer.all_special_tokens)):
        result["problems"].append(
            f"`uri` {uri!r}: the tokenizer does not load: {type(tokenizer).__name__} came up "
            f"with an empty vocabulary ({vocabulary} token(s), all special); {fix}"
        )
    return result


def main(argv: list[str] | None = None) -> int:
    """Command line: prints `inspect_model_dir`'s result as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--task", required=True)
    parser.add_argument("--uri", default="")
    parser.add_argument("--trust-remote-code", action="store_true")
    args = parser.parse_args(argv)
    result = inspect_model_dir(
        args.model_dir,
        task=args.task,
        uri=args.uri or args.model_dir,
        trust_remote_code=args.trust_remote_code,
    )
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
