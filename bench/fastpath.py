"""Prototype of the kftune GPU hot path, standalone (no kftune imports), to measure before porting.

Levers: padding-free packing with per-example attention boundaries (flash varlen through
transformers' AttentionInterface), a chunked linear + cross-entropy that never holds the logits of
the whole vocabulary for all tokens, bf16 base weights with fp32 LoRA weights computed in bf16
under autocast (PEFT's input casting off, so no fp32 copy of every activation), large token
batches, optional torch.compile per decoder layer.
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F

IGNORE = -100
VARLEN_NAME = "kftune_varlen"


# ---------------------------------------------------------------- attention
def _varlen_fn():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None, None
    params = inspect.signature(varlen_attn).parameters
    if "is_causal" in params:
        causal = {"is_causal": True}
    elif "window_size" in params:
        causal = {"window_size": (-1, 0)}
    else:
        return None, None
    return varlen_attn, causal


_VARLEN, _CAUSAL = _varlen_fn()
GQA_NATIVE = True  # flipped by the env check if the kernel rejects fewer kv heads


def varlen_attention(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs
):
    """transformers attention function: (B,H,S,D) packed rows -> (B,S,H,D), per-example causal."""
    batch, heads, seq, dim = query.shape
    cu_seqlens = kwargs["cu_seq_lens_q"]
    max_len = kwargs["max_length_q"]
    q = query.transpose(1, 2).reshape(batch * seq, heads, dim)
    k = key.transpose(1, 2).reshape(batch * seq, key.shape[1], dim)
    v = value.transpose(1, 2).reshape(batch * seq, value.shape[1], dim)
    if not GQA_NATIVE and k.shape[1] != heads:
        k = k.repeat_interleave(heads // k.shape[1], dim=1)
        v = v.repeat_interleave(heads // v.shape[1], dim=1)
    extra = {"enable_gqa": True} if "enable_gqa" in inspect.signature(_VARLEN).parameters else {}
    out = _VARLEN(
        q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, scale=scaling, **_CAUSAL, **extra
    )
    return out.view(batch, seq, heads, dim), None


def register_varlen() -> str:
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN_NAME, varlen_attention)
    return VARLEN_NAME


# ---------------------------------------------------------------- loss
def _ce_chunk(logits: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor):
    """Loss sum and d(loss*scale)/dlogits for one chunk; fp32 math, bf16 gradient out."""
    logits = logits.float()
    valid = labels != IGNORE
    safe = labels.clamp_min(0)
    lse = torch.logsumexp(logits, dim=-1)
    target = logits.gather(1, safe[:, None]).squeeze(1)
    loss_sum = ((lse - target) * valid).sum()
    grad = torch.exp(logits - lse[:, None])
    grad = grad.scatter_add(1, safe[:, None], -torch.ones_like(target)[:, None])
    grad = grad * (valid.to(grad.dtype) * scale)[:, None]
    return loss_sum, grad.to(torch.bfloat16)


_CE_CHUNK = _ce_chunk


def use_compiled_ce(enabled: bool) -> None:
    global _CE_CHUNK
    _CE_CHUNK = torch.compile(_ce_chunk, dynamic=True) if enabled else _ce_chunk


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum(CE(hidden @ W.T, labels)) / normalizer, computed chunk by chunk (frozen W).

    The gradient w.r.t. hidden is computed in the forward pass, chunk by chunk, so only one
    chunk of logits ever exists; backward scales it by the incoming gradient.
    """

    @staticmethod
    def forward(ctx, hidden, weight, labels, normalizer, chunk_size):
        needs_grad = hidden.requires_grad
        grad_hidden = torch.empty_like(hidden) if needs_grad else None
        total = torch.zeros((), device=hidden.device, dtype=torch.float32)
        scale = (1.0 / normalizer).to(torch.float32)
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start : start + chunk_size]
            logits = h @ weight.t()
            loss_sum, grad_logits = _CE_CHUNK(logits, labels[start : start + chunk_size], scale)
            total += loss_sum
            if needs_grad:
                torch.mm(
                    grad_logits.to(h.dtype),
                    weight.to(h.dtype),
                    out=grad_hidden[start : start + chunk_size],
                )
        ctx.save_for_backward(grad_hidden)
        return total * scale

    @staticmethod
    def backward(ctx, grad_output):
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad_output.to(grad_hidden.dtype), None, None, None, None


def chunked_lm_loss(hidden, weight, shift_labels, normalizer=None, chunk_size=4096):
    hidden = hidden.reshape(-1, hidden.shape[-1])
    shift_labels = shift_labels.reshape(-1)
    if normalizer is None:
        normalizer = (shift_labels != IGNORE).sum().clamp_min(1)
    normalizer = torch.as_tensor(normalizer, device=hidden.device, dtype=torch.float32)
    return ChunkedLinearCrossEntropy.apply(
        hidden, weight.to(hidden.dtype), shift_labels, normalizer, chunk_size
    )


# ---------------------------------------------------------------- packing
def pack(examples: list[list[int]], device) -> dict[str, torch.Tensor]:
    """One packed row: ids, positions restarting per example, labels shifted within examples."""
    ids, pos, labels, cu = [], [], [], [0]
    for tokens in examples:
        ids.extend(tokens)
        pos.extend(range(len(tokens)))
        labels.extend(tokens[1:] + [IGNORE])
        cu.append(cu[-1] + len(tokens))

    def as_long(xs):
        return torch.tensor(xs, dtype=torch.long).pin_memory().to(device, non_blocking=True)

    return {
        "input_ids": as_long(ids)[None],
        "position_ids": as_long(pos)[None],
        "shift_labels": as_long(labels)[None],
        "cu_seq_lens": torch.tensor(cu, dtype=torch.int32)
        .pin_memory()
        .to(device, non_blocking=True),
        "max_len": max(len(t) for t in examples),
        "tokens": len(ids),
    }


def greedy_batches(examples: list[list[int]], token_budget: int) -> list[list[list[int]]]:
    batches, current, used = [], [], 0
    for tokens in examples:
        if current and used + len(tokens) > token_budget:
            batches.append(current)
            current, used = [], 0
        current.append(tokens)
        used += len(tokens)
    if current:
        batches.append(current)
    return batches


def packed_loss(model, batch, chunk_size=4096, max_len_hint=None):
    """Runs the decoder on a packed row and returns the mean CE over its shifted labels."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    max_len = max_len_hint or batch["max_len"]
    out = inner.model(
        input_ids=batch["input_ids"],
        position_ids=batch["position_ids"],
        cu_seq_lens_q=batch["cu_seq_lens"],
        cu_seq_lens_k=batch["cu_seq_lens"],
        max_length_q=max_len,
        max_length_k=max_len,
        use_cache=False,
    )
    hidden = out.last_hidden_state
    return chunked_lm_loss(
        hidden, inner.lm_head.weight, batch["shift_labels"], chunk_size=chunk_size
    )


def fast_lora_setup(model, lora_kwargs: dict, compile_layers: bool):
    from peft import LoraConfig, get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora_kwargs))
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = False
    if compile_layers:
        for layer in model.get_base_model().model.layers:
            layer.compile()
    return model


def math_check_attention(device="cuda"):
    """Compares varlen attention with per-example SDPA; returns max abs error."""
    torch.manual_seed(0)
    lengths = [37, 300, 1, 129, 700]
    heads, kv_heads, dim = 32, 8, 128
    total = sum(lengths)
    q = torch.randn(1, heads, total, dim, device=device, dtype=torch.bfloat16)
    k = torch.randn(1, kv_heads, total, dim, device=device, dtype=torch.bfloat16)
    v = torch.randn(1, kv_heads, total, dim, device=device, dtype=torch.bfloat16)
    cu = torch.tensor(
        [0, *torch.tensor(lengths).cumsum(0).tolist()], device=device, dtype=torch.int32
    )
    out, _ = varlen_attention(
        None, q, k, v, None, scaling=dim**-0.5, cu_seq_lens_q=cu, max_length_q=max(lengths)
    )
    errs = []
    for i, _length in enumerate(lengths):
        s, e = cu[i].item(), cu[i + 1].item()
        ref = F.scaled_dot_product_attention(
            q[:, :, s:e].float(),
            k[:, :, s:e].float().repeat_interleave(heads // kv_heads, 1),
            v[:, :, s:e].float().repeat_interleave(heads // kv_heads, 1),
            is_causal=True,
        )
        errs.append((out[:, s:e].float().transpose(1, 2) - ref).abs().max().item())
    return max(errs)


def math_check_loss(device="cuda"):
    torch.manual_seed(0)
    hidden = torch.randn(3000, 512, device=device, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(5000, 512, device=device, dtype=torch.bfloat16) * 0.05
    labels = torch.randint(0, 5000, (3000,), device=device)
    labels[::7] = IGNORE
    loss = chunked_lm_loss(hidden, weight, labels, chunk_size=1024)
    loss.backward()
    grad = hidden.grad.clone()
    hidden.grad = None
    ref = F.cross_entropy((hidden.float() @ weight.float().t()), labels, ignore_index=IGNORE)
    ref.backward()
    rel = (grad.float() - hidden.grad.float()).norm() / hidden.grad.float().norm()
    return abs(loss.item() - ref.item()), rel.item()


def lora_param_count(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def cosine(a, b):
    return float(F.cosine_similarity(a.flatten().float(), b.flatten().float(), dim=0))


__all__ = ["math", "register_varlen"]
