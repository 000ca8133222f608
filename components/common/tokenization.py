"""Tokenization shared by the trainer and evaluate: rows -> token examples.

The trainer (`train_lora/pod/data.py`) and evaluate score the same examples, so both build them
here, below both of them:
- causal-lm, column `text`: loss on every token.
- causal-lm, columns `prompt` + `completion`: loss on the completion tokens only.
- causal-lm, column `messages`: rendered with the tokenizer's chat template; loss on the assistant
  turns only.
- sequence-classification, columns `text` + `label`.

Causal-lm labels are stored ALIGNED with the inputs: `labels[t]` is the token to predict after
position t (-100 where nothing is learned), so packed examples never predict across a boundary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import Problems
from .tasks import IGNORE_INDEX


@dataclasses.dataclass(frozen=True)
class Example:
    """One tokenized training example."""

    index: int
    """Row index in the Dataset artifact."""
    input_ids: tuple[int, ...]
    """Token ids."""
    labels: tuple[int, ...] | int
    """causal-lm: aligned next-token targets (-100 = no loss); classification: the class."""

    @property
    def target_count(self) -> int:
        """Targets this example contributes to the loss."""
        if isinstance(self.labels, int):
            return 0 if self.labels == IGNORE_INDEX else 1
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def check_columns(task: str, columns: Sequence[str], num_labels: int | None) -> list[str]:
    """Returns the problems with a dataset's columns for `task`."""
    present = set(columns)
    if task == "sequence-classification":
        missing = [name for name in ("text", "label") if name not in present]
        problems = []
        if missing:
            problems.append(
                f"`train_data` must have columns text and label for task sequence-classification, "
                f"got columns {sorted(present)} (missing {missing}); map them with "
                "download_dataset's column_mapping"
            )
        if not num_labels:
            problems.append(
                "`train_data` manifest must give num_labels for task sequence-classification, got "
                f"{num_labels!r}; produce the dataset with download_dataset"
            )
        return problems
    if "messages" in present or "text" in present or {"prompt", "completion"} <= present:
        return []
    return [
        f"`train_data` must have a text column, prompt + completion columns, or a messages column "
        f"for task causal-lm, got columns {sorted(present)}; map them with download_dataset's "
        "column_mapping"
    ]


# -- tokenization ----------------------------------------------------------------------------------


def aligned_labels(input_ids: list[int], target_mask: list[bool]) -> tuple[int, ...]:
    """Next-token labels aligned with the inputs; position t learns input t+1 if it is a target."""
    labels = [IGNORE_INDEX] * len(input_ids)
    for position in range(len(input_ids) - 1):
        if target_mask[position + 1]:
            labels[position] = input_ids[position + 1]
    return tuple(labels)


def _with_eos(ids: list[int], eos_id: int | None) -> list[int]:
    if eos_id is not None and (not ids or ids[-1] != eos_id):
        return [*ids, eos_id]
    return ids


def _chat_tokens(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[list[int], list[bool]]:
    """Chat-template token ids and a mask of the assistant tokens."""
    if "{% generation %}" in (tokenizer.chat_template or ""):
        rendered = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        return list(rendered["input_ids"]), [bool(flag) for flag in rendered["assistant_masks"]]
    # Templates without generation markers: an assistant turn is what rendering it adds to the
    # conversation so far (rendered with the generation prompt).
    full = list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)[
        "input_ids"])
    mask = [False] * len(full)
    for turn, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        before = tokenizer.apply_chat_template(
            messages[:turn], tokenize=True, return_dict=True, add_generation_prompt=True
        )["input_ids"] if turn else []
        through = tokenizer.apply_chat_template(
            messages[: turn + 1], tokenize=True, return_dict=True
        )["input_ids"]
        for position in range(len(before), min(len(through), len(full))):
            mask[position] = True
    return full, mask


def tokenize_rows(
    task: str, rows: Sequence[Mapping[str, Any]], tokenizer: Any, max_seq_length: int
) -> list[Example]:
    """Tokenizes every row for `task`, truncating to `max_seq_length` tokens.

    Raises:
        InputError: when the rows do not fit the task or the tokenizer has no chat template for
            `messages` rows.
    """
    if not rows:
        problems = Problems()
        problems.add("`train_data` must hold at least one row, got 0 rows")
        problems.raise_if_any()
    columns = set(rows[0])
    eos_id = tokenizer.eos_token_id
    examples: list[Example] = []
    if task == "sequence-classification":
        encoded = tokenizer(
            [str(row["text"]) for row in rows], truncation=True, max_length=max_seq_length
        )["input_ids"]
        for index, (ids, row) in enumerate(zip(encoded, rows, strict=True)):
            examples.append(Example(index, tuple(ids), int(row["label"])))
        return examples
    if "messages" in columns:
        if not tokenizer.chat_template:
            problems = Problems()
            problems.add("`train_data` has a messages column but the model's tokenizer has no "
                         "chat_template; use a chat model or map the data to prompt/completion")
            problems.raise_if_any()
        for index, row in enumerate(rows):
            ids, mask = _chat_tokens(tokenizer, list(row["messages"]))
            ids, mask = ids[:max_seq_length], mask[:max_seq_length]
            examples.append(Example(index, tuple(ids), aligned_labels(ids, mask)))
        return examples
    if {"prompt", "completion"} <= columns:
        prompts = tokenizer([str(row["prompt"]) for row in rows])["input_ids"]
        completions = tokenizer(
            [str(row["completion"]) for row in rows], add_special_tokens=False
        )["input_ids"]
        for index, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            completion = _with_eos(list(completion), eos_id)
            ids = (list(prompt) + completion)[:max_seq_length]
            mask = ([False] * len(prompt) + [True] * len(completion))[:max_seq_length]
            examples.append(Example(index, tuple(ids), aligned_labels(ids, mask)))
        return examples
    encoded = tokenizer([str(row["text"]) for row in rows])["input_ids"]
    for index, ids in enumerate(encoded):
        ids = _with_eos(list(ids), eos_id)[:max_seq_length]
        examples.append(Example(index, tuple(ids), aligned_labels(ids, [True] * len(ids))))
    return examples
