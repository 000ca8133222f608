"""Training data: rows -> token examples -> one job-wide order -> per-rank micro-batches.

Tokenization (`common/tokenization.py`, shared with evaluate): every rank tokenizes all rows,
deterministically, so every rank knows every example.

Order: `GlobalOrder` is one permutation of all examples per epoch, the same on every rank. An
optimizer step takes the next `global_batch` examples of it (or, with a `TokenBudget`, as many of
the next examples as fit in its slots' token budgets); `rank_micro_batches` deals them out to
(micro-batch, rank) slots. Each example is therefore seen exactly once per epoch across all ranks
of all nodes, and the data position of the whole job is just (epoch, examples consumed), which
stays valid when a job resumes with a different world size.

Micro-batches: `collate_causal_lm` packs the examples of a micro-batch into one row with no padding
and `position_ids` that restart at 0 per example (transformers derives the per-example causal mask
from them when no attention mask is given); with packing off it pads to the longest example.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ...common.artifacts import DATA_FILE, read_manifest
from ...common.errors import Problems
from ...common.tasks import IGNORE_INDEX
from ...common.tokenization import Example

# -- loading ---------------------------------------------------------------------------------------


def load_rows(data_dir: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Reads the rows and the manifest of a Dataset artifact.

    Raises:
        InputError: when the directory is not a Dataset artifact.
    """
    import pyarrow.parquet as pq

    manifest = read_manifest(data_dir, parameter="data_dir")
    path = Path(data_dir) / DATA_FILE
    if not path.is_file():
        problems = Problems()
        problems.add(f"`data_dir` must hold {DATA_FILE}, got {data_dir!r} without it; pass the "
                     "output of download_dataset")
        problems.raise_if_any()
    return pq.read_table(path).to_pylist(), manifest


# -- order and distribution ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DataPosition:
    """Where the job is in its data: the epoch and how many examples of it are consumed."""

    epoch: int = 0
    """Epoch number, from 0."""
    consumed: int = 0
    """Examples of this epoch's order already trained on."""


class GlobalOrder:
    """The job-wide example order: one seeded permutation per epoch, identical on every rank."""

    def __init__(self, num_examples: int, seed: int, shuffle: bool = True) -> None:
        self.num_examples = num_examples
        self.seed = seed
        self.shuffle = shuffle

    def epoch_order(self, epoch: int) -> list[int]:
        """The example indices of `epoch` in training order."""
        order = list(range(self.num_examples))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def steps(
        self, position: DataPosition, global_batch: int
    ) -> Iterator[tuple[list[int], DataPosition]]:
        """Yields (example indices of one optimizer step, the data position after it), forever.

        The last step of an epoch takes what is left of it, so no example is dropped or repeated.
        """
        return self._steps(position, lambda order, start: global_batch)

    def steps_per_epoch(self, global_batch: int) -> int:
        """Optimizer steps one epoch takes."""
        return -(-self.num_examples // global_batch)

    def token_steps(
        self, position: DataPosition, budget: TokenBudget
    ) -> Iterator[tuple[list[int], DataPosition]]:
        """Like `steps`, but a step takes as many of the next examples as `budget.prefix` lets it.

        Steps then hold about `budget.slots x budget.tokens` tokens whatever the example lengths;
        the last step of an epoch takes what is left of it.
        """
        return self._steps(position, budget.prefix)

    def total_token_steps(self, epochs: float, budget: TokenBudget) -> int:
        """Optimizer steps that `epochs` passes (may be fractional) take with `budget`."""
        whole, fraction = int(epochs), epochs - int(epochs)
        total = 0
        for epoch in range(whole + (1 if fraction else 0)):
            order, start, count = self.epoch_order(epoch), 0, 0
            while start < len(order):
                start, count = start + budget.prefix(order, start), count + 1
            total += count if epoch < whole else math.ceil(fraction * count)
        return max(1, total)

    def _steps(
        self, position: DataPosition, size: Callable[[Sequence[int], int], int]
    ) -> Iterator[tuple[list[int], DataPosition]]:
        """Steps of `size(order, start)` examples from `position` on, epoch after epoch."""
        epoch, consumed = position.epoch, position.consumed
        while True:
            if consumed >= self.num_examples:
                epoch, consumed = epoch + 1, 0
            order = self.epoch_order(epoch)
            while consumed < self.num_examples:
                step = order[consumed : consumed + size(order, consumed)]
                consumed += len(step)
                yield step, DataPosition(epoch, consumed)


@dataclasses.dataclass(frozen=True)
class TokenBudget:
    """Micro-batches filled by tokens.

    Each of a step's `slots` (ranks x accumulation) holds at most `tokens` tokens of packed
    examples.
    """

    lengths: Sequence[int]
    """Tokens per example index."""
    slots: int
    """Micro-batches per optimizer step across the job: world size x accumulation steps."""
    tokens: int
    """Token budget of one micro-batch."""

    def prefix(self, order: Sequence[int], start: int = 0) -> int:
        """How many examples of `order`, from `start` on, the next step takes (at least one).

        Each example goes to the slot with the fewest tokens; the step ends before the first
        example that does not fit there. Every slot then holds at most `tokens` tokens (an example
        longer than the budget travels alone in its own step).
        """
        loads = [(0, slot) for slot in range(self.slots)]
        for position in range(start, len(order)):
            load, slot = loads[0]
            length = self.lengths[order[position]]
            if load + length > self.tokens:
                return max(1, position - start)
            heapq.heapreplace(loads, (load + length, slot))
        return len(order) - start

    def deal(self, step: Sequence[int]) -> list[list[int]]:
        """The step's examples per slot.

        Longest first to the emptiest slot (balanced loads), or, when that overflows a slot, in
        order to the emptiest slot (the assignment `prefix` checked, so it fits).
        """
        members, fullest = _fill_emptiest(_longest_first(step, self.lengths), self.lengths,
                                          self.slots)
        if fullest <= self.tokens:
            return members
        return _fill_emptiest(step, self.lengths, self.slots)[0]


def _longest_first(step: Sequence[int], lengths: Sequence[int]) -> list[int]:
    return sorted(step, key=lambda index: (-lengths[index], index))


def _fill_emptiest(
    ordered: Sequence[int], lengths: Sequence[int], slots: int, per_slot: int | None = None
) -> tuple[list[list[int]], int]:
    """Deals `ordered` out to `slots`, each example to the emptiest slot with room.

    Emptiest: the fewest tokens, ties to the lowest slot; room: fewer than `per_slot` examples
    (no limit when None). Returns the slots' examples and the largest slot's tokens.
    """
    members: list[list[int]] = [[] for _ in range(slots)]
    open_slots = [(0, slot) for slot in range(slots)]
    fullest = 0
    for index in ordered:
        load, slot = heapq.heappop(open_slots)
        members[slot].append(index)
        load += lengths[index]
        fullest = max(fullest, load)
        if per_slot is None or len(members[slot]) < per_slot:
            heapq.heappush(open_slots, (load, slot))
    return members, fullest


def rank_micro_batches(
    step: Sequence[int], rank: int, world_size: int, per_device: int, accumulation: int,
    lengths: Sequence[int] | None = None, budget: TokenBudget | None = None,
) -> list[list[int]]:
    """The examples of one optimizer step that `rank` trains on, as `accumulation` micro-batches.

    Slot (micro-batch m, rank r) takes `step[(m * world_size + r) * per_device :][:per_device]`;
    in an epoch's short last step some slots are empty (the rank then runs a zero-loss micro-batch
    so that gradient synchronization still lines up).

    With `lengths` (tokens per example index), the step's examples are dealt out by tokens
    instead: longest first, each to the slot with the fewest tokens that still has room for
    `per_device` examples. Every rank computes the same deal, so it is still a partition of the
    step, and the slots' token counts (hence the ranks' step times) end up within about one short
    example of each other.

    With `budget` (a step from `GlobalOrder.token_steps`), `budget.deal` decides; `per_device`
    and `lengths` are not used.
    """
    if budget is not None:
        members = budget.deal(step)
        return [members[micro * world_size + rank] for micro in range(accumulation)]
    if lengths is not None:
        members, _ = _fill_emptiest(_longest_first(step, lengths), lengths,
                                    accumulation * world_size, per_device)
        return [members[micro * world_size + rank] for micro in range(accumulation)]
    batches = []
    for micro in range(accumulation):
        start = (micro * world_size + rank) * per_device
        batches.append(list(step[start : start + per_device]))
    return batches


# -- collation -------------------------------------------------------------------------------------


def collate_causal_lm(
    examples: Sequence[Example], pad_id: int, packing: bool, pad_to_multiple_of: int | None = None
) -> dict[str, Any]:
    """Tensors for one causal-lm micro-batch (see kernels.causal_lm_loss for the layout).

    With `pad_to_multiple_of`, the row length is rounded up to a multiple of it. When packing,
    the padding is one more segment with its own positions and no targets, so it neither
    attends to the examples nor adds to the loss.
    """
    import torch

    multiple = pad_to_multiple_of or 1
    if not examples:
        # A rank with nothing to train in this step still runs the model (gradients are
        # synchronized), on two segments of padding with no targets. Two segments of two or more
        # tokens keep it shaped like a packed row: a 1-token row would make torch.compile
        # specialize and compile the decoder layers again for size 1 mid-run.
        length = multiple if multiple % 2 == 0 else 2 * multiple
        while length < 4:
            length *= 2
        half = length // 2
        return {
            "input_ids": torch.full((1, length), pad_id),
            "position_ids": torch.cat([torch.arange(half), torch.arange(half)]).unsqueeze(0),
            "labels": torch.full((1, length), IGNORE_INDEX),
            "cu_seq_lens": torch.tensor([0, half, length], dtype=torch.int32),
            "max_length": half,
        }
    if packing:
        input_ids = [token for example in examples for token in example.input_ids]
        labels = [label for example in examples for label in example.labels]
        positions = [position for example in examples for position in range(len(example.input_ids))]
        boundaries = [0]
        for example in examples:
            boundaries.append(boundaries[-1] + len(example.input_ids))
        longest = max(len(example.input_ids) for example in examples)
        padding = -len(input_ids) % multiple
        if padding:
            input_ids += [pad_id] * padding
            labels += [IGNORE_INDEX] * padding
            positions += list(range(padding))
            boundaries.append(boundaries[-1] + padding)
            longest = max(longest, padding)
        return {
            "input_ids": torch.tensor([input_ids]),
            "position_ids": torch.tensor([positions]),
            "labels": torch.tensor([labels]),
            # Example boundaries for varlen attention, computed here so the GPU never waits.
            "cu_seq_lens": torch.tensor(boundaries, dtype=torch.int32),
            "max_length": longest,
        }
    longest = max(len(example.input_ids) for example in examples)
    longest += -longest % multiple
    input_ids, labels, mask = [], [], []
    for example in examples:
        pad = longest - len(example.input_ids)
        input_ids.append(list(example.input_ids) + [pad_id] * pad)
        labels.append(list(example.labels) + [IGNORE_INDEX] * pad)
        mask.append([1] * len(example.input_ids) + [0] * pad)
    return {
        "input_ids": torch.tensor(input_ids),
        "position_ids": torch.arange(longest).unsqueeze(0).expand(len(examples), -1).contiguous(),
        "labels": torch.tensor(labels),
        "attention_mask": torch.tensor(mask),
    }


def collate_classification(
    examples: Sequence[Example], pad_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, Any]:
    """Tensors for one sequence-classification micro-batch.

    Rows are padded to the longest example, rounded up to a multiple of `pad_to_multiple_of`.
    """
    import torch

    if not examples:
        return {
            "input_ids": torch.tensor([[pad_id]]),
            "attention_mask": torch.tensor([[1]]),
            "labels": torch.tensor([IGNORE_INDEX]),
        }
    longest = max(len(example.input_ids) for example in examples)
    longest += -longest % (pad_to_multiple_of or 1)
    return {
        "input_ids": torch.tensor(
            [list(e.input_ids) + [pad_id] * (longest - len(e.input_ids)) for e in examples]
        ),
        "attention_mask": torch.tensor(
            [[1] * len(e.input_ids) + [0] * (longest - len(e.input_ids)) for e in examples]
        ),
        "labels": torch.tensor([e.labels for e in examples]),
    }


def _pair_sequences(examples: Sequence[Example]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(input ids, labels) of every sequence: each pair's chosen, then its rejected."""
    sequences = []
    for example in examples:
        split = example.split or 0
        labels = tuple(example.labels) if not isinstance(example.labels, int) else ()
        sequences.append((example.input_ids[:split], labels[:split]))
        sequences.append((example.input_ids[split:], labels[split:]))
    return sequences


def collate_preference(
    examples: Sequence[Example], pad_id: int, packing: bool, pad_to_multiple_of: int | None = None
) -> dict[str, Any]:
    """Tensors for one preference micro-batch: the causal-lm layout of its 2 x pairs sequences.

    Sequence 2i is pair i's chosen one, 2i + 1 its rejected one. Besides the causal-lm tensors
    (`collate_causal_lm`, packed or padded), `sequence_ids` [B, T] gives each position's sequence
    (padding: sequence 0, with no targets), `completion_tokens` [2 x pairs] the targets per
    sequence (IPO averages over them) and `num_sequences` their count.
    """
    import torch

    sequences = [Example(index, ids, labels) for index, (ids, labels)
                 in enumerate(_pair_sequences(examples))]
    batch = collate_causal_lm(sequences, pad_id, packing, pad_to_multiple_of)
    width = batch["input_ids"].shape[1]
    if packing or not sequences:
        owner = [index for index, sequence in enumerate(sequences)
                 for _ in sequence.input_ids]
        owner += [0] * (width - len(owner))
        sequence_ids = torch.tensor([owner])
    else:
        sequence_ids = torch.arange(len(sequences)).unsqueeze(1).expand(-1, width).contiguous()
    batch["sequence_ids"] = sequence_ids
    batch["completion_tokens"] = torch.tensor(
        [sequence.target_count for sequence in sequences], dtype=torch.float32)
    batch["num_sequences"] = len(sequences)
    return batch
