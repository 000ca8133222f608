"""The LoRA trainer: the program torchrun starts in every training pod.

    torchrun [--nnodes N --nproc-per-node M ... | with the operator's PET_* env] \
        -m kftune.components.train_lora.pod.trainer --config CONFIG.json

`CONFIG.json` is described in config.py. The recipe, top to bottom: join the process group (gloo
and fp32 on CPU, NCCL and bf16 weights on GPU), load the base model (no remote code, SDPA
attention; 4-bit with `quantization`), wrap it with LoRA, wrap it with DDP or shard it with FSDP2
(`fsdp`: sharding.py, loading.py), tokenize the data, then loop: each optimizer step
takes the next global batch of the job-wide example order (data.py), accumulates gradients over
micro-batches, clips, steps the optimizer and the schedule, logs on global rank 0, and checkpoints
every `save_steps` (checkpoint.py). A restarted job resumes from the newest complete checkpoint.
At the end global rank 0 writes `<output_dir>/final/`: the PEFT adapter, the tokenizer,
metrics.json, manifest.json and, with `merge`, `merged/` (the full merged model).

Debug hooks, read from the environment (tests use them; they change nothing when unset):
- `KFTUNE_DEBUG_SEEN_DIR`: every rank appends "epoch step example-index" lines for the examples
  it trains on to `<dir>/seen-rank<R>.txt`.
- `KFTUNE_DEBUG_KILL_AT_STEP` (+ `KFTUNE_DEBUG_KILL_RANK`, default 1): that global rank SIGKILLs
  itself after that optimizer step, only in the first attempt (`TORCHELASTIC_RESTART_COUNT` and
  the local backend's `KFTUNE_LOCAL_RESTART_COUNT` 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import logging
import math
import os
import signal
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import get_error_handler, record

from ...common import tokenization
from ...common.artifacts import atomic_directory, read_manifest, write_manifest
from ...common.errors import InputError, Problems, writing
from ...common.report import write_history
from ...common.tasks import model_task
from ...common.tracking import TRACKING_FILE
from .. import fit
from ..config import TrainConfig, TrainingSettings, build_lora_config, lora_config_problem
from . import checkpoint, data, kernels, loading, preference, sharding
from . import progress as progress_lib

LOG = logging.getLogger("kftune.trainer")


@dataclasses.dataclass(frozen=True)
class Runtime:
    """This process's place in the job."""

    rank: int
    """Global rank."""
    local_rank: int
    """Rank on this node."""
    world_size: int
    """Processes in the job."""
    device: torch.device
    """Where the model runs."""
    dtype: torch.dtype
    """The dtype of the frozen base weights."""

    @property
    def is_main(self) -> bool:
        """Global rank 0: the one that logs and writes outputs."""
        return self.rank == 0


# -- setup -----------------------------------------------------------------------------------------


def init_distributed(settings: TrainingSettings) -> Runtime:
    """Joins the job's process group from torchrun's environment (or alone, without torchrun)."""
    use_cuda = torch.cuda.is_available() and not settings.use_cpu
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    timeout = datetime.timedelta(seconds=settings.ddp_timeout)
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    backend = "nccl" if use_cuda else "gloo"
    if "RANK" in os.environ:
        store, rank, world_size = next(dist.rendezvous("env://", timeout=timeout))
        # torchrun keeps one store for all restarts of the workers: without a per-attempt prefix
        # a restarted rank can read a dead rank's address from the previous attempt (gloo:
        # "connection refused", or a hang). The ranks of one node, and of a static rendezvous
        # (run id "none"), restart together and agree on the count; elastic (c10d) agents of
        # several nodes may not, so they go without the prefix.
        single_node = os.environ.get("GROUP_WORLD_SIZE", "1") == "1"
        if single_node or os.environ.get("TORCHELASTIC_RUN_ID", "none") == "none":
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            store = dist.PrefixStore(f"kftune/attempt-{attempt}", store)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                                timeout=timeout, device_id=device if use_cuda else None)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1,
                                timeout=timeout)
    dtype = torch.bfloat16 if use_cuda and settings.bf16 else torch.float32
    return Runtime(dist.get_rank(), local_rank, dist.get_world_size(), device, dtype)


class _StdoutHandler(logging.StreamHandler):
    """Writes to the current `sys.stdout` (a pod log; pytest's capture when run in-process)."""

    @property
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup_logging(runtime: Runtime) -> None:
    """Progress lines on stdout from global rank 0; only warnings and errors from the others."""
    handler = _StdoutHandler()
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s [rank {runtime.rank}] %(levelname)s %(message)s"))
    LOG.handlers[:] = [handler]
    LOG.setLevel(logging.INFO if runtime.is_main else logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    for noisy in ("transformers", "peft", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def load_model(cfg: TrainConfig, manifest: dict[str, Any], label_names: list[str] | None,
               runtime: Runtime, sharded: bool = False) -> torch.nn.Module:
    """Loads the base model for the task from the Model artifact, frozen, on the device.

    A model to be sharded stays on the CPU: sharding moves each process's shards to its GPU.
    With `quantization` the base is loaded in 4-bit by bitsandbytes (QLoRA).
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    problems = Problems()
    if manifest.get("trust_remote_code"):
        problems.add(
            f"`model` {manifest.get('source', {}).get('uri')!r} needs trust_remote_code, which "
            "kftune never enables; use a model whose architecture transformers ships"
        )
    problems.raise_if_any()
    common = {
        "dtype": runtime.dtype,
        "attn_implementation": kernels.attention_implementation(runtime.device, cfg.task),
        "trust_remote_code": False,
    }
    if runtime.device.type == "cuda" and not sharded:
        common["device_map"] = {"": runtime.device}
    quantization = cfg.settings.quantization
    if quantization or _prequantized(cfg.model_dir):
        common.update(_quantization_options(quantization, runtime))
    try:
        if cfg.task == "sequence-classification":
            model = AutoModelForSequenceClassification.from_pretrained(
                cfg.model_dir, num_labels=len(label_names or []),
                id2label=dict(enumerate(label_names or [])),
                label2id={name: index for index, name in enumerate(label_names or [])},
                **common,
            )
        else:
            model = AutoModelForCausalLM.from_pretrained(cfg.model_dir, **common)
    except (ValueError, OSError, KeyError) as error:
        problems.add(
            f"`model` ({manifest.get('architecture')}, model_type {manifest.get('model_type')!r}) "
            f"cannot be loaded for task {cfg.task!r}: {error}; pick a model for this task"
        )
        problems.raise_if_any()
    model.requires_grad_(False)
    if sharded or getattr(model, "hf_quantizer", None) is not None:
        return model  # sharding places the shards; bitsandbytes placed the 4-bit weights
    return model.to(runtime.device)


def _prequantized(model_dir: str) -> bool:
    """Whether the model directory holds bitsandbytes 4-bit weights (a `*-bnb-4bit` model)."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    quantization = config.get("quantization_config") or {}
    return bool(quantization.get("load_in_4bit")) or quantization.get("bnb_4bit_quant_type") in (
        "nf4", "fp4")


def _quantization_options(quantization: dict[str, Any] | None,
                          runtime: Runtime) -> dict[str, Any]:
    """`from_pretrained` options for a 4-bit base: a BitsAndBytesConfig, or none if pre-quantized.

    Raises:
        InputError: without a CUDA device, or without bitsandbytes.
    """
    problems = Problems()
    if runtime.device.type != "cuda":
        problems.add(
            "`training_parameters.quantization` (4-bit QLoRA) needs a CUDA GPU; this process "
            f"runs on {runtime.device.type}; give the workers GPUs or remove quantization")
    try:
        import bitsandbytes  # noqa: F401  # pyright: ignore[reportMissingImports] (CUDA only)
    except ImportError:
        problems.add(
            "`training_parameters.quantization` needs the bitsandbytes package in the trainer "
            "image; install kftune[qlora] there or remove quantization")
    problems.raise_if_any()
    if not quantization:
        return {}  # a pre-quantized (*-bnb-4bit) model: its config carries the quantization
    from transformers import BitsAndBytesConfig

    fields = {key: value for key, value in quantization.items() if key != "quant_method"}
    return {"quantization_config": BitsAndBytesConfig(**fields)}


def _linear_module_names(model: torch.nn.Module) -> list[str]:
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear)})


def wrap_with_lora(model: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    """Wraps the base model with the LoRA adapters of `cfg.lora_config`.

    Without `target_modules`, PEFT's default for the architecture is used, or all linear layers
    except the output head when PEFT has none.
    """
    from peft import LoraConfig, get_peft_model
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    fields = {key: value for key, value in cfg.lora_config.items() if key != "task_type"}
    problems = Problems()
    available = _linear_module_names(model)
    target_modules = fields.get("target_modules")
    if target_modules is None:
        if model.config.model_type not in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
            fields["target_modules"] = "all-linear"
    elif isinstance(target_modules, list):
        module_names = [name for name, _ in model.named_modules()]
        unmatched = [target for target in target_modules
                     if not any(name == target or name.endswith(f".{target}")
                                for name in module_names)]
        if unmatched:
            problems.add(
                f"`lora_config.target_modules` {unmatched} match no layer of the model; its "
                f"linear layers are {available}; pick from those or leave target_modules unset"
            )
    problems.raise_if_any()
    try:
        lora = build_lora_config(LoraConfig, fields, cfg.task)
    except (ValueError, TypeError) as error:
        problems.add(lora_config_problem(cfg.lora_config, error))
        problems.raise_if_any()
    try:
        return get_peft_model(model, lora)
    except ValueError as error:
        problems.add(
            f"`lora_config` = {cfg.lora_config!r} does not fit the model: {error}; its linear "
            f"layers are {available}"
        )
        problems.raise_if_any()
    raise AssertionError("unreachable")


def build_optimizer(model: torch.nn.Module, settings: TrainingSettings, runtime: Runtime,
                    total_steps: int) -> tuple[torch.optim.Optimizer, Any]:
    """The optimizer over the trainable parameters and its learning-rate schedule."""
    from transformers import get_scheduler

    trainable = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    decay = [param for _, param in trainable if param.ndim >= 2]
    no_decay = [param for _, param in trainable if param.ndim < 2]
    groups = [{"params": decay, "weight_decay": settings.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if settings.optim == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(groups, lr=settings.learning_rate)
    else:
        optimizer = torch.optim.AdamW(
            groups, lr=settings.learning_rate, betas=(settings.adam_beta1, settings.adam_beta2),
            eps=settings.adam_epsilon,
            fused=settings.optim == "adamw_torch_fused" and runtime.device.type == "cuda",
        )
    if isinstance(settings.warmup_steps, float) and 0 < settings.warmup_steps < 1:
        warmup = math.ceil(settings.warmup_steps * total_steps)
    elif settings.warmup_ratio:
        warmup = math.ceil(settings.warmup_ratio * total_steps)
    else:
        warmup = int(settings.warmup_steps)
    scheduler = get_scheduler(
        settings.lr_scheduler_type, optimizer, num_warmup_steps=warmup,
        num_training_steps=total_steps,
        scheduler_specific_kwargs=settings.lr_scheduler_kwargs or {},
    )
    return optimizer, scheduler


def _every(value: float, total_steps: int) -> int:
    """A step interval given as a count or a fraction of the total steps."""
    if isinstance(value, float) and value < 1:
        return max(1, math.ceil(value * total_steps))
    return max(1, int(value))


def _format_seconds(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))


def _stall_note(stalls: HostStalls, since: tuple[float, int],
                runtime: Runtime) -> tuple[str, tuple[float, int]]:
    """The progress line's note on host stalls since `since`, and the snapshot it ends at.

    The figures are the worst rank's (a collective: every rank calls this on logged steps).
    """
    now = stalls.snapshot()
    worst = torch.tensor([now[0] - since[0], float(now[1] - since[1])], device=runtime.device)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    gc_worst, compiled = worst.tolist()
    notes = []
    if gc_worst >= 0.05:
        notes.append(f"gc {gc_worst:.2f}s")
    if compiled:
        notes.append(f"torch.compile x{int(compiled)}")
    return (f" | host: {', '.join(notes)}" if notes else ""), now


class HostStalls:
    """Host-side work that can stall a step: Python garbage collection and torch.compile runs.

    A step waits for its slowest rank, so a pause on any one rank slows the whole job; the
    progress line reports the worst rank's figures for the steps since the last line.
    """

    def __init__(self) -> None:
        self.gc_seconds = 0.0
        self._gc_started: float | None = None
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, _info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started is not None:
            self.gc_seconds += time.perf_counter() - self._gc_started
            self._gc_started = None

    @staticmethod
    def compilations() -> int:
        """Frames torch.compile has compiled in this process so far (recompilations included)."""
        try:
            from torch._dynamo.utils import counters
        except ImportError:  # pragma: no cover - a torch without dynamo
            return 0
        return int(counters["frames"]["total"])

    def snapshot(self) -> tuple[float, int]:
        """(seconds spent in garbage collection, compilations) so far."""
        return self.gc_seconds, self.compilations()

    @staticmethod
    def freeze_heap() -> int:
        """Collects once, then moves every surviving object out of the collector's sight.

        Called after the first step and after any step that ran torch.compile: model loading and
        compilation leave millions of long-lived objects, and each automatic full collection
        walked all of them (0.6 s, measured on the 8B benchmark) on whichever rank it struck,
        while every other rank waited. Frozen objects are still freed by reference counting;
        only cycles among them are never collected. `KFTUNE_GC_FREEZE=0` turns this off.
        Returns the number of frozen objects.
        """
        if not kernels.switched_on("KFTUNE_GC_FREEZE"):
            return gc.get_freeze_count()
        gc.collect()
        gc.freeze()
        return gc.get_freeze_count()

    def close(self) -> None:
        """Stops timing garbage collection."""
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)


# -- checkpoints -----------------------------------------------------------------------------------


def _identity(model_manifest: dict[str, Any], model: torch.nn.Module) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the base model and the LoRA shape."""
    source = model_manifest.get("source") or {}
    trainable = {name: list(param.shape) for name, param in model.named_parameters()
                 if param.requires_grad}
    return {
        "base_model": {"uri": source.get("uri"),
                       "resolved_revision": source.get("resolved_revision"),
                       "architecture": model_manifest.get("architecture")},
        "lora": trainable,
    }


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def save_checkpoint(cfg: TrainConfig, runtime: Runtime, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: Any, step: int,
                    position: data.DataPosition, identity: dict[str, Any],
                    settings: TrainingSettings, history: list[dict[str, Any]]) -> None:
    """Checkpoint `step` (collective: every rank calls it; global rank 0 writes).

    The adapter and, for a sharded model, the optimizer state are whole tensors keyed by
    parameter name, so a checkpoint resumes at any world size.
    """
    rng_states: list[Any] = [None] * runtime.world_size
    dist.all_gather_object(rng_states, _rng_state())
    sharded = sharding.is_sharded(model)
    adapter = sharding.trainable_state(model)
    optimizer_state = (sharding.optimizer_state(model, optimizer) if sharded
                       else optimizer.state_dict())
    if runtime.is_main:
        state = {
            "step": step,
            "adapter": adapter,
            "optimizer": optimizer_state,
            "optimizer_by_name": sharded,
            "scheduler": scheduler.state_dict(),
            "position": dataclasses.asdict(position),
            "rng": rng_states,
            "history": history,
        }
        meta = {**identity, "position": dataclasses.asdict(position),
                "world_size": runtime.world_size}
        path = checkpoint.save_checkpoint(cfg.output_dir, step, state, meta,
                                          settings.save_total_limit)
        LOG.info("checkpoint saved: %s", path)
    dist.barrier()


def restore_checkpoint(cfg: TrainConfig, runtime: Runtime, model: torch.nn.Module,
                       optimizer: torch.optim.Optimizer, scheduler: Any,
                       identity: dict[str, Any]) -> dict[str, Any] | None:
    """Loads the newest complete checkpoint into the model, optimizer and schedule (collective)."""
    payload: list[Any] = [None]
    if runtime.is_main:
        try:
            payload[0] = checkpoint.load_latest(cfg.output_dir, identity)
        except ValueError as error:
            payload[0] = {"error": error}
    dist.broadcast_object_list(payload, src=0)
    state = payload[0]
    if state is None:
        return None
    if "error" in state:
        raise state["error"]
    sharding.load_trainable(model, state["adapter"])
    if state.get("optimizer_by_name"):
        sharding.load_optimizer(model, optimizer, state["optimizer"])
    elif sharding.is_sharded(model):
        raise InputError([
            f"the checkpoint at step {state['step']} in {cfg.output_dir} was written without "
            "sharding and cannot resume a sharded run; resume it with the same "
            "`training_parameters.fsdp` or start a new output location"])
    else:
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng = state["rng"][runtime.rank] if runtime.rank < len(state["rng"]) else None
    if rng is not None:
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    LOG.info("resumed from checkpoint step %d (epoch %d, %d examples into it)", state["step"],
             state["position"]["epoch"], state["position"]["consumed"])
    return state


# -- the outputs -----------------------------------------------------------------------------------


def save_final(cfg: TrainConfig, model: Any, tokenizer: Any, model_manifest: dict[str, Any],
               data_manifest: dict[str, Any], metrics: dict[str, Any],
               training: dict[str, Any], adapter: dict[str, torch.Tensor] | None = None,
               history: Sequence[dict[str, Any]] = ()) -> Path:
    """Writes `<output_dir>/final/`: the adapter artifact (global rank 0 only).

    `adapter`: the whole trainable tensors of a sharded model (`sharding.trainable_state`).
    `history`: the logged steps' records, kept as `history.jsonl` (report.HISTORY_FILE).
    """
    peft_config = model.peft_config["default"]
    lora = {
        "r": peft_config.r, "lora_alpha": peft_config.lora_alpha,
        "lora_dropout": peft_config.lora_dropout, "bias": peft_config.bias,
        "target_modules": sorted(peft_config.target_modules)
        if isinstance(peft_config.target_modules, set) else peft_config.target_modules,
        "modules_to_save": sorted(peft_config.modules_to_save or []),
        "use_rslora": peft_config.use_rslora, "use_dora": peft_config.use_dora,
        "task_type": str(peft_config.task_type),
    }
    classifier = model_task(cfg.task) == "sequence-classification"
    with atomic_directory(Path(cfg.output_dir) / "final") as staging, writing(
            staging, what="the adapter", fix=checkpoint.DISK_FULL_FIX):
        model.save_pretrained(staging, **({"state_dict": adapter} if adapter else {}))
        tokenizer.save_pretrained(staging)
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        write_history(staging, history)
        write_manifest(staging, {
            "kind": "adapter",
            "task": cfg.task,
            "base_model": {"source": model_manifest.get("source"),
                           "architecture": model_manifest.get("architecture"),
                           "model_type": model_manifest.get("model_type")},
            "lora": lora,
            "training": training,
            "train_data": {"source": data_manifest.get("source"),
                           "fingerprint": data_manifest.get("fingerprint"),
                           "row_ranges": data_manifest.get("row_ranges")},
            "num_labels": data_manifest.get("num_labels") if classifier else None,
            "label_names": data_manifest.get("label_names") if classifier else None,
        })
        if cfg.merge:
            merged = model.merge_and_unload()
            merged.save_pretrained(staging / "merged")
            tokenizer.save_pretrained(staging / "merged")
    return Path(cfg.output_dir) / "final"


# -- the recipe ------------------------------------------------------------------------------------


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Trains the LoRA adapter described by `cfg`; returns the metrics (on every rank).

    Raises:
        InputError: for data, model, LoRA or batch settings that do not fit together.
    """
    from transformers import AutoTokenizer

    settings = cfg.settings
    runtime = init_distributed(settings)
    setup_logging(runtime)
    try:
        return _train(cfg, settings, runtime, AutoTokenizer)
    finally:
        dist.destroy_process_group()


@dataclasses.dataclass
class Job:
    """What the loop trains and on what: built once, by `setup`."""

    cfg: TrainConfig
    settings: TrainingSettings
    runtime: Runtime
    model: Any
    """The PEFT model (what is saved and checkpointed)."""
    wrapped: torch.nn.Module
    """What the loop calls: the model under DistributedDataParallel, or the sharded model."""
    root: torch.nn.Module | None
    """The FSDP2 root module when the base is sharded, else None (DDP)."""
    tokenizer: Any
    pad_id: int
    examples: list[data.Example]
    order: data.GlobalOrder
    budget: data.TokenBudget | None
    """The token budget of a micro-batch, when micro-batches are filled by tokens."""
    global_batch: int
    accumulation: int
    total_steps: int
    optimizer: torch.optim.Optimizer
    scheduler: Any
    identity: dict[str, Any]
    model_manifest: dict[str, Any]
    data_manifest: dict[str, Any]
    trainable: int
    deal_lengths: list[int] | None
    """Example lengths to deal micro-batches by tokens (packed causal-lm), else None."""
    preference: preference.PreferenceLoss | None = None
    """The DPO-family loss of task preference, else None."""

    def steps(self, position: data.DataPosition) -> Iterator[tuple[list[int], data.DataPosition]]:
        """The job-wide examples of each optimizer step from `position` on."""
        if self.budget is not None:
            return self.order.token_steps(position, self.budget)
        return self.order.steps(position, self.global_batch)


@dataclasses.dataclass
class Resumed:
    """Where the loop starts: step 0, or the newest complete checkpoint."""

    step: int = 0
    position: data.DataPosition = dataclasses.field(default_factory=data.DataPosition)
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """The logged steps' records (`Progress._log`)."""


def _history_records(history: list[Any]) -> list[dict[str, Any]]:
    """A checkpoint's history as records (checkpoints of earlier versions held [step, loss])."""
    return [entry if isinstance(entry, dict) else {"step": entry[0], "loss": entry[1]}
            for entry in history]


def choose_sharding(cfg: TrainConfig, runtime: Runtime, model_manifest: dict[str, Any]) -> bool:
    """Whether to shard the base (FSDP2) or keep a copy per process (DDP); logs which and why."""
    settings = cfg.settings
    layout = settings.parallelism
    if layout.mode != "auto":
        LOG.info("parallelism: %s (training_parameters.fsdp = %r)",
                 "FSDP2 sharding" if layout.mode == "shard" else "DDP", settings.fsdp)
        return layout.mode == "shard"
    if runtime.device.type != "cuda":
        LOG.info("parallelism: DDP (fsdp auto: on CPU every process holds the model in host "
                 "memory either way)")
        return False
    available = torch.cuda.get_device_properties(runtime.device).total_memory
    config = json.loads((Path(cfg.model_dir) / "config.json").read_text())
    need = fit.estimate_for(model_manifest, config, dataclasses.asdict(settings),
                            cfg.lora_config, shards=1).total
    sharded = need > available * fit.USABLE_FRACTION
    LOG.info("parallelism: %s (fsdp auto: one whole copy needs about %.1f GiB per GPU, the GPU "
             "has %.1f GiB)", "FSDP2 sharding" if sharded else "DDP", need / 2**30,
             available / 2**30)
    return sharded


def _load_inputs(cfg: TrainConfig, settings: TrainingSettings, runtime: Runtime) -> tuple[
    list[dict[str, Any]], dict[str, Any], dict[str, Any], list[str] | None
]:
    """The Dataset artifact's rows, both manifests and the label names, checked (setup, 1/4)."""
    model_manifest = read_manifest(cfg.model_dir, parameter="model_dir")
    rows, data_manifest = data.load_rows(cfg.data_dir)
    label_names = data_manifest.get("label_names")
    num_labels = data_manifest.get("num_labels")
    if cfg.task == "sequence-classification" and num_labels and not label_names:
        label_names = [str(index) for index in range(num_labels)]
    problems = Problems()
    problems.extend(tokenization.check_columns(cfg.task, list(rows[0]) if rows else [], num_labels))
    slots = runtime.world_size * settings.per_device_train_batch_size
    if rows and slots > len(rows) and settings.max_tokens_per_micro_batch is None:
        problems.add(
            f"`training_parameters.per_device_train_batch_size` x world size = "
            f"{settings.per_device_train_batch_size} x {runtime.world_size} = {slots} must be <= "
            f"the {len(rows)} training rows, or some processes never get an example; lower it or "
            "use fewer workers"
        )
    problems.raise_if_any()
    return rows, model_manifest, data_manifest, label_names


def _build_model(cfg: TrainConfig, settings: TrainingSettings, runtime: Runtime,
                 model_manifest: dict[str, Any], label_names: list[str] | None,
                 pad_id: int, sharded: bool) -> Any:
    """The base model, loaded and wrapped with LoRA, ready for the fast path (setup, 2/4).

    A sharded model is loaded by the processes of a node one at a time: each reads the whole
    checkpoint into host memory, moves its shards to its GPU and frees the rest before the next
    one starts, so a node holds about one copy at a time instead of one per process.
    """
    if not sharded:
        return _load_and_wrap(cfg, settings, runtime, model_manifest, label_names, pad_id, False)
    layout = settings.parallelism
    mesh = sharding.device_mesh(runtime.world_size, runtime.device, layout.hybrid)
    torch.manual_seed(settings.seed)
    model = _load_from_meta(cfg, settings, runtime, pad_id, mesh)
    if model is not None:
        return model
    for turn in range(int(os.environ.get("LOCAL_WORLD_SIZE", "1"))):
        if runtime.local_rank == turn:
            model = _sharded(_load_and_wrap(cfg, settings, runtime, model_manifest, label_names,
                                            pad_id, True), settings, runtime, mesh)
            gc.collect()
        dist.barrier()
    peaks: list[Any] = [None] * runtime.world_size
    dist.all_gather_object(peaks, sharding.host_memory_gib())
    LOG.info("host memory after loading in turns (GiB, per process: peak, now): %s",
             ", ".join(f"{peak:.1f}/{now:.1f}" for peak, now in peaks))
    return model


def _load_from_meta(cfg: TrainConfig, settings: TrainingSettings, runtime: Runtime, pad_id: int,
                    mesh: Any) -> Any:
    """The sharded model built on the meta device, each process reading only its rows.

    None (the caller loads whole copies in turns) where loading.py's path does not apply.
    """
    from transformers import AutoModelForCausalLM

    why = ("the task's head is new, not in the checkpoint"
           if model_task(cfg.task) != "causal-lm"
           else "the checkpoint is 4-bit" if _prequantized(cfg.model_dir) else None)
    if why is None:
        base = loading.empty_base(AutoModelForCausalLM, cfg.model_dir, runtime.dtype,
                                  kernels.attention_implementation(runtime.device, cfg.task))
        model = wrap_with_lora(_ready_base(base, settings, pad_id), cfg)
        why = loading.can_load(model, cfg.model_dir, cfg.lora_config)
    if why:
        LOG.info("loading: whole copies, one process of a node at a time (%s)", why)
        return None
    lora = loading.make_lora(model, settings.seed, cfg.lora_config.get("init_lora_weights", True),
                             runtime.dtype)
    model = _sharded(kernels.prepare_model(model, runtime.device), settings, runtime, mesh)
    buffers = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
    stats = loading.fill_shards(model, cfg.model_dir, runtime.device, buffers, lora)
    everyone: list[Any] = [None] * runtime.world_size
    dist.all_gather_object(everyone, (stats, sharding.host_memory_gib()))
    LOG.info("loading: meta device; each process read only its rows of the checkpoint "
             "(%.2f MiB): %s", stats["checkpoint_bytes"] / 2**20, "; ".join(
                 f"rank {rank} read {item['bytes_read'] / 2**20:.2f} MiB in "
                 f"{item['tensors_read']} tensors, peak RSS {peak:.1f} GiB"
                 for rank, (item, (peak, _)) in enumerate(everyone)))
    return model


def _sharded(model: Any, settings: TrainingSettings, runtime: Runtime, mesh: Any) -> Any:
    """`model` with its base sharded over `mesh` (sharding.shard), a bad layer class an error."""
    try:
        sharding.shard(model, model.get_base_model(), settings.parallelism, runtime.device, mesh)
    except ValueError as error:
        problems = Problems()
        problems.add(str(error))
        problems.raise_if_any()
    return model


def _ready_base(model: Any, settings: TrainingSettings, pad_id: int) -> Any:
    """The loaded base model with its pad id and activation checkpointing set."""
    if model.config.pad_token_id is None:
        # Sequence classification finds each row's last token by the pad id.
        model.config.pad_token_id = pad_id
    if settings.gradient_checkpointing or settings.parallelism.activation_checkpointing:
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs=settings.gradient_checkpointing_kwargs
            or {"use_reentrant": False})
        # Reentrant checkpointing needs an input that requires grad to run the backward at all.
        model.enable_input_require_grads()
    return model


def _load_and_wrap(cfg: TrainConfig, settings: TrainingSettings, runtime: Runtime,
                   model_manifest: dict[str, Any], label_names: list[str] | None,
                   pad_id: int, sharded: bool) -> Any:
    torch.manual_seed(settings.seed)
    model = load_model(cfg, model_manifest, label_names, runtime, sharded)
    model = wrap_with_lora(_ready_base(model, settings, pad_id), cfg)
    # Before sharding (as torchtitan does): FSDP2's hooks run outside the compiled layer code
    # (torch._dynamo skips FSDP hooks).
    return kernels.prepare_model(model, runtime.device)


def _plan_steps(settings: TrainingSettings, runtime: Runtime, examples: list[data.Example],
                order: data.GlobalOrder) -> tuple[data.TokenBudget | None, int, int, int]:
    """(token budget or None, global batch, accumulation, total steps), logged (setup, 3/4)."""
    accumulation = settings.accumulation_steps(runtime.world_size)
    lengths = [len(example.input_ids) for example in examples]
    global_batch = runtime.world_size * settings.per_device_train_batch_size * accumulation
    if settings.max_tokens_per_micro_batch is not None:
        budget = data.TokenBudget(lengths, runtime.world_size * accumulation,
                                  settings.max_tokens_per_micro_batch)
        total_steps = settings.max_steps if settings.max_steps > 0 else order.total_token_steps(
            settings.num_train_epochs, budget)
        LOG.info("data: %d examples, %d tokens; micro-batches of up to %d tokens x %d processes "
                 "x %d accumulation per step (%d tokens); %d steps in total", len(examples),
                 sum(lengths), budget.tokens, runtime.world_size, accumulation,
                 budget.tokens * budget.slots, total_steps)
        return budget, global_batch, accumulation, total_steps
    steps_per_epoch = order.steps_per_epoch(global_batch)
    total_steps = settings.max_steps if settings.max_steps > 0 else max(
        1, math.ceil(settings.num_train_epochs * steps_per_epoch))
    LOG.info("data: %d examples, %d tokens; global batch %d = %d per device x %d processes "
             "x %d accumulation; %d steps per epoch, %d steps in total", len(examples),
             sum(lengths), global_batch, settings.per_device_train_batch_size,
             runtime.world_size, accumulation, steps_per_epoch, total_steps)
    return None, global_batch, accumulation, total_steps


def setup(cfg: TrainConfig, runtime: Runtime, auto_tokenizer: Any) -> tuple[Job, Resumed]:
    """Loads the data and the model, wraps them, and resumes from a checkpoint if there is one."""
    settings = cfg.settings
    rows, model_manifest, data_manifest, label_names = _load_inputs(cfg, settings, runtime)
    tokenizer = auto_tokenizer.from_pretrained(cfg.model_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (
        tokenizer.eos_token_id or 0)
    # Before the model loads: bad rows fail fast.
    examples = tokenization.tokenize_rows(cfg.task, rows, tokenizer, settings.max_seq_length)
    sharded = choose_sharding(cfg, runtime, model_manifest)
    model = _build_model(cfg, settings, runtime, model_manifest, label_names, pad_id, sharded)
    trainable = sum(param.numel() for param in model.parameters() if param.requires_grad)
    total = sum(param.numel() for param in model.parameters())
    LOG.info("LoRA: %s trainable parameters of %s (%.3f%%)", f"{trainable:,}", f"{total:,}",
             100 * trainable / total)

    order = data.GlobalOrder(len(examples), settings.order_seed, settings.shuffle)
    budget, global_batch, accumulation, total_steps = _plan_steps(settings, runtime, examples,
                                                                   order)
    optimizer, scheduler = build_optimizer(model, settings, runtime, total_steps)
    identity = _identity(model_manifest, model)
    restored = restore_checkpoint(cfg, runtime, model, optimizer, scheduler, identity)
    resumed = Resumed(restored["step"], data.DataPosition(**restored["position"]),
                      _history_records(restored["history"])) if restored else Resumed()

    root = model.get_base_model() if sharded else None
    wrapped = model if sharded else torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None)
    wrapped.train()
    # Packed causal-lm micro-batches are dealt out by tokens, not example count, so that every
    # rank's micro-batch takes about as long (a step waits for the slowest rank).
    deal_lengths = ([len(example.input_ids) for example in examples]
                    if model_task(cfg.task) == "causal-lm" and settings.packing else None)
    loss = (preference.PreferenceLoss(settings.beta, settings.loss_type, settings.label_smoothing)
            if cfg.task == "preference" else None)
    job = Job(cfg, settings, runtime, model, wrapped, root, tokenizer, pad_id, examples, order,
              budget, global_batch, accumulation, total_steps, optimizer, scheduler, identity,
              model_manifest, data_manifest, trainable, deal_lengths, loss)
    return job, resumed


@dataclasses.dataclass
class StepResult:
    """What one optimizer step did."""

    targets: int
    """Target tokens (causal-lm) or examples (classification) of the whole step, all ranks."""
    tokens: int
    """Tokens of the whole step, all ranks."""
    grad_norm: torch.Tensor | None
    loss_sum: torch.Tensor
    """This rank's summed loss over the step (not synchronized)."""
    pair_sums: torch.Tensor | None = None
    """preference: this rank's sums of `preference.METRIC_NAMES` over the step's pairs."""


def train_step(job: Job, step_examples: list[int], hooks: DebugHooks, step: int,
               epoch: int) -> StepResult:
    """One optimizer step over this rank's micro-batches of `step_examples` (1-based `step`)."""
    settings, runtime = job.settings, job.runtime
    micro_batches = data.rank_micro_batches(
        step_examples, runtime.rank, runtime.world_size, settings.per_device_train_batch_size,
        job.accumulation, job.deal_lengths, job.budget)
    step_targets = max(1, sum(job.examples[index].target_count for index in step_examples))
    step_tokens = sum(len(job.examples[index].input_ids) for index in step_examples)
    loss_total = torch.zeros((), device=runtime.device)
    pair_sums = torch.zeros(len(preference.METRIC_NAMES), device=runtime.device)
    for micro, indices in enumerate(micro_batches):
        hooks.saw(epoch, step, indices)
        batch = _to_device(_collate(job.cfg.task, [job.examples[index] for index in indices],
                                    job.pad_id, settings), runtime)
        last = micro == len(micro_batches) - 1
        with nullcontext() if last else sharding.no_gradient_sync(job.wrapped, job.root):
            if job.preference is not None:
                loss_sum, sums = preference.micro_batch_loss(job.wrapped, job.model, batch,
                                                             job.preference)
                pair_sums += sums
            elif job.cfg.task == "causal-lm":
                loss_sum, _ = kernels.causal_lm_loss(job.wrapped, batch)
            else:
                loss_sum, _ = kernels.classification_loss(
                    job.wrapped, batch, settings.label_smoothing_factor)
            # DDP and FSDP average gradients over ranks; scaling by world / step targets makes the
            # result the mean over every target token of the whole optimizer step.
            (loss_sum * (runtime.world_size / step_targets)).backward()
        loss_total += loss_sum.detach()
    grad_norm = (torch.nn.utils.clip_grad_norm_(job.model.parameters(), settings.max_grad_norm)
                 if settings.max_grad_norm > 0 else None)
    job.optimizer.step()
    job.scheduler.step()
    job.optimizer.zero_grad(set_to_none=True)
    return StepResult(step_targets, step_tokens, grad_norm, loss_total,
                      pair_sums if job.preference is not None else None)


class Progress:
    """The loop's accounting: the logging window, throughput, host stalls and per-step times."""

    def __init__(self, job: Job, resumed: Resumed, started: float,
                 reporters: Sequence[progress_lib.Reporter] = ()) -> None:
        self.job = job
        self.reporters = list(reporters)
        """Where the logged steps go besides the log (progress.py; global rank 0 only)."""
        self.started = started
        self.first_step = resumed.step
        self.history = resumed.history
        self.log_every = _every(job.settings.logging_steps, job.total_steps)
        self.window_loss = torch.zeros((), device=job.runtime.device)
        self.window_pairs = torch.zeros(len(preference.METRIC_NAMES), device=job.runtime.device)
        self.window_targets = self.window_tokens = 0
        self.stalls = HostStalls()
        self.stall_mark = self.window_stall_mark = self.stalls.snapshot()
        self.window_started = self.run_started = time.monotonic()
        self.run_tokens = 0
        self.step_times: list[list[float]] = []  # one row per step (see `_record_time`)

    def end_step(self, step: int, position: data.DataPosition, result: StepResult) -> None:
        """Accounts for step `step`; logs the progress line on logging steps (collective)."""
        self.window_loss += result.loss_sum
        if result.pair_sums is not None:
            self.window_pairs += result.pair_sums
        self.window_targets += result.targets
        self.window_tokens += result.tokens
        self.run_tokens += result.tokens
        if step == self.first_step + 1 or self.stalls.compilations() > self.stall_mark[1]:
            # While the GPU finishes the step; the progress line below counts it.
            frozen = self.stalls.freeze_heap()
            LOG.debug("step %d: %d objects frozen out of garbage collection", step, frozen)
        settings = self.job.settings
        if settings.logging_strategy != "no" and (
            step % self.log_every == 0 or step == self.job.total_steps
            or (settings.logging_first_step and step == self.first_step + 1)
        ):
            self._log(step, position, result.grad_norm)
        self._record_time(step, result.tokens)

    def _log(self, step: int, position: data.DataPosition, grad_norm: torch.Tensor | None) -> None:
        job = self.job
        dist.all_reduce(self.window_loss)
        loss = self.window_loss.item() / self.window_targets
        pair_metrics = self._pair_metrics()
        stall_note, self.window_stall_mark = _stall_note(self.stalls, self.window_stall_mark,
                                                         job.runtime)
        now = time.monotonic()
        eta = (now - self.run_started) / (step - self.first_step) * (job.total_steps - step)
        record = {
            "step": step,
            "epoch": round(position.epoch + position.consumed / len(job.examples), 4),
            "loss": loss,
            "learning_rate": job.scheduler.get_last_lr()[0],
            "grad_norm": sharding.full(grad_norm).item() if grad_norm is not None else None,
            "tokens_per_second": self.window_tokens / max(now - self.window_started, 1e-9),
            "elapsed_seconds": round(now - self.started, 3),
            **pair_metrics,
        }
        self.history.append(record)
        for reporter in self.reporters:
            reporter.step(record, progress_lib.Position(step, job.total_steps, eta))
        LOG.info(
            "step %d/%d (%.1f%%) | epoch %.2f | loss %.4f | lr %.3e | grad_norm %s | "
            "tokens/s %.0f | elapsed %s | eta %s%s%s",
            step, job.total_steps, 100 * step / job.total_steps, record["epoch"], loss,
            record["learning_rate"],
            f"{record['grad_norm']:.3f}" if grad_norm is not None else "-",
            record["tokens_per_second"], _format_seconds(now - self.started),
            _format_seconds(eta), stall_note,
            "".join(f" | {name} {value:.4f}" for name, value in pair_metrics.items()))
        self.window_loss.zero_()
        self.window_pairs.zero_()
        self.window_targets = self.window_tokens = 0
        self.window_started = time.monotonic()

    def _pair_metrics(self) -> dict[str, float]:
        """preference: the window's mean rewards, accuracy and margin over all ranks' pairs."""
        if self.job.preference is None:
            return {}
        dist.all_reduce(self.window_pairs)
        pairs = max(self.window_targets, 1)  # a preference pair is one target
        return {name: value / pairs
                for name, value in zip(preference.METRIC_NAMES, self.window_pairs.tolist(),
                                       strict=True)}

    def _record_time(self, step: int, tokens: int) -> None:
        gc_seconds, compilations = self.stalls.snapshot()
        if len(self.step_times) < 10_000:
            # Recorded after the progress line's loss sync, so that on logged steps the time
            # includes the step's GPU work: [step, the job's tokens, seconds since the loop
            # started, this rank's GC seconds and torch.compile runs in the step].
            self.step_times.append([step, tokens, round(time.monotonic() - self.run_started, 4),
                                    round(gc_seconds - self.stall_mark[0], 4),
                                    compilations - self.stall_mark[1]])
        self.stall_mark = gc_seconds, compilations

    def metrics(self, step: int, position: data.DataPosition) -> dict[str, Any]:
        """The run's metrics.json content."""
        self.stalls.close()
        job, now = self.job, time.monotonic()
        run_rate = self.run_tokens / max(now - self.run_started, 1e-9)
        num_examples = len(job.examples)
        return {
            "train_loss": [[record["step"], record["loss"]] for record in self.history],
            "final_loss": self.history[-1]["loss"] if self.history else None,
            "steps": step,
            "epochs": position.epoch + position.consumed / num_examples,
            "examples_seen": position.epoch * num_examples + position.consumed,
            "tokens_per_second": run_rate,
            "tokens_per_second_per_process": run_rate / job.runtime.world_size,
            "runtime_seconds": now - self.started,
            "resumed_from_step": self.first_step or None,
            "world_size": job.runtime.world_size,
            "trainable_parameters": job.trainable,
            "step_times": self.step_times,
            "peak_memory_gib": (torch.cuda.max_memory_allocated(job.runtime.device) / 2**30
                                if job.runtime.device.type == "cuda" else None),
        }


def finish(job: Job, metrics: dict[str, Any],
           history: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """Writes the adapter artifact on global rank 0 (collective); returns `metrics`."""
    adapter = sharding.trainable_state(job.model) if job.root is not None else None
    if job.runtime.is_main:
        training = {**dataclasses.asdict(job.settings),
                    "gradient_accumulation_steps": job.accumulation,
                    "world_size": job.runtime.world_size,
                    "global_batch_size": None if job.budget else job.global_batch,
                    "total_steps": job.total_steps}
        path = save_final(job.cfg, job.model, job.tokenizer, job.model_manifest,
                          job.data_manifest, metrics, training, adapter, history)
        # The trainer's output directory is a work area (the step publishes the adapter from
        # it, then deletes it): the line says what was done, not where.
        LOG.info("done: %d steps, final loss %s, %.0f tokens/s, %s; adapter written",
                 metrics["steps"],
                 f"{metrics['final_loss']:.4f}" if metrics["final_loss"] is not None else "-",
                 metrics["tokens_per_second"], _format_seconds(metrics["runtime_seconds"]))
        LOG.debug("adapter directory: %s", path)
    dist.barrier()
    return metrics


def _train(cfg: TrainConfig, settings: TrainingSettings, runtime: Runtime,
           auto_tokenizer: Any) -> dict[str, Any]:
    started = time.monotonic()
    LOG.info("kftune trainer: task %s, %d process(es) (%s), device %s, weights %s",
             cfg.task, runtime.world_size, dist.get_backend(), runtime.device.type,
             str(runtime.dtype).removeprefix("torch."))
    job, resumed = setup(cfg, runtime, auto_tokenizer)
    progress = Progress(job, resumed, started, progress_lib.reporters_from_env(
        runtime.is_main, _tracked_params(job), Path(cfg.output_dir).parent.name or "kftune"))
    hooks = DebugHooks(runtime)
    save_every = _every(settings.save_steps, job.total_steps)
    step, position = resumed.step, resumed.position
    steps = job.steps(position)
    metrics: dict[str, Any] | None = None
    try:
        while step < job.total_steps:
            step_examples, position = next(steps)
            result = train_step(job, step_examples, hooks, step + 1, position.epoch)
            step += 1
            progress.end_step(step, position, result)
            if (settings.save_strategy == "steps" and step % save_every == 0
                    and step < job.total_steps):
                save_checkpoint(cfg, runtime, job.model, job.optimizer, job.scheduler, step,
                                position, job.identity, settings, progress.history)
            hooks.after_step(step)
        hooks.close()
        metrics = finish(job, progress.metrics(step, position), progress.history)
    finally:
        for reporter in progress.reporters:  # a failed run (metrics None) reports no 100 %
            reporter.close(metrics)
    tracking = progress_lib.tracking_record(progress.reporters)
    if tracking:  # for the evaluate step, which adds its results to the same run
        (Path(cfg.output_dir) / "final" / TRACKING_FILE).write_text(json.dumps(tracking))
    assert metrics is not None  # set unless the loop raised
    return metrics


def _tracked_params(job: Job) -> dict[str, Any]:
    """The run's settings as experiment trackers show them (flat)."""
    return {**dataclasses.asdict(job.settings), "task": job.cfg.task,
            **{f"lora.{key}": value for key, value in job.cfg.lora_config.items()},
            "world_size": job.runtime.world_size, "total_steps": job.total_steps,
            "gradient_accumulation_steps": job.accumulation,
            "base_model": (job.model_manifest.get("source") or {}).get("uri")}


def _collate(task: str, examples: Sequence[data.Example], pad_id: int,
             settings: TrainingSettings) -> dict[str, torch.Tensor]:
    if task == "causal-lm":
        return data.collate_causal_lm(examples, pad_id, settings.packing,
                                      settings.pad_to_multiple_of)
    if task == "preference":
        return data.collate_preference(examples, pad_id, settings.packing,
                                       settings.pad_to_multiple_of)
    return data.collate_classification(examples, pad_id, settings.pad_to_multiple_of)


def _to_device(batch: dict[str, Any], runtime: Runtime) -> dict[str, Any]:
    return {key: value.to(runtime.device, non_blocking=True) if isinstance(value, torch.Tensor)
            else value for key, value in batch.items()}


class DebugHooks:
    """The test hooks of the module docstring; each does nothing when its variable is unset."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.seen_file: Any = None
        directory = os.environ.get("KFTUNE_DEBUG_SEEN_DIR")
        if directory:
            Path(directory).mkdir(parents=True, exist_ok=True)
            # Line-buffered: a process killed by torchrun must not lose what it already reported.
            self.seen_file = open(
                Path(directory) / f"seen-rank{runtime.rank}.txt", "a", buffering=1)
        step = os.environ.get("KFTUNE_DEBUG_KILL_AT_STEP")
        first_attempt = (os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
                         and os.environ.get("KFTUNE_LOCAL_RESTART_COUNT", "0") == "0")
        self.kill_step = int(step) if step and first_attempt else None
        self.kill_rank = int(os.environ.get("KFTUNE_DEBUG_KILL_RANK", "1"))

    def saw(self, epoch: int, step: int, indices: Sequence[int]) -> None:
        """Records the examples of one micro-batch of (1-based) `step`."""
        if self.seen_file:
            self.seen_file.writelines(f"{epoch} {step} {index}\n" for index in indices)

    def after_step(self, step: int) -> None:
        """SIGKILLs this process if it is the rank and step asked for."""
        if step == self.kill_step and self.runtime.rank == self.kill_rank:
            if self.seen_file:
                self.seen_file.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    def close(self) -> None:
        """Closes the seen file."""
        if self.seen_file:
            self.seen_file.close()


@record
def main(argv: Sequence[str] | None = None) -> int:
    """Parses `--config CONFIG.json` and trains.

    Under torchrun, an error is recorded in `TORCHELASTIC_ERROR_FILE` (`@record` for the
    unexpected ones), which torchrun hands on to its own caller: that is how the launch step
    reports the trainer's own message.
    """
    parser = argparse.ArgumentParser(prog="kftune-trainer", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="path of CONFIG.json (see config.py)")
    args = parser.parse_args(argv)
    try:
        train(TrainConfig.from_file(args.config))
    except InputError as error:
        get_error_handler().record_exception(error)
        print(f"kftune trainer: bad input: {error}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
