"""The model's hot path, behind the few functions the trainer calls.

The trainer never calls the model directly; it calls:

- `attention_implementation(device, task) -> str`: the `attn_implementation` to load the model with.
- `prepare_model(model, device) -> model`: once, after the LoRA wrap and before DDP.
- `causal_lm_loss(model, batch) -> (loss_sum, token_count)`: the summed cross-entropy over the
  target tokens of a causal-lm micro-batch and how many target tokens there were. `batch` holds
  `input_ids` [B, T], `position_ids` [B, T], `labels` [B, T] ALREADY ALIGNED with the inputs (the
  label at position t is the token to predict after position t, -100 where there is nothing to
  learn: prompt tokens, the last token of each example, padding) and, only for padded (not
  packed) micro-batches, `attention_mask` [B, T]. Packed micro-batches have no attention mask:
  `position_ids` restart at 0 at every example; they may carry `cu_seq_lens` (int32 [n + 1], the
  example boundaries in the flattened row) and `max_length` (int, the longest example), which
  data.py computes on the CPU so that the GPU path needs no host synchronization.
- `sequence_log_probs(model, batch) -> log_probs [S]`: for a preference micro-batch (a causal-lm
  batch whose positions belong to `batch["num_sequences"]` sequences, `sequence_ids`), the summed
  log-probability of each sequence's target tokens; the same head (chunked on GPU).
- `classification_loss(model, batch, label_smoothing) -> (loss_sum, example_count)`: the same
  for sequence classification; `batch` holds `input_ids`, `attention_mask`, `labels` [B].

`model` is what the trainer trains: the PEFT model, possibly wrapped in DistributedDataParallel;
calling it runs DDP's forward hooks, so gradients are synchronized. The returned sums are divided
by the trainer (by the target tokens of the whole optimizer step across all ranks), so the kernels
never average.

On CPU everything is plain PyTorch: SDPA attention (transformers derives the per-example mask of
packed rows from `position_ids`), full logits and `F.cross_entropy`. On a CUDA GPU with bf16
weights, four things change and each one falls back to the plain path when it cannot apply:

- Attention: flash-attention varlen (`torch.nn.attention.varlen`) over the packed row, with
  per-example causal boundaries from `cu_seq_lens`: no mask tensor, no compute across examples.
  The transformers SDPA path would build a [T, T] block mask and use a slower masked kernel.
- Loss head: `hidden @ W_head.T` and the cross-entropy are computed chunk by chunk, with the
  gradient w.r.t. the hidden states formed in the forward pass, so the logits of the whole
  vocabulary for all tokens (16k tokens x 128k vocabulary = 8 GiB in fp32) never exist at once.
- LoRA: the adapter weights stay fp32 (what the optimizer updates) and are used in bf16 under
  autocast; PEFT's cast of every LoRA input to fp32 is switched off. That cast made an fp32 copy
  of each adapted layer's input (up to 7 per decoder layer with all-linear targets), which doubled
  the activation memory and cost a memory pass each.
- `torch.compile` of each decoder layer (regional compilation: one layer's code is compiled once
  and reused by all layers) fuses the norms, rotary embedding, SiLU-gating, and the LoRA
  scale-and-add. `KFTUNE_COMPILE=0` turns it off.

LoRA dropout: with `lora_dropout` 0 (the kftune default) PEFT uses an identity, so the adapter
reads the same activation tensor the frozen layer reads and autograd keeps a single copy of it;
a dropout > 0 costs a mask and a second copy of every adapted layer's input.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from ...common.tasks import IGNORE_INDEX

VARLEN_ATTENTION = "kftune_varlen"
# Logit elements per loss-head chunk: 2**28 (1 GiB fp32) = 2048 tokens of a 128k vocabulary.
_CHUNK_ELEMENTS = 2**28

LOG = logging.getLogger("kftune.kernels")


def switched_on(variable: str) -> bool:
    """An on-by-default environment switch of the trainer pod: off when set to 0, false or no."""
    return os.environ.get(variable, "1") not in ("0", "false", "no")


# -- attention -------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _varlen() -> tuple[Any, dict[str, Any]] | None:
    """The flash varlen attention of this torch and its causal keywords, if it has one."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    extra: dict[str, Any] = {"enable_gqa": True} if "enable_gqa" in params else {}
    if "is_causal" in params:
        return varlen_attn, {"is_causal": True, **extra}
    if "window_size" in params:
        return varlen_attn, {"window_size": (-1, 0), **extra}
    return None


_VARLEN_CALL: tuple[Any, dict[str, Any]] = (None, {})


def _varlen_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                      value: torch.Tensor, attention_mask: torch.Tensor | None,
                      scaling: float | None = None, dropout: float = 0.0,
                      **kwargs: Any) -> tuple[torch.Tensor, None]:
    """A transformers attention function: [B, H, S, D] -> [B, S, H, D], causal within examples.

    Rows without `cu_seq_lens_q` (padded micro-batches: right padding, so causal attention never
    reaches a pad from a real token) go through SDPA with `is_causal`.
    """
    cu_seq_lens = kwargs.get("cu_seq_lens_q")
    if cu_seq_lens is None or not getattr(module, "is_causal", True):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, None, dropout=dropout,
                                      scaling=scaling, is_causal=True)
    varlen_attn, causal = _VARLEN_CALL  # set when the implementation was registered
    batch, heads, length, dim = query.shape
    flat_query = query.transpose(1, 2).reshape(batch * length, heads, dim)
    flat_key = key.transpose(1, 2).reshape(batch * length, key.shape[1], dim)
    flat_value = value.transpose(1, 2).reshape(batch * length, value.shape[1], dim)
    max_length = kwargs["max_length_q"]
    out = varlen_attn(flat_query, flat_key, flat_value, cu_seq_lens, cu_seq_lens, max_length,
                      max_length, scale=scaling, **causal)
    return out.view(batch, length, heads, dim), None


def attention_implementation(device: torch.device, task: str = "causal-lm") -> str:
    """The `attn_implementation` to load the base model with on `device` for `task`."""
    global _VARLEN_CALL
    if device.type == "cuda" and task in ("causal-lm", "preference") and _varlen() is not None:
        from transformers import AttentionInterface

        _VARLEN_CALL = _varlen()
        AttentionInterface.register(VARLEN_ATTENTION, _varlen_attention)
        return VARLEN_ATTENTION
    return "sdpa"


# -- model preparation -----------------------------------------------------------------------------


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under DDP and PEFT wrappers."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:
        return []
    return [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Readies the (PEFT-wrapped) model for the fast path on `device`; a no-op on CPU."""
    base = _unwrap(model)
    if device.type != "cuda" or base.dtype != torch.bfloat16:
        return model
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = False  # LoRA runs in bf16 under autocast instead
    base._kftune_autocast = torch.bfloat16
    compile_enabled = switched_on("KFTUNE_COMPILE")
    if compile_enabled and not getattr(base, "is_gradient_checkpointing", False):
        layers = _decoder_layers(base)
        for layer in layers:
            layer.compile(dynamic=True)  # packed rows change length every step
        LOG.info("torch.compile: %d decoder layers (regional)", len(layers))
    return model


def _autocast(model: torch.nn.Module) -> contextlib.AbstractContextManager[Any]:
    dtype = getattr(_unwrap(model), "_kftune_autocast", None)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


# -- loss head -------------------------------------------------------------------------------------


def _cross_entropy_chunk(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor,
                                                                               torch.Tensor]:
    """Summed cross-entropy of one chunk and its gradient w.r.t. the logits (fp32 math)."""
    dtype = logits.dtype
    logits = logits.float()
    valid = labels != IGNORE_INDEX
    safe = labels.clamp_min(0).unsqueeze(1)
    log_norm = torch.logsumexp(logits, dim=-1, keepdim=True)
    loss_sum = ((log_norm.squeeze(1) - logits.gather(1, safe).squeeze(1)) * valid).sum()
    grad = torch.exp(logits - log_norm)
    grad = grad.scatter_add(1, safe, torch.full_like(log_norm, -1.0))
    return loss_sum, (grad * valid.unsqueeze(1)).to(dtype)


@functools.lru_cache(maxsize=1)
def _compiled_chunk() -> Any:
    return torch.compile(_cross_entropy_chunk, dynamic=True)


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum(cross_entropy(hidden @ weight.T, labels)), chunk by chunk, for a frozen `weight`."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                chunk: int, compiled: bool) -> torch.Tensor:
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        loss_sum = torch.zeros((), device=hidden.device, dtype=torch.float32)
        chunk_fn = _compiled_chunk() if compiled else _cross_entropy_chunk
        for start in range(0, hidden.shape[0], chunk):
            logits = hidden[start:start + chunk] @ weight.t()
            part, grad_logits = chunk_fn(logits, labels[start:start + chunk])
            loss_sum += part
            if grad_hidden is not None:
                torch.mm(grad_logits, weight, out=grad_hidden[start:start + chunk])
        ctx.save_for_backward(grad_hidden)
        return loss_sum

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (grad_hidden,) = ctx.saved_tensors
        grad = grad_hidden * grad_output.to(grad_hidden.dtype) if grad_hidden is not None else None
        return grad, None, None, None, None


_COMPILED_LOSS_OK = [True]


def chunked_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor,
                                 labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy of `hidden @ weight.T` against aligned `labels`.

    Never materializes more than `_CHUNK_ELEMENTS` logits at once. `weight` must be frozen.
    """
    hidden = hidden.reshape(-1, hidden.shape[-1])
    labels = labels.reshape(-1)
    weight = weight.to(hidden.dtype)
    chunk = max(256, _CHUNK_ELEMENTS // weight.shape[0])
    if _COMPILED_LOSS_OK[0] and hidden.is_cuda:
        try:
            return _ChunkedLinearCrossEntropy.apply(hidden, weight, labels, chunk, True)
        except Exception as error:  # any compiler failure: use the eager chunk
            LOG.warning("compiled cross-entropy chunk failed (%s); using eager", error)
            _COMPILED_LOSS_OK[0] = False
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, labels, chunk, False)


class _Passthrough(torch.nn.Module):
    """Stands in for the output head so that the model returns its final hidden states."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden


@contextlib.contextmanager
def _head_bypassed(base: torch.nn.Module, head: torch.nn.Module) -> Iterator[None]:
    base.set_output_embeddings(_Passthrough())
    try:
        yield
    finally:
        base.set_output_embeddings(head)


def _frozen_linear_head(base: torch.nn.Module) -> torch.nn.Linear | None:
    get_head = getattr(base, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if (type(head) is torch.nn.Linear and head.bias is None and not head.weight.requires_grad
            and hasattr(base, "set_output_embeddings")):
        return head
    return None


def _packed_boundaries(batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
    """`cu_seq_lens` and `max_length` of a packed row (from data.py, else from position_ids)."""
    if "cu_seq_lens" in batch and "max_length" in batch:
        return batch["cu_seq_lens"], int(batch["max_length"])
    positions = batch["position_ids"].reshape(-1)
    starts = torch.nonzero(positions == 0).flatten()
    ends = torch.cat([starts[1:], starts.new_tensor([positions.numel()])])
    cu_seq_lens = torch.cat([starts, ends[-1:]]).to(torch.int32)
    return cu_seq_lens, int((ends - starts).max())


def causal_lm_loss(model: torch.nn.Module, batch: dict[str, Any]) -> tuple[
    torch.Tensor, torch.Tensor
]:
    """Summed next-token cross-entropy over the target tokens, and the number of target tokens."""
    labels = batch["labels"]
    inputs: dict[str, Any] = {"input_ids": batch["input_ids"],
                              "position_ids": batch["position_ids"]}
    if "attention_mask" in batch:
        inputs["attention_mask"] = batch["attention_mask"]
    base = _unwrap(model)
    head = _frozen_linear_head(base) if labels.is_cuda else None
    if head is None:
        logits = model(**inputs, use_cache=False).logits
        loss_sum = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        return loss_sum, (labels != IGNORE_INDEX).sum()
    if "attention_mask" not in batch and base.config._attn_implementation == VARLEN_ATTENTION:
        cu_seq_lens, max_length = _packed_boundaries(batch)
        inputs.update(cu_seq_lens_q=cu_seq_lens, cu_seq_lens_k=cu_seq_lens,
                      max_length_q=max_length, max_length_k=max_length)
    with _autocast(model), _head_bypassed(base, head):
        hidden = model(**inputs, use_cache=False).logits  # the final hidden states
    loss_sum = chunked_linear_cross_entropy(hidden, head.weight, labels)
    return loss_sum, (labels != IGNORE_INDEX).sum()


def _token_cross_entropy_chunk(logits: torch.Tensor, labels: torch.Tensor) -> tuple[
    torch.Tensor, torch.Tensor
]:
    """Per-token cross-entropy of one chunk (0 where no target) and its gradient (fp32 math)."""
    dtype = logits.dtype
    logits = logits.float()
    valid = labels != IGNORE_INDEX
    safe = labels.clamp_min(0).unsqueeze(1)
    log_norm = torch.logsumexp(logits, dim=-1, keepdim=True)
    losses = (log_norm.squeeze(1) - logits.gather(1, safe).squeeze(1)) * valid
    grad = torch.exp(logits - log_norm)
    grad = grad.scatter_add(1, safe, torch.full_like(log_norm, -1.0))
    return losses, (grad * valid.unsqueeze(1)).to(dtype)


class _ChunkedLinearTokenCrossEntropy(torch.autograd.Function):
    """cross_entropy(hidden @ weight.T, labels) per token, chunk by chunk, for a frozen `weight`.

    A token's loss depends on its own hidden state only, so the gradient of each token's loss
    w.r.t. its hidden state is formed in the forward pass and scaled by the incoming gradient.
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                chunk: int) -> torch.Tensor:
        needs_grad = ctx.needs_input_grad[0]
        grad_hidden = torch.empty_like(hidden) if needs_grad else None
        losses = torch.empty(hidden.shape[0], device=hidden.device, dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk):
            logits = hidden[start:start + chunk] @ weight.t()
            part, grad_logits = _token_cross_entropy_chunk(logits, labels[start:start + chunk])
            losses[start:start + chunk] = part
            if grad_hidden is not None:
                torch.mm(grad_logits, weight, out=grad_hidden[start:start + chunk])
        ctx.save_for_backward(grad_hidden)
        return losses

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (grad_hidden,) = ctx.saved_tensors
        if grad_hidden is None:
            return None, None, None, None
        return grad_hidden * grad_output.to(grad_hidden.dtype).unsqueeze(1), None, None, None


def sequence_log_probs(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """The summed log-probability of each sequence's target tokens, [num_sequences] fp32."""
    labels = batch["labels"].reshape(-1)
    inputs: dict[str, Any] = {"input_ids": batch["input_ids"],
                              "position_ids": batch["position_ids"]}
    if "attention_mask" in batch:
        inputs["attention_mask"] = batch["attention_mask"]
    base = _unwrap(model)
    head = _frozen_linear_head(base) if labels.is_cuda else None
    if head is None:
        with _autocast(model):
            logits = model(**inputs, use_cache=False).logits
        token_losses = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels,
                                       ignore_index=IGNORE_INDEX, reduction="none")
    else:
        if "attention_mask" not in batch and base.config._attn_implementation == VARLEN_ATTENTION:
            cu_seq_lens, max_length = _packed_boundaries(batch)
            inputs.update(cu_seq_lens_q=cu_seq_lens, cu_seq_lens_k=cu_seq_lens,
                          max_length_q=max_length, max_length_k=max_length)
        with _autocast(model), _head_bypassed(base, head):
            hidden = model(**inputs, use_cache=False).logits  # the final hidden states
        hidden = hidden.reshape(-1, hidden.shape[-1])
        weight = head.weight.to(hidden.dtype)
        chunk = max(256, _CHUNK_ELEMENTS // weight.shape[0])
        token_losses = _ChunkedLinearTokenCrossEntropy.apply(hidden, weight, labels, chunk)
    sums = torch.zeros(batch["num_sequences"], device=labels.device, dtype=torch.float32)
    if batch["num_sequences"] == 0:
        return sums + 0.0 * token_losses.sum()  # keeps the graph: DDP still syncs gradients
    return sums.index_add(0, batch["sequence_ids"].reshape(-1), -token_losses)


def classification_loss(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], label_smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy over the examples of a classification micro-batch, and their count."""
    with _autocast(model):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"]
    loss_sum = F.cross_entropy(
        logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum",
        label_smoothing=label_smoothing,
    )
    return loss_sum, (labels != IGNORE_INDEX).sum()
