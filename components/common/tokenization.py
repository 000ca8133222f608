"""Tokenization shared by the trainer and evaluate: rows -> token examples.

The trainer (`train_lora/pod/data.py`) and evaluate score the same examples, so both build them
here, below both of them:
- causal-lm, column `text`: loss on every token.
- causal-lm, columns `prompt` + `completion`: loss on the completion tokens only.
- causal-lm, column `messages`: rendered with the tokenizer's chat template; loss on the assistant
  turns only.
- sequence-classification, columns `text` + `label`.
- preference, columns `prompt` + `chosen` + `rejected` (text, or chat messages rendered with the
  tokenizer's chat template): one example per pair, its chosen then its rejected sequence (each
  prompt + completion, loss on the completion tokens only); `Example.split` is where the rejected
  sequence starts.

Causal-lm labels are stored ALIGNED with the inputs: `labels[t]` is the token to predict after
position t (-100 where nothing is learned), so packed examples never predict across a boundary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import Problems
from .tasks import IGNORE_INDEX

PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected")
# Row numbers shown per problem with the preference rows.
_SHOWN_ROWS = 5


@dataclasses.dataclass(frozen=True)
class Example:
    """One tokenized training example."""

    index: int
    """Row index in the Dataset artifact."""
    input_ids: tuple[int, ...]
    """Token ids."""
    labels: tuple[int, ...] | int
    """causal-lm: aligned next-token targets (-100 = no loss); classification: the class."""
    split: int | None = None
    """preference: the position where the rejected sequence starts (the chosen one is before)."""

    @property
    def target_count(self) -> int:
        """Targets this example contributes to the loss (a preference pair is one target)."""
        if self.split is not None:
            return 1
        if isinstance(self.labels, int):
            return 0 if self.labels == IGNORE_INDEX else 1
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def check_columns(task: str, columns: Sequence[str], num_labels: int | None) -> list[str]:
    """Returns the problems with a dataset's columns for `task`."""
    present = set(columns)
    if task == "preference":
        missing = [name for name in PREFERENCE_COLUMNS if name not in present]
        if not missing:
            return []
        return [
            f"`train_data` must have columns prompt, chosen and rejected for task preference, got "
            f"columns {sorted(present)} (missing {missing}); map them with download_dataset's "
            "column_mapping, e.g. {'chosen': '<column>'}"
        ]
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
    if task == "preference":
        return tokenize_preference_rows(rows, tokenizer, max_seq_length)
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


# -- preference pairs ------------------------------------------------------------------------------


def _is_chat(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(item, Mapping) for item in value)


def _is_blank(value: Any) -> bool:
    if _is_chat(value):
        return not any(str(message.get("content") or "").strip() for message in value)
    return value is None or not str(value).strip()


def _rows_shown(indices: Sequence[int]) -> str:
    shown = ", ".join(str(index) for index in indices[:_SHOWN_ROWS])
    return shown + (f" and {len(indices) - _SHOWN_ROWS} more" if len(indices) > _SHOWN_ROWS else "")


def preference_row_problems(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Pairs that teach nothing: an empty prompt, chosen or rejected, or chosen == rejected.

    One line per kind of problem, naming the column, the rows (0-based) and the fix; needs no
    tokenizer, so the train step checks it before anything starts.
    """
    problems = []
    for column in PREFERENCE_COLUMNS:
        blank = [index for index, row in enumerate(rows) if _is_blank(row.get(column))]
        if blank:
            problems.append(
                f"`train_data` column {column!r} is empty in {len(blank)} row(s) (rows "
                f"{_rows_shown(blank)}); fill those rows or drop them from the dataset")
    same = [index for index, row in enumerate(rows)
            if not _is_blank(row.get("chosen")) and row.get("chosen") == row.get("rejected")]
    if same:
        problems.append(
            f"`train_data` columns 'chosen' and 'rejected' are identical in {len(same)} row(s) "
            f"(rows {_rows_shown(same)}); a pair must prefer one completion over a different "
            "one: fix those rows or drop them")
    return problems


def _render_pair_side(tokenizer: Any, prompt: Any, completion: Any) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) of one side of a pair; the completion ends with EOS."""
    if _is_chat(prompt) or _is_chat(completion):
        context = list(prompt) if _is_chat(prompt) else [{"role": "user", "content": str(prompt)}]
        answer = list(completion) if _is_chat(completion) else [
            {"role": "assistant", "content": str(completion)}]
        prompt_ids = list(tokenizer.apply_chat_template(
            context, tokenize=True, return_dict=True, add_generation_prompt=True)["input_ids"])
        full = list(tokenizer.apply_chat_template(
            context + answer, tokenize=True, return_dict=True)["input_ids"])
        return prompt_ids, full[len(prompt_ids):]
    prompt_ids = list(tokenizer(str(prompt))["input_ids"])
    completion_ids = list(tokenizer(str(completion), add_special_tokens=False)["input_ids"])
    return prompt_ids, _with_eos(completion_ids, tokenizer.eos_token_id)


def _chat_problems(rows: Sequence[Mapping[str, Any]], tokenizer: Any) -> list[str]:
    if tokenizer.chat_template or not any(
            _is_chat(row.get(column)) for row in rows[:1] for column in PREFERENCE_COLUMNS):
        return []
    return ["`train_data` holds chat messages but the model's tokenizer has no chat_template; "
            "use a chat model or map the data to plain-text prompt/chosen/rejected"]


def tokenize_preference_rows(
    rows: Sequence[Mapping[str, Any]], tokenizer: Any, max_seq_length: int
) -> list[Example]:
    """One example per pair: prompt + chosen, then prompt + rejected, completion-only labels.

    A completion is cut so that prompt + completion fits `max_seq_length`.

    Raises:
        InputError: for missing columns, empty or identical completions, or a prompt that leaves
            no room for a completion in `max_seq_length` tokens (one line each, all at once).
    """
    problems = Problems()
    problems.extend(check_columns("preference", list(rows[0]), None))
    problems.raise_if_any()
    problems.extend(preference_row_problems(rows))
    problems.extend(_chat_problems(rows, tokenizer))
    problems.raise_if_any()
    examples, too_long, longest = [], [], 0
    for index, row in enumerate(rows):
        ids: list[int] = []
        labels: list[int] = []
        for column in ("chosen", "rejected"):
            prompt_ids, completion_ids = _render_pair_side(tokenizer, row["prompt"], row[column])
            if len(prompt_ids) >= max_seq_length:
                too_long.append(index)
                longest = max(longest, len(prompt_ids))
                break
            sequence = (prompt_ids + completion_ids)[:max_seq_length]
            mask = ([False] * len(prompt_ids) + [True] * len(completion_ids))[:max_seq_length]
            ids += sequence
            labels += aligned_labels(sequence, mask)
            if column == "chosen":
                split = len(ids)
        else:
            examples.append(Example(index, tuple(ids), tuple(labels), split))
    if too_long:
        problems.add(
            f"`train_data` column 'prompt' has {len(too_long)} prompt(s) of at least "
            f"`training_parameters.max_seq_length` = {max_seq_length} tokens (rows "
            f"{_rows_shown(too_long)}; the longest has {longest}), leaving no room for the "
            f"completion; raise max_seq_length above {longest} or shorten those prompts")
    problems.raise_if_any()
    return examples
