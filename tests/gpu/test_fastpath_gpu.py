"""The GPU fast path against the plain Hugging Face forward, on one GPU, on the same packed batch.

The fast path (kernels.py) is flash varlen attention, the chunked linear + cross-entropy head,
LoRA in bf16 under autocast and `torch.compile` of each decoder layer. The plain path is
transformers' own SDPA forward (the per-example mask derived from `position_ids`), full logits
and `F.cross_entropy`. Both run the same weights on the same packed micro-batch.

Tolerance: bf16 itself moves the result. So the reference is the plain forward in fp32 (weights
upcast), and the fast path must be about as close to it as the plain forward in bf16 is: its
error may be at most twice the plain bf16 error, plus a floor of 2e-3 for the loss (half a bf16
ulp at 1.0 is 2e-3) and 1e-2 for the gradients (bf16 operands land between 1e-3 and 1e-2 in
relative norm). The test prints the four errors it compares.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from kftune.components.train_lora.pod import data, kernels  # noqa: E402

SHAPE = {"vocab_size": 4096, "hidden_size": 512, "intermediate_size": 1408,
         "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2,
         "max_position_embeddings": 2048, "tie_word_embeddings": False}


def _model(tmp_path, dtype, attention):
    import peft
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(
        tmp_path, dtype=dtype, attn_implementation=attention, device_map={"": "cuda"})
    model.requires_grad_(False)
    torch.manual_seed(2)  # the same LoRA weights in every copy; B random, so A gets a gradient
    lora = peft.LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, target_modules="all-linear",
                           init_lora_weights=False)
    return peft.get_peft_model(model, lora)


def _batch(seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    lengths = [int(n) for n in torch.randint(40, 700, (8,), generator=generator)]
    examples = []
    for index, length in enumerate(lengths):
        ids = torch.randint(0, SHAPE["vocab_size"], (length,), generator=generator).tolist()
        labels = [*ids[1:], data.IGNORE_INDEX]
        labels[: length // 4] = [data.IGNORE_INDEX] * (length // 4)  # a prompt: no loss
        examples.append(data.Example(index, tuple(ids), tuple(labels)))
    batch = data.collate_causal_lm(examples, pad_id=0, packing=True, pad_to_multiple_of=64)
    return {key: value.cuda() if isinstance(value, torch.Tensor) else value
            for key, value in batch.items()}


def _plain_loss(model, batch):
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                   use_cache=False).logits
    labels = batch["labels"]
    loss_sum = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
        ignore_index=data.IGNORE_INDEX, reduction="sum")
    return loss_sum, (labels != data.IGNORE_INDEX).sum()


def _loss_and_grads(model, batch, loss_fn):
    loss_sum, count = loss_fn(model, batch)
    loss = loss_sum / count
    loss.backward()
    grads = {name: param.grad.float().clone() for name, param in model.named_parameters()
             if param.requires_grad}
    model.zero_grad(set_to_none=True)
    return loss.item(), grads


def _grad_error(grads, reference) -> float:
    """The largest relative norm error over the LoRA tensors."""
    return max(float((grads[name] - ref).norm() / ref.norm()) for name, ref in reference.items())


@pytest.mark.gpu(count=1)
def test_fast_path_matches_plain_forward(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**SHAPE)).to(torch.bfloat16).save_pretrained(tmp_path)
    device = torch.device("cuda")
    fast = kernels.prepare_model(
        _model(tmp_path, torch.bfloat16, kernels.attention_implementation(device)), device)
    assert fast.get_base_model().config._attn_implementation == kernels.VARLEN_ATTENTION
    plain_bf16 = _model(tmp_path, torch.bfloat16, "sdpa")
    reference = _model(tmp_path, torch.float32, "sdpa")
    for seed in (0, 1):  # a second batch of other lengths: the compiled layers see new shapes
        batch = _batch(seed)
        ref_loss, ref_grads = _loss_and_grads(reference, batch, _plain_loss)
        bf16_loss, bf16_grads = _loss_and_grads(plain_bf16, batch, _plain_loss)
        fast_loss, fast_grads = _loss_and_grads(fast, batch, kernels.causal_lm_loss)
        assert set(fast_grads) == set(ref_grads) and len(ref_grads) == 4 * 7 * 2
        loss_error, plain_loss_error = abs(fast_loss - ref_loss), abs(bf16_loss - ref_loss)
        grad_error, plain_grad_error = _grad_error(fast_grads, ref_grads), _grad_error(
            bf16_grads, ref_grads)
        print(f"batch {seed}: loss fp32 {ref_loss:.5f} | fast error {loss_error:.2e} (plain bf16 "
              f"{plain_loss_error:.2e}) | LoRA grad error fast {grad_error:.2e} (plain bf16 "
              f"{plain_grad_error:.2e})")
        assert loss_error <= 2 * plain_loss_error + 2e-3
        assert grad_error <= 2 * plain_grad_error + 1e-2
