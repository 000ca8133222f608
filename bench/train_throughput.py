"""Training throughput: the reference recipe vs kftune's trainer, on the same GPUs and data.

One invocation measures (a) the reference recipe -- HF `Trainer` + PEFT LoRA on batches padded to
`max_length`, fp32 weights with `bf16=True` autocast, as the Training Operator's
`hf_llm_training.py` does it -- and (b) kftune's trainer through its real entrypoint
(`torchrun -m kftune.components.train_lora.pod.trainer --config ...`), on the same synthetic Dataset
artifact, model shape and LoRA config. Every run is its own process; each prints one JSON line;
a table closes the output. See BENCHMARKS.md for the commands used and what they gave.

    python bench/train_throughput.py --runs env,reference,fastpath --shapes 1b,8b --lora r8qv,r16all
    python bench/train_throughput.py --runs kftune --gpus 1,2,4 --topologies 1node,2nodes
    python bench/train_throughput.py --runs kftune-dpo,trl-dpo,kftune,trl-sft --shapes 8b \
        --lora r16all

The preference rows (`kftune-dpo` vs `trl-dpo`: TRL's DPOTrainer + PEFT, bf16 weights, its
default padded batches, since TRL 1.16 disables DPO's padding_free) train on the same synthetic
pairs (synth.pair_rows); `trl-sft` is TRL's SFTTrainer + PEFT with packing (bfd, padding-free) and
Liger kernels when liger_kernel is importable, on the same texts as `kftune`.

Subcommands starting with `_` are the per-run workers the driver starts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import synth  # noqa: E402

REF_MICRO_BATCH = {"1b": 8, "8b": 4, "tiny": 4}
# Pairs per TRL DPOTrainer micro-batch (2 padded sequences each) and texts per packed SFT row.
TRL_DPO_MICRO_BATCH = {"1b": 4, "8b": 2, "tiny": 4}
TRL_SFT_MICRO_BATCH = {"1b": 8, "8b": 4, "tiny": 4}
# BitsAndBytesConfig of both QLoRA runs (kftune gets it as `training_parameters.quantization`).
QLORA = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "bfloat16",
         "bnb_4bit_use_double_quant": True}
NCCL_SAFE_ENV = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}


def log(*parts):
    print(time.strftime("%H:%M:%S"), *parts, flush=True)


def emit(result: dict, out: Path | None):
    line = json.dumps(result, sort_keys=True)
    print("RESULT " + line, flush=True)
    if out:
        with open(out / "results.jsonl", "a") as handle:
            handle.write(line + "\n")


def gpu_info() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"gpu": None, "gpus_visible": 0}
    return {"gpu": torch.cuda.get_device_name(0), "gpus_visible": torch.cuda.device_count()}


def steady(times: list[float], tokens: list[int], warmup: int) -> dict:
    """Throughput over the steps after `warmup` (times: end of each step, from the start)."""
    timed = len(times) - warmup
    seconds = times[-1] - times[warmup - 1] if warmup > 0 else times[-1]
    useful = sum(tokens[warmup:])
    ends = [0.0, *times]
    durations = sorted(ends[step + 1] - ends[step] for step in range(warmup, len(times)))
    return {
        "timed_steps": timed,
        "step_time_s": seconds / timed,
        "step_time_p50_s": durations[len(durations) // 2] if durations else None,
        "step_time_max_s": durations[-1] if durations else None,
        "useful_tokens_per_step": useful / timed,
        "tokens_per_s": useful / seconds,
    }


# ------------------------------------------------------------------------------------------ env
def cmd_env(args):
    import importlib

    import torch
    import torch.nn.functional as F

    info = {
        "kind": "env",
        **gpu_info(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
    }
    for name in (
        "transformers",
        "peft",
        "accelerate",
        "safetensors",
        "tokenizers",
        "pyarrow",
        "triton",
        "datasets",
        "kfp",
        "liger_kernel",
        "flash_attn",
        "pytest",
    ):
        try:
            info[name] = getattr(importlib.import_module(name), "__version__", "present")
        except Exception as error:
            info[name] = f"missing ({type(error).__name__})"
    import fastpath

    info["varlen_api"] = fastpath._VARLEN is not None
    info["varlen_causal_kw"] = list(fastpath._CAUSAL) if fastpath._CAUSAL else None
    try:
        info["varlen_gqa_max_err"] = fastpath.math_check_attention()
    except Exception as error:
        info["varlen_gqa_error"] = repr(error)[:300]
        fastpath.GQA_NATIVE = False
        try:
            info["varlen_repeat_kv_max_err"] = fastpath.math_check_attention()
        except Exception as error2:
            info["varlen_repeat_kv_error"] = repr(error2)[:300]
    try:
        loss_err, grad_rel = fastpath.math_check_loss()
        info["chunked_ce_loss_abs_err"], info["chunked_ce_grad_rel_err"] = loss_err, grad_rel
    except Exception as error:
        info["chunked_ce_error"] = repr(error)[:300]
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401

        info["flex_attention"] = True
    except Exception:
        info["flex_attention"] = False
    info["sdpa_flash"] = torch.backends.cuda.flash_sdp_enabled()
    # Does transformers' sdpa path detect packed sequences from position_ids, and does varlen agree?
    try:
        from transformers import AutoModelForCausalLM, LlamaConfig

        cfg = LlamaConfig(
            vocab_size=1000,
            hidden_size=256,
            intermediate_size=512,
            num_hidden_layers=2,
            num_attention_heads=8,
            num_key_value_heads=2,
        )
        torch.manual_seed(0)
        lengths = [50, 120, 7]
        ids = [torch.randint(0, 1000, (n,)) for n in lengths]
        packed = torch.cat(ids)[None].cuda()
        pos = torch.cat([torch.arange(n) for n in lengths])[None].cuda()
        cu = torch.tensor([0, 50, 170, 177], dtype=torch.int32, device="cuda")
        name = fastpath.register_varlen()
        outs = {}
        for impl in ("sdpa", name):
            torch.manual_seed(0)
            model = (
                AutoModelForCausalLM.from_config(cfg, attn_implementation=impl)
                .cuda()
                .float()
                .eval()
            )
            with torch.no_grad():
                if impl == "sdpa":  # fp32 per-example forwards: the reference for both
                    separate = torch.cat([model(input_ids=x[None].cuda()).logits[0] for x in ids])
                    got = model(input_ids=packed, position_ids=pos, use_cache=False).logits[0]
                else:
                    model = model.bfloat16()
                    got = (
                        model(
                            input_ids=packed,
                            position_ids=pos,
                            cu_seq_lens_q=cu,
                            cu_seq_lens_k=cu,
                            max_length_q=120,
                            max_length_k=120,
                            use_cache=False,
                        )
                        .logits[0]
                        .float()
                    )
            outs[impl] = (got - separate).abs().max().item()
        info["packed_vs_separate_max_err_sdpa_fp32"] = outs["sdpa"]
        info["packed_vs_separate_max_err_varlen_bf16"] = outs[name]
    except Exception as error:
        info["packed_check_error"] = repr(error)[:500]
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    info["matmul_bf16_tflops"] = 10 * 2 * 8192**3 / (time.perf_counter() - start) / 1e12
    del a, b, F
    emit(info, args.out)


# ------------------------------------------------------------------------------------ reference
def _model_for(shape: str, dtype, model_dir: str | None, attn: str | None = None):
    import torch
    from transformers import AutoModelForCausalLM

    extra = {"attn_implementation": attn} if attn else {}
    if model_dir:
        return AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=dtype, device_map="cuda" if torch.cuda.is_available() else "cpu",
            **extra
        )
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        return AutoModelForCausalLM.from_config(synth.hf_config(shape), dtype=dtype, **extra)


def cmd_reference(args):
    """The Training Operator's recipe (hf_llm_training.py), bf16=True, on one GPU."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        DataCollatorForLanguageModeling,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    micro_batch = args.micro_batch or REF_MICRO_BATCH[args.shape]
    total_steps = args.warmup + args.steps
    tokenizer = synth.build_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token  # as the operator does
    texts = synth.read_texts(args.data)[: micro_batch * total_steps * 2]
    # The operator: dataset.map(lambda x: tokenizer(x["text"], padding="max_length",
    #                                               truncation=True))
    encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=synth.MAX_LEN)
    rows = [
        {"input_ids": i, "attention_mask": m}
        for i, m in zip(encoded["input_ids"], encoded["attention_mask"], strict=False)
    ]

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, index):
            return rows[index]

    counts: list[int] = []
    base_collator = DataCollatorForLanguageModeling(tokenizer, pad_to_multiple_of=8, mlm=False)

    def collator(features):
        batch = base_collator(features)
        counts.append(int(batch["attention_mask"].sum()))
        return batch

    if args.quant:
        # The common QLoRA recipe: bitsandbytes NF4 with double quantization, bf16 compute,
        # PEFT's prepare_model_for_kbit_training (without gradient checkpointing: memory is
        # not short on this GPU, and recomputation would only slow the peer down).
        from peft import prepare_model_for_kbit_training
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        model = AutoModelForCausalLM.from_pretrained(
            args.model_dir, dtype=torch.bfloat16, device_map="cuda",
            quantization_config=BitsAndBytesConfig(**QLORA))
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model = _model_for(args.shape, torch.float32, args.model_dir)  # operator: fp32 load
    lora = synth.LORA_CONFIGS[args.lora]
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora))
    lora_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    stats = synth.token_stats(np.array([sum(1 for _ in t.split()) for t in texts]))
    flops = synth.flops_per_token(model, lora_params, float(synth.MAX_LEN))  # T = padded length

    times, losses = [], []
    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    class Timing(TrainerCallback):
        def on_train_begin(self, *a, **k):
            sync()
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            sync()
            times.append(time.perf_counter() - self.start)

        def on_log(self, _args, _state, _control, logs=None, **k):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    training_args = TrainingArguments(
        output_dir=str(args.scratch / f"ref-{args.shape}-{args.lora}"),
        per_device_train_batch_size=micro_batch,
        max_steps=total_steps,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        bf16=cuda,
        use_cpu=not cuda,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=42,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=Rows(),
        data_collator=collator,
        callbacks=[Timing()],
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    result = {
        "kind": "reference",
        "tag": "qlora" if args.quant else "",
        "shape": args.shape,
        "lora": args.lora,
        "gpus": 1,
        "topology": "1node",
        "micro_batch": micro_batch,
        "padded_len": synth.MAX_LEN,
        "warmup": args.warmup,
        **steady(times, counts[: len(times)], args.warmup),
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "loss": losses,
        "attended_len_T": float(synth.MAX_LEN),
        "data_mean_len": stats["mean_len"],
        **flops,
        **gpu_info(),
    }
    result["tokens_per_s_per_gpu"] = result["tokens_per_s"]
    result["mfu"] = synth.mfu(result["tokens_per_s_per_gpu"], flops["flops_per_token"])
    emit(result, args.out)


# ------------------------------------------------------------------------------- TRL peers


def _trl_timing(args, trainer_ref: list, times: list, tokens: list, losses: list):
    """A TrainerCallback: step end times, tokens per step (TRL's own count), logged losses."""
    import torch
    from transformers import TrainerCallback

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

    class Timing(TrainerCallback):
        def on_train_begin(self, *a, **k):
            sync()
            self.start, self.seen = time.perf_counter(), 0

        def on_step_end(self, *a, **k):
            sync()
            times.append(time.perf_counter() - self.start)
            total = trainer_ref[0]._total_train_tokens
            tokens.append(total - self.seen)
            self.seen = total

        def on_log(self, _args, _state, _control, logs=None, **k):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    return Timing()


def _trl_result(args, kind: str, micro_batch: int, times, tokens, losses, extra: dict) -> None:
    import torch

    cuda = torch.cuda.is_available()
    result = {
        "kind": kind, "tag": args.tag, "shape": args.shape, "lora": args.lora, "gpus": 1,
        "topology": "1node", "micro_batch": micro_batch, "warmup": args.warmup,
        **steady(times, tokens[: len(times)], args.warmup),
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "loss": losses, **extra, **gpu_info(),
    }
    result["tokens_per_s_per_gpu"] = result["tokens_per_s"]
    emit(result, args.out)


def _trl_common(args, name: str, micro_batch: int) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return {"output_dir": str(args.scratch / name), "per_device_train_batch_size": micro_batch,
            "max_steps": args.warmup + args.steps, "learning_rate": args.lr,
            "lr_scheduler_type": "constant", "bf16": cuda, "use_cpu": not cuda,
            "logging_steps": 1, "save_strategy": "no", "report_to": "none", "seed": 42,
            "disable_tqdm": True, "dataloader_num_workers": 0,
            # TRL turns activation checkpointing on by default; memory is not short for these
            # shapes on the GPU, and recomputation would only slow the peer down.
            "gradient_checkpointing": False}


def _trl_dataset(columns):
    """A `datasets.Dataset` of `columns` with a fixed fingerprint.

    `Dataset.from_dict`/`from_list` fingerprint the table by pickling it with dill, which fails on
    Python 3.12 with pyarrow 26 ("Can't pickle <class 'MonthDayNano'>"): the peers would not start.
    """
    from datasets import Dataset
    from datasets.table import InMemoryTable

    rows = len(next(iter(columns.values())))
    return Dataset(InMemoryTable.from_pydict(columns), fingerprint=f"kftune-bench-{rows}")


def cmd_trl_dpo(args):
    """TRL's DPOTrainer + PEFT LoRA (reference = the base with the adapter off), bf16 weights."""
    import torch
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    micro_batch = args.micro_batch or TRL_DPO_MICRO_BATCH[args.shape]
    rows = synth.pair_rows(synth.read_texts(args.data))
    tokenizer = synth.build_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    model = _model_for(args.shape, torch.bfloat16 if torch.cuda.is_available() else torch.float32,
                       args.model_dir)
    config = DPOConfig(**_trl_common(args, f"trl-dpo-{args.shape}", micro_batch),
                       max_length=synth.MAX_LEN, beta=0.1, loss_type=["sigmoid"])
    trainer_ref, times, tokens, losses = [], [], [], []
    trainer = DPOTrainer(
        model=model, args=config,
        train_dataset=_trl_dataset({key: [row[key] for row in rows] for key in rows[0]}),
        processing_class=tokenizer,
        peft_config=LoraConfig(task_type="CAUSAL_LM", **synth.LORA_CONFIGS[args.lora]),
        callbacks=[_trl_timing(args, trainer_ref, times, tokens, losses)])
    trainer_ref.append(trainer)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    _trl_result(args, "trl-dpo", micro_batch, times, tokens, losses, {"loss_type": "sigmoid"})


def cmd_trl_sft(args):
    """TRL's SFTTrainer + PEFT LoRA with packing (bfd, padding-free), Liger when installed."""
    import importlib.util

    import torch
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    micro_batch = args.micro_batch or TRL_SFT_MICRO_BATCH[args.shape]
    liger = importlib.util.find_spec("liger_kernel") is not None and torch.cuda.is_available()
    tokenizer = synth.build_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    attn = "sdpa"
    model = _model_for(args.shape, torch.bfloat16 if torch.cuda.is_available() else torch.float32,
                       args.model_dir, attn=attn)
    config = SFTConfig(**_trl_common(args, f"trl-sft-{args.shape}", micro_batch),
                       max_length=synth.MAX_LEN, packing=True, use_liger_kernel=liger)
    trainer_ref, times, tokens, losses = [], [], [], []
    trainer = SFTTrainer(
        model=model, args=config,
        train_dataset=_trl_dataset({"text": synth.read_texts(args.data)}),
        processing_class=tokenizer,
        peft_config=LoraConfig(task_type="CAUSAL_LM", **synth.LORA_CONFIGS[args.lora]),
        callbacks=[_trl_timing(args, trainer_ref, times, tokens, losses)])
    trainer_ref.append(trainer)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    _trl_result(args, "trl-sft", micro_batch, times, tokens, losses,
                {"liger": liger, "packing": "bfd", "attn": attn})


# ------------------------------------------------------------------------------------- fastpath
def _token_lists(data: Path, limit: int) -> list[list[int]]:
    texts = synth.read_texts(data)[:limit]
    return [[int(w[1:]) for w in text.split()] for text in texts]


def cmd_fastpath(args):
    """The standalone prototype of the fast path (bench/fastpath.py) on one GPU."""
    import fastpath
    import torch

    name = fastpath.register_varlen()
    examples = _token_lists(args.data, 20000)
    batches = fastpath.greedy_batches(examples, args.token_budget)
    total_steps = args.warmup + args.steps
    model = _model_for(args.shape, torch.bfloat16, args.model_dir, attn=name)
    for param in model.parameters():
        param.requires_grad_(False)
    model = fastpath.fast_lora_setup(
        model, synth.LORA_CONFIGS[args.lora], compile_layers=args.compile
    )
    fastpath.use_compiled_ce(args.compile)
    trainable = [p for p in model.parameters() if p.requires_grad]
    lora_params = sum(p.numel() for p in trainable)
    used = [len(t) for b in batches[:total_steps] for t in b]
    stats = synth.token_stats(np.array(used))
    flops = synth.flops_per_token(model, lora_params, stats["attended_len"])
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, fused=True)
    events = [torch.cuda.Event(enable_timing=True) for _ in range(total_steps + 1)]
    losses, tokens = [], []
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    wall0 = time.perf_counter()
    events[0].record()
    for step in range(total_steps):
        batch = fastpath.pack(batches[step], "cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fastpath.packed_loss(
                model,
                batch,
                chunk_size=args.ce_chunk,
                max_len_hint=synth.MAX_LEN if args.compile else None,
            )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        events[step + 1].record()
        losses.append(loss.detach())
        tokens.append(batch["tokens"])
        if step < args.warmup:
            torch.cuda.synchronize()
            log(f"fastpath warmup step {step} done at {time.perf_counter() - wall0:.1f}s")
    torch.cuda.synchronize()
    times = [events[0].elapsed_time(e) / 1000 for e in events[1:]]
    result = {
        "kind": "fastpath",
        "shape": args.shape,
        "lora": args.lora,
        "gpus": 1,
        "topology": "1node",
        "compile": args.compile,
        "token_budget": args.token_budget,
        "warmup": args.warmup,
        **steady(times, tokens, args.warmup),
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
        "loss": [float(x) for x in losses],
        "attended_len_T": stats["attended_len"],
        "warmup_s": times[args.warmup - 1] if args.warmup else 0.0,
        **flops,
        **gpu_info(),
    }
    result["tokens_per_s_per_gpu"] = result["tokens_per_s"]
    result["mfu"] = synth.mfu(result["tokens_per_s_per_gpu"], flops["flops_per_token"])
    emit(result, args.out)


def cmd_losscmp(args):
    """Same init, same examples per step: the reference's padded HF loss vs kftune's kernels.

    Reference side: fp32 weights, bf16 autocast, rows padded to max_length, HF's own loss (what
    the Trainer computes). kftune side: bf16 weights, the examples packed into one row by
    kftune's data.collate_causal_lm, loss from kftune's kernels.causal_lm_loss (varlen attention
    and the chunked loss head on GPU). Same LoRA init (same seed), same AdamW, same order.
    """
    import torch
    from kftune.components.common.tokenization import aligned_labels
    from kftune.components.train_lora.pod import data, kernels
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    os.environ.setdefault("KFTUNE_COMPILE", "0")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    per_step = 8
    token_lists = _token_lists(args.data, per_step * args.steps)
    lora = synth.LORA_CONFIGS[args.lora]
    config = synth.hf_config(args.shape)
    torch.manual_seed(0)
    with device:
        reference = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        fast = AutoModelForCausalLM.from_config(
            config,
            dtype=torch.bfloat16 if device.type == "cuda" else torch.float32,
            attn_implementation=kernels.attention_implementation(device, "causal-lm"),
        )
    fast.load_state_dict(reference.state_dict())
    fast.requires_grad_(False)
    curves = {}
    for label in ("reference", "kftune"):
        torch.manual_seed(1234)
        if label == "reference":
            model = get_peft_model(reference, LoraConfig(task_type="CAUSAL_LM", **lora))
        else:
            model = kernels.prepare_model(
                get_peft_model(fast, LoraConfig(task_type="CAUSAL_LM", **lora)), device
            )
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=args.lr
        )
        losses = []
        for step in range(args.steps):
            group = token_lists[step * per_step : (step + 1) * per_step]
            if label == "reference":
                ids = torch.full((len(group), synth.MAX_LEN), synth.EOS_ID, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for row, tokens in enumerate(group):
                    ids[row, : len(tokens)] = torch.tensor(tokens)
                    mask[row, : len(tokens)] = 1
                autocast = torch.autocast(
                    device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"
                )
                with autocast:
                    loss = model(
                        input_ids=ids.to(device),
                        attention_mask=mask.to(device),
                        labels=ids.masked_fill(mask == 0, -100).to(device),
                    ).loss
            else:
                examples = [
                    data.Example(i, tuple(t), aligned_labels(t, [True] * len(t)))
                    for i, t in enumerate(group)
                ]
                batch = {
                    k: v.to(device) if isinstance(v, torch.Tensor) else v
                    for k, v in data.collate_causal_lm(examples, synth.EOS_ID, True).items()
                }
                loss_sum, count = kernels.causal_lm_loss(model, batch)
                loss = loss_sum / count
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss))
        curves[label] = losses
        del model, optimizer
    diffs = [abs(a - b) for a, b in zip(curves["reference"], curves["kftune"], strict=False)]
    emit(
        {
            "kind": "losscmp",
            "shape": args.shape,
            "lora": args.lora,
            "lr": args.lr,
            "steps": args.steps,
            "examples_per_step": per_step,
            "device": device.type,
            "reference_loss": curves["reference"],
            "kftune_loss": curves["kftune"],
            "max_abs_diff": max(diffs),
            "mean_abs_diff": sum(diffs) / len(diffs),
        },
        args.out,
    )


# ------------------------------------------------------------------------------------------ kftune
# ------------------------------------------------------------------------------------------ kftune
# Tokens per micro-batch (max_tokens_per_micro_batch); --kftune-batch N fills by examples instead.
KFTUNE_TOKENS = {"1b": 32768, "8b": 16384, "tiny": 4096}


def kftune_batching(args, shape: str) -> dict:
    """The trainer's batching parameters for `shape`."""
    if args.kftune_batch:
        return {"per_device_train_batch_size": args.kftune_batch}
    return {"max_tokens_per_micro_batch": KFTUNE_TOKENS[shape]}


def kftune_config(args, shape, lora, output_dir: Path, task: str = "causal-lm") -> dict:
    return {
        "task": task,
        "model_dir": str(args.work / f"model-{shape}"),
        "data_dir": str(args.work / ("pairs" if task == "preference" else "data")),
        "output_dir": str(output_dir),
        "training_parameters": {
            "max_steps": args.warmup + args.steps,
            **kftune_batching(args, shape),
            "max_seq_length": synth.MAX_LEN,
            "learning_rate": args.lr,
            "lr_scheduler_type": "constant",
            "optim": "adamw_torch_fused",
            "bf16": True,
            "logging_steps": 1,
            "save_strategy": "no",
            "seed": 42,
            **json.loads(args.kftune_extra),
        },
        "lora_config": synth.LORA_CONFIGS[lora],
        "merge": False,
    }


def shape_flops(shape: str, lora: str, attended_len: float) -> dict:
    """N_mm, N_lora and the per-token FLOPs of DESIGN.md's formula, from a meta-device model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(synth.hf_config(shape))
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **synth.LORA_CONFIGS[lora]))
    n_lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return synth.flops_per_token(model, n_lora, attended_len)


class Job:
    """A run that needs `gpus` GPUs: one process, or one per "node" (2 nodes x N/2 with PET_*)."""

    def __init__(self, name, gpus, argvs_for, finish=None):
        self.name, self.gpus, self.argvs_for, self.finish = name, gpus, argvs_for, finish
        self.procs, self.devices, self.started, self.log = [], [], 0.0, None


def kftune_job(args, shape, lora, gpus, topology, task: str = "causal-lm") -> Job:
    compile_flag = os.environ.get("KFTUNE_COMPILE", "1")
    kind = "kftune-dpo" if task == "preference" else "kftune"
    name = f"{kind}-{shape}-{lora}-{gpus}g-{topology}" + ("-eager" if compile_flag == "0" else "")
    name += f"-{args.tag}" if args.tag else ""
    output_dir = args.scratch / name
    config_path = args.scratch / f"{name}.json"
    module = ["-m", "kftune.components.train_lora.pod.trainer", "--config", str(config_path)]

    def argvs_for(devices, port):
        subprocess.run(["rm", "-rf", str(output_dir)], check=False)
        config_path.write_text(json.dumps(kftune_config(args, shape, lora, output_dir, task),
                                          indent=2))
        run = [sys.executable, "-m", "torch.distributed.run"]
        if topology == "1node":
            return [
                (
                    run
                    + [
                        "--nnodes",
                        "1",
                        "--nproc-per-node",
                        str(gpus),
                        "--master-addr",
                        "127.0.0.1",
                        "--master-port",
                        str(port),
                        *module,
                    ],
                    {"CUDA_VISIBLE_DEVICES": ",".join(map(str, devices))},
                )
            ]
        per_node = gpus // 2
        # torchrun takes its arguments from the operator's PET_* variables (static rendezvous).
        return [
            (
                run + module,
                {
                    "CUDA_VISIBLE_DEVICES": ",".join(
                        map(str, devices[node * per_node : (node + 1) * per_node])
                    ),
                    "PET_NNODES": "2",
                    "PET_NPROC_PER_NODE": str(per_node),
                    "PET_NODE_RANK": str(node),
                    "PET_MASTER_ADDR": "127.0.0.1",
                    "PET_MASTER_PORT": str(port),
                    "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": str(port),
                },
            )
            for node in range(2)
        ]

    def finish(codes, wall):
        base = {
            "kind": kind,
            "shape": shape,
            "lora": lora,
            "gpus": gpus,
            "topology": topology,
            "wall_s": wall,
            "kftune_compile": compile_flag,
            "tag": args.tag,
            "training_extra": json.loads(args.kftune_extra),
        }
        metrics_path = output_dir / "final" / "metrics.json"
        if any(codes) or not metrics_path.is_file():
            emit({**base, "error": f"rc={codes}"}, args.out)
            return
        metrics = json.loads(metrics_path.read_text())
        lengths = synth.example_lengths(args.rows) + 1  # the trainer appends EOS
        stats = synth.token_stats(lengths)
        flops = shape_flops(shape, lora, stats["attended_len"])
        rows = metrics.get("step_times") or []
        result = {
            **base,
            **gpu_info(),
            "attended_len_T": stats["attended_len"],
            **flops,
            "loss": [loss for _, loss in metrics.get("train_loss", [])],
            "peak_mem_gib": metrics.get("peak_memory_gib"),
            "batching": kftune_batching(args, shape),
            "warmup": args.warmup,
        }
        if rows:
            result.update(steady([r[2] for r in rows], [r[1] for r in rows], args.warmup))
            timed = rows[args.warmup :]
            if timed and len(timed[0]) >= 5:  # rank 0's host stalls in the timed steps
                result["rank0_gc_s"] = round(sum(r[3] for r in timed), 3)
                result["rank0_compiles"] = sum(r[4] for r in timed)
        else:
            result["tokens_per_s"] = metrics.get("tokens_per_second", 0.0)
            result["note"] = "no step_times: whole-run tokens/s including warm-up"
        result["tokens_per_s_per_gpu"] = result["tokens_per_s"] / gpus
        if task != "preference":  # DESIGN.md's formula has no term for the reference pass
            result["mfu"] = synth.mfu(result["tokens_per_s_per_gpu"], flops["flops_per_token"])
        emit(result, args.out)

    return Job(name, gpus, argvs_for, finish)


def worker_job(args, kind: str, name: str, **fields) -> Job:
    argv = [
        sys.executable,
        str(Path(__file__)),
        kind,
        "--data",
        str(args.work / "data"),
        "--scratch",
        str(args.scratch),
        "--warmup",
        str(args.warmup),
        "--steps",
        str(args.steps),
        "--lr",
        str(args.lr),
        "--token-budget",
        str(args.token_budget),
        "--ce-chunk",
        str(args.ce_chunk),
    ]
    if args.out:
        argv += ["--out", str(args.out)]
    for key, value in fields.items():
        if value is True:
            argv.append(f"--{key}")
        elif value not in (None, False):
            argv += [f"--{key}", str(value)]

    def finish(codes, wall):
        if any(codes):
            emit(
                {"kind": kind.lstrip("_"), **fields, "error": f"rc={codes}", "wall_s": wall},
                args.out,
            )

    return Job(
        name, 1, lambda devices, port: [(argv, {"CUDA_VISIBLE_DEVICES": str(devices[0])})], finish
    )


def write_model_job(args, shape: str) -> Job:
    code = (
        f"import sys, pathlib; sys.path.insert(0, {str(HERE)!r}); import synth; "
        f"synth.write_model(pathlib.Path({str(args.work / f'model-{shape}')!r}), {shape!r})"
    )
    return Job(
        f"write-model-{shape}",
        1,
        lambda devices, port: [
            ([sys.executable, "-c", code], {"CUDA_VISIBLE_DEVICES": str(devices[0])})
        ],
    )


def run_jobs(args, jobs: list[Job], total_gpus: int) -> None:
    """Runs jobs in order, several at once when their GPU sets fit side by side."""
    import socket

    free = list(range(total_gpus))
    pending, running = list(jobs), []
    base_env = {**os.environ, **NCCL_SAFE_ENV, "PYTHONUNBUFFERED": "1"}
    while pending or running:
        while pending and pending[0].gpus <= len(free):
            job = pending.pop(0)
            job.devices, free = free[: job.gpus], free[job.gpus :]
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            log_path = args.out / f"{job.name}.log" if args.out else Path(os.devnull)
            job.log = open(log_path, "w")
            job.started = time.perf_counter()
            log(f"start {job.name} on GPUs {job.devices}")
            job.procs = [
                subprocess.Popen(
                    argv, env={**base_env, **env}, stdout=job.log, stderr=subprocess.STDOUT
                )
                for argv, env in job.argvs_for(job.devices, port)
            ]
            running.append(job)
        time.sleep(0.5)
        for job in list(running):
            if time.perf_counter() - job.started > args.run_timeout:
                for proc in job.procs:
                    proc.kill()
            if all(proc.poll() is not None for proc in job.procs):
                running.remove(job)
                free = sorted(free + job.devices)
                job.log.close()
                wall = time.perf_counter() - job.started
                codes = [proc.returncode for proc in job.procs]
                log(f"done {job.name} rc={codes} in {wall:.0f}s")
                if any(codes) and args.out:
                    print((args.out / f"{job.name}.log").read_text()[-2500:], flush=True)
                if job.finish:
                    job.finish(codes, wall)


# ------------------------------------------------------------------------------------------ driver
PEER_OF = {"kftune-dpo": "trl-dpo", "kftune": "trl-sft"}


def loss_columns(rows: list[dict], count: int = 20) -> None:
    """The first `count` losses of each DPO and SFT row, side by side."""
    named = [(f"{r['kind']} {r.get('shape')}", r["loss"]) for r in rows
             if r.get("kind") in ("kftune-dpo", "trl-dpo", "kftune", "trl-sft") and r.get("loss")]
    if not named:
        return
    header = " | ".join(name for name, _ in named)
    print(f"\n| step | {header} |\n|" + "---|" * (len(named) + 1))
    for step in range(count):
        cells = [f"{losses[step]:.4f}" if step < len(losses) else "" for _, losses in named]
        print(f"| {step + 1} | " + " | ".join(cells) + " |")


def table(out: Path | None) -> None:
    if not out or not (out / "results.jsonl").is_file():
        return
    rows = [
        json.loads(line)
        for line in (out / "results.jsonl").read_text().splitlines()
        if line.strip()
    ]
    ref = {
        (r["shape"], r["lora"], r.get("tag") or ""): r
        for r in rows
        if r.get("kind") == "reference" and "tokens_per_s" in r
    }
    peers = {
        (kind, r["shape"], r["lora"]): r
        for kind, peer in PEER_OF.items()
        for r in rows
        if r.get("kind") == peer and "tokens_per_s" in r
    }
    single = {
        (r["shape"], r["lora"]): r
        for r in rows
        if r.get("kind") == "kftune" and r.get("gpus") == 1 and "tokens_per_s_per_gpu" in r
        and not r.get("tag")
    }
    header = (
        "run",
        "shape",
        "lora",
        "gpus",
        "topo",
        "tok/s/GPU",
        "MFU",
        "step s",
        "p50 / max s",
        "tokens/step/GPU",
        "peak GiB",
        "x ref",
        "scaling",
    )
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for r in rows:
        if r.get("kind") not in ("reference", "fastpath", "kftune", "kftune-dpo", "trl-dpo",
                                 "trl-sft"):
            continue
        tps = r.get("tokens_per_s_per_gpu")
        key = (r.get("shape"), r.get("lora"))
        base = ref.get((*key, r.get("tag") or "")) or ref.get((*key, ""))
        ratio = (
            f"{tps / base['tokens_per_s']:.2f}" if tps and base and r["kind"] != "reference" else ""
        )
        peer = peers.get((r["kind"], r.get("shape"), r.get("lora")))
        if tps and peer:  # kftune-dpo vs trl-dpo, kftune vs trl-sft
            ratio += f" ({tps / peer['tokens_per_s']:.2f} x {PEER_OF[r['kind']]})"
        one = single.get((r.get("shape"), r.get("lora")))
        scaling = (
            f"{tps / one['tokens_per_s_per_gpu']:.3f}"
            if tps and one and r.get("gpus", 1) > 1
            else ""
        )
        name = r["kind"] + ("+compile" if r.get("compile") is True else "")
        name += "-eager" if r.get("kftune_compile") == "0" else ""
        name += f" [{r['tag']}]" if r.get("tag") else ""
        cells = (
            name,
            r.get("shape"),
            r.get("lora"),
            r.get("gpus", 1),
            r.get("topology", "1node"),
            f"{tps:,.0f}" if tps else r.get("error", "-"),
            f"{r['mfu']:.1%}" if "mfu" in r else "",
            f"{r['step_time_s']:.3f}" if "step_time_s" in r else "",
            f"{r['step_time_p50_s']:.3f} / {r['step_time_max_s']:.3f}"
            if r.get("step_time_p50_s") else "",
            f"{r['useful_tokens_per_step'] / r.get('gpus', 1):,.0f}"
            if "useful_tokens_per_step" in r else "",
            f"{r['peak_mem_gib']:.1f}" if r.get("peak_mem_gib") else "",
            ratio,
            scaling,
        )
        print("| " + " | ".join(str(c) for c in cells) + " |")
    loss_columns(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "command",
        nargs="?",
        default="run",
        choices=["run", "_env", "_reference", "_fastpath", "_losscmp", "_trl_dpo", "_trl_sft",
                 "table"],
    )
    parser.add_argument(
        "--runs",
        default="env,reference,kftune",
        help="comma list of: env, reference, fastpath, fastpath-eager, losscmp, kftune, "
        "kftune-dpo, trl-dpo, trl-sft",
    )
    parser.add_argument("--shapes", default="1b,8b")
    parser.add_argument("--lora", default="r8qv,r16all")
    parser.add_argument("--gpus", default="1", help="kftune GPU counts, e.g. 1,2,4")
    parser.add_argument("--topologies", default="1node", help="for >1 GPU: 1node and/or 2nodes")
    parser.add_argument(
        "--scaling-configs",
        default="",
        help="shape:lora pairs to run on >1 GPU, e.g. 8b:r16all (default: all)",
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--token-budget", type=int, default=16384, help="fastpath prototype only")
    parser.add_argument("--ce-chunk", type=int, default=4096, help="fastpath prototype only")
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument(
        "--kftune-batch",
        type=int,
        default=0,
        help="examples per micro-batch (default: fill by tokens, 32768 for 1b, 16384 for 8b)",
    )
    parser.add_argument("--kftune-extra", default="{}", help="JSON merged into training_parameters")
    parser.add_argument("--tag", default="", help="suffix for kftune job names and results")
    parser.add_argument(
        "--work", type=Path, default=Path(os.environ.get("KFTUNE_BENCH_WORK", "/tmp/kftune-bench"))
    )
    parser.add_argument("--scratch", type=Path, default=None)
    parser.add_argument(
        "--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    )
    parser.add_argument("--run-timeout", type=int, default=900)
    parser.add_argument(
        "--parallel", action="store_true", help="run 1-GPU jobs side by side, one per free GPU"
    )
    parser.add_argument("--total-gpus", type=int, default=0)
    parser.add_argument("--losscmp-shape", default="1b")
    parser.add_argument("--losscmp-steps", type=int, default=20)
    parser.add_argument("--losscmp-lr", type=float, default=1e-3)
    # worker-only
    parser.add_argument("--data", type=Path)
    parser.add_argument("--shape")
    parser.add_argument("--micro-batch", type=int, default=0)
    parser.add_argument("--model-dir")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--quant", action="store_true", help="reference: 4-bit QLoRA")
    args = parser.parse_args(argv)
    args.scratch = args.scratch or args.work / "scratch"
    args.scratch.mkdir(parents=True, exist_ok=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    if args.command == "table":
        return table(args.out)
    if args.command != "run":
        args.lora = args.lora.split(",")[0]
        return {
            "_env": cmd_env,
            "_reference": cmd_reference,
            "_fastpath": cmd_fastpath,
            "_losscmp": cmd_losscmp,
            "_trl_dpo": cmd_trl_dpo,
            "_trl_sft": cmd_trl_sft,
        }[args.command](args)

    import torch

    runs = args.runs.split(",")
    shapes, loras = args.shapes.split(","), args.lora.split(",")
    gpu_counts = [int(g) for g in args.gpus.split(",")]
    total_gpus = args.total_gpus or torch.cuda.device_count()
    log("dataset:", synth.write_dataset(args.work / "data", args.rows), "GPUs:", total_gpus)
    if "env" in runs:
        run_jobs(args, [worker_job(args, "_env", "env")], total_gpus)
    if "kftune-dpo" in runs or "trl-dpo" in runs:
        log("pairs:", synth.write_pairs(args.work / "pairs", synth.read_texts(args.work / "data")))
    if {"kftune", "reference-qlora", "kftune-dpo", "trl-dpo", "trl-sft"} & set(runs):
        run_jobs(args, [write_model_job(args, shape) for shape in shapes], total_gpus)
    single: list[Job] = []
    pairs = [(shape, lora) for shape in reversed(shapes) for lora in reversed(loras)]
    if "kftune" in runs and 1 in gpu_counts:  # longest first, so that side-by-side runs pack well
        single += [kftune_job(args, shape, lora, 1, "1node") for shape, lora in pairs]
    if "kftune-dpo" in runs and 1 in gpu_counts:
        single += [kftune_job(args, shape, lora, 1, "1node", "preference")
                   for shape, lora in pairs]
    for shape, lora in pairs:
        for peer in ("trl-dpo", "trl-sft"):
            if peer in runs:
                single.append(worker_job(
                    args, "_" + peer.replace("-", "_"), f"{peer}-{shape}-{lora}", shape=shape,
                    lora=lora, **{"model-dir": str(args.work / f"model-{shape}")}))
        if "reference" in runs:
            single.append(
                worker_job(args, "_reference", f"reference-{shape}-{lora}", shape=shape, lora=lora)
            )
        if "reference-qlora" in runs:
            single.append(
                worker_job(args, "_reference", f"reference-qlora-{shape}-{lora}", shape=shape,
                           lora=lora, quant=True, **{"model-dir": args.work / f"model-{shape}"})
            )
        if "fastpath-eager" in runs:
            single.append(
                worker_job(
                    args, "_fastpath", f"fastpath-eager-{shape}-{lora}", shape=shape, lora=lora
                )
            )
        if "fastpath" in runs:
            single.append(
                worker_job(
                    args,
                    "_fastpath",
                    f"fastpath-{shape}-{lora}",
                    shape=shape,
                    lora=lora,
                    compile=True,
                )
            )
    if "losscmp" in runs:
        single.append(
            worker_job(
                args,
                "_losscmp",
                f"losscmp-{args.losscmp_shape}-{loras[0]}",
                shape=args.losscmp_shape,
                lora=loras[0],
                steps=args.losscmp_steps,
                lr=args.losscmp_lr,
            )
        )
    run_jobs(args, single, total_gpus if args.parallel else 1)
    multi: list[Job] = []
    if "kftune" in runs:
        for gpus in [g for g in gpu_counts if g > 1]:
            for shape in shapes:
                for lora in loras:
                    if args.scaling_configs and f"{shape}:{lora}" not in args.scaling_configs:
                        continue
                    for topology in args.topologies.split(","):
                        multi.append(kftune_job(args, shape, lora, gpus, topology))
    run_jobs(args, multi, total_gpus)
    table(args.out)


if __name__ == "__main__":
    main()
