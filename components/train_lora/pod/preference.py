"""DPO-family losses of a preference micro-batch, as TRL's `DPOTrainer` computes them.

The trainer gets the summed completion log-probabilities of every sequence of a micro-batch
(`kernels.sequence_log_probs`: sequence 2i is pair i's chosen completion, 2i + 1 its rejected
one) twice: from the model being trained and from the reference policy, which is the same model
with its LoRA adapter switched off (`reference_log_probs`: no second copy of the weights). With
the log ratios `chosen = log pi(c) - log ref(c)` and `rejected = log pi(r) - log ref(r)`:

- `sigmoid` (DPO): `-(1 - e) log sigmoid(beta d) - e log sigmoid(-beta d)`, d = chosen - rejected,
  e = `label_smoothing` (conservative DPO; e = 0 is TRL's `sigmoid`).
- `robust` (robust DPO): `(-(1 - e) log sigmoid(beta d) + e log sigmoid(-beta d)) / (1 - 2e)`.
- `ipo`: `(d' - 1 / (2 beta))^2`, d' the difference of the log ratios each divided by its
  completion's token count (TRL's length-normalized IPO).

The implicit rewards are `beta x` the log ratios; the step metrics (TRL's names) are their means,
the fraction of pairs whose chosen reward is higher, and the mean margin.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from . import kernels

# The per-step metrics, in TRL's names, as sums over pairs (`PairStats.sums` order).
METRIC_NAMES = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins")


@dataclasses.dataclass(frozen=True)
class PreferenceLoss:
    """Which DPO-family loss, with its settings (TRL `DPOConfig` names)."""

    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0


def pair_losses(policy: torch.Tensor, reference: torch.Tensor, completion_tokens: torch.Tensor,
                spec: PreferenceLoss) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair losses [P] and the metric sums [4] (`METRIC_NAMES`) of a micro-batch.

    `policy` and `reference` are the summed completion log-probabilities of the 2P sequences,
    chosen and rejected interleaved; `completion_tokens` their target counts.
    """
    chosen_ratio = policy[0::2] - reference[0::2]
    rejected_ratio = policy[1::2] - reference[1::2]
    delta = chosen_ratio - rejected_ratio
    beta, smoothing = spec.beta, spec.label_smoothing
    if spec.loss_type == "ipo":
        lengths = completion_tokens.clamp(min=1.0)
        ipo_delta = chosen_ratio / lengths[0::2] - rejected_ratio / lengths[1::2]
        losses = (ipo_delta - 1 / (2 * beta)) ** 2
    elif spec.loss_type == "robust":
        losses = (-(1 - smoothing) * F.logsigmoid(beta * delta)
                  + smoothing * F.logsigmoid(-beta * delta)) / (1 - 2 * smoothing)
    else:
        losses = (-(1 - smoothing) * F.logsigmoid(beta * delta)
                  - smoothing * F.logsigmoid(-beta * delta))
    chosen_rewards = beta * chosen_ratio.detach()
    rejected_rewards = beta * rejected_ratio.detach()
    sums = torch.stack([chosen_rewards.sum(), rejected_rewards.sum(),
                        (chosen_rewards > rejected_rewards).float().sum(),
                        (chosen_rewards - rejected_rewards).sum()])
    return losses, sums


def reference_log_probs(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    """The reference policy's sequence log-probabilities: the PEFT model with its adapter off.

    `model` is the PEFT model itself (not its DDP wrapper: nothing here needs gradients).
    """
    with torch.no_grad(), model.disable_adapter():
        return kernels.sequence_log_probs(model, batch)


def micro_batch_loss(wrapped: torch.nn.Module, model: Any, batch: dict[str, Any],
                     spec: PreferenceLoss) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed loss over the micro-batch's pairs, metric sums [4]); the policy pass has grads."""
    reference = reference_log_probs(model, batch)
    policy = kernels.sequence_log_probs(wrapped, batch)
    losses, sums = pair_losses(policy, reference, batch["completion_tokens"].to(policy.device),
                               spec)
    # An empty micro-batch still runs the policy pass (gradient sync lines up): its zero loss
    # stays attached to the graph through `policy`.
    return losses.sum() + 0.0 * policy.sum(), sums
