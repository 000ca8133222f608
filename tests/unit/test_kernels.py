"""The hot-path kernels' CPU-checkable behaviour: the chunked loss head, packed boundaries, and the
token-balanced dealing of packed examples to ranks (GPU speed is measured by bench/, not here)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from kftune.components.common.tokenization import aligned_labels
from kftune.components.train_lora.pod import data, kernels


@dataclasses.dataclass(frozen=True)
class LossCase:
    name: str
    tokens: int
    chunk: int
    ignored_every: int


LOSS_CASES = [
    LossCase("one chunk", 40, 64, 5),
    LossCase("chunks with a short tail", 150, 64, 3),
    LossCase("all targets", 64, 16, 0),
]


@pytest.mark.parametrize("case", LOSS_CASES, ids=[case.name for case in LOSS_CASES])
def test_chunked_loss_head_matches_full_cross_entropy(case: LossCase) -> None:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(case.tokens, 24, generator=generator, dtype=torch.float64)
    hidden.requires_grad_(True)
    weight = torch.randn(50, 24, generator=generator, dtype=torch.float64) * 0.3
    labels = torch.randint(0, 50, (case.tokens,), generator=generator)
    if case.ignored_every:
        labels[:: case.ignored_every] = kernels.IGNORE_INDEX
    loss = kernels._ChunkedLinearCrossEntropy.apply(hidden, weight, labels, case.chunk, False)
    (loss * 0.5).backward()
    chunked_grad = hidden.grad.clone()
    hidden.grad = None
    reference = F.cross_entropy(hidden @ weight.t(), labels, ignore_index=kernels.IGNORE_INDEX,
                                reduction="sum")
    (reference * 0.5).backward()
    # The kernel's softmax math is fp32 whatever the input dtype: fp32 tolerances.
    torch.testing.assert_close(loss, reference.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunked_grad, hidden.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("targets", [[1, 4, 7], []], ids=["some targets", "no target"])
def test_public_loss_head_sums_over_targets_only(targets: list[int]) -> None:
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(10, 8, generator=generator, requires_grad=True)
    weight = torch.randn(30, 8, generator=generator)
    labels = torch.full((10,), kernels.IGNORE_INDEX)
    labels[targets] = torch.randint(0, 30, (len(targets),), generator=generator)
    loss = kernels.chunked_linear_cross_entropy(hidden, weight, labels)
    loss.backward()
    expected = sum(
        (F.cross_entropy(hidden[index] @ weight.t(), labels[index], reduction="sum")
         for index in targets),
        torch.tensor(0.0),
    )
    torch.testing.assert_close(loss.detach(), expected.detach(), rtol=1e-5, atol=1e-5)
    # Positions without a target take no part: their gradient is exactly zero, and finite.
    ignored = [index for index in range(10) if index not in targets]
    assert torch.equal(hidden.grad[ignored], torch.zeros(len(ignored), 8))
    assert bool(hidden.grad[targets].abs().sum() > 0) == bool(targets)


def example(index: int, length: int) -> data.Example:
    ids = list(range(3, 3 + length))
    return data.Example(index, tuple(ids), aligned_labels(ids, [True] * length))


def test_packed_boundaries_from_positions_match_the_collated_ones() -> None:
    batch = data.collate_causal_lm([example(0, 5), example(1, 1), example(2, 7)], 0, packing=True)
    assert batch["cu_seq_lens"].tolist() == [0, 5, 6, 13] and batch["max_length"] == 7
    cu_seq_lens, max_length = kernels._packed_boundaries({"position_ids": batch["position_ids"]})
    assert cu_seq_lens.tolist() == [0, 5, 6, 13] and max_length == 7


def test_prepare_model_leaves_a_cpu_model_alone() -> None:
    model = torch.nn.Linear(3, 3)
    assert kernels.prepare_model(model, torch.device("cpu")) is model
    assert kernels.attention_implementation(torch.device("cpu")) == "sdpa"
