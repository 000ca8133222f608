#!/bin/bash
# What the device calls ran (see BENCHMARKS.md). Usage: bench/run_device.sh <phase>, or
# bench/run_device.sh <any other word> <bench/train_throughput.py args> for a one-off run.
# Makes the repo importable as `kftune` (the repo root is the package), keeps NVLink multicast off,
# bounds the run so that its results come back, and packs per-job logs into one archive.
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/kftune
export PYTHONPATH=/tmp/pkg${PYTHONPATH:+:$PYTHONPATH}
FINAL=${OUT:-/tmp/out}; export OUT=$FINAL/jobs; mkdir -p "$OUT"
LIMIT=${BENCH_LIMIT_S:-540}
B="python3 bench/train_throughput.py"
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import kftune.components.train_lora.pod.trainer, sys; print('trainer imported; kfp loaded:', 'kfp' in sys.modules, '| datasets loaded:', 'datasets' in sys.modules)"
} 2>&1 | tee -a "$FINAL/log.txt"
phase=$1; shift
timeout "$LIMIT" bash -c "
case $phase in
  call1)
    $B --runs env,kftune,reference --shapes 8b --lora r16all
    KFTUNE_COMPILE=0 $B --runs kftune --shapes 8b --lora r16all
    $B --runs kftune,reference --shapes 1b --lora r8qv
    $B --runs kftune --shapes 8b --lora r8qv
    $B --runs losscmp --shapes 1b --lora r8qv --steps 20 --lr 1e-3
    ;;
  call2)
    $B --runs kftune,reference,losscmp --shapes 1b,8b --lora r8qv,r16all --gpus 1,2,4 \
       --topologies 1node,2nodes --scaling-configs 8b:r16all --parallel
    ;;
  s2a)  # session 2: token-budget micro-batches; 1-GPU matrix + 2-GPU scaling of two configs
    $B --runs kftune,reference --shapes 1b,8b --lora r8qv,r16all --gpus 1,2 \
       --topologies 1node,2nodes --scaling-configs 8b:r16all,1b:r8qv --parallel --steps 20
    ;;
  s2b)  # session 2: 4-GPU scaling, both topologies (1-GPU baselines from s2a)
    $B --runs kftune --shapes 1b,8b --lora r8qv,r16all --gpus 4 --topologies 1node,2nodes \
       --scaling-configs 8b:r16all,1b:r8qv --steps 20
    ;;
  s2c)  # session 2: 8B r16all on 4 GPUs x 1 node again, 40 steps, GPU clocks/power logged; GPU tests
    nvidia-smi --query-gpu=timestamp,index,clocks.sm,power.draw,temperature.gpu,utilization.gpu,clocks_throttle_reasons.active --format=csv -lms 500 > $FINAL/smi.csv &
    echo \$! > /tmp/smi.pid
    $B --runs kftune --shapes 8b --lora r16all --gpus 4 --topologies 1node --steps 40
    kill \$(cat /tmp/smi.pid)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site:\$PYTHONPATH python3 -m pytest -v -s -m gpu tests/gpu/test_trainer_gpu.py -p no:cacheprovider
    ;;
  s4)  # session 3 (x4 withheld): are the pauses first-time work that an on-disk cache remembers?
        # 8B on 2 GPUs, 80 steps, twice: with empty compiler caches, then with the caches the first
        # pass filled. Lists every cache file written after the start, with its time, to line
        # up against the progress lines' timestamps (about 7 min)
    export TORCHINDUCTOR_CACHE_DIR=/tmp/s4c/inductor TRITON_CACHE_DIR=/tmp/s4c/triton CUDA_CACHE_PATH=/tmp/s4c/nv
    rm -rf /tmp/s4c; mkdir -p /tmp/s4c
    for pass in cold warm; do
      touch /tmp/s4c.mark; echo \"pass \$pass starts \$(date +%s.%N)\"
      TORCH_LOGS=recompiles $B --runs kftune --shapes 8b --lora r16all --gpus 2 \
         --topologies 1node --steps 80 --tag \$pass
      find /tmp/s4c -type f -newer /tmp/s4c.mark -printf '%T@ %s %P\\n' | sort -n > $FINAL/cache-\$pass.txt
      echo \"pass \$pass: \$(wc -l < $FINAL/cache-\$pass.txt) cache files written\"
    done
    ;;
  s5)  # session 3: the trainer now freezes the heap after compiling (HostStalls.freeze_heap).
        # 8B on 1 GPU, 50 steps, empty compiler caches each time: with it, then without
        # (KFTUNE_GC_FREEZE=0); per-step GC seconds land in the metrics (about 7 min)
    export TORCHINDUCTOR_CACHE_DIR=/tmp/s5c/inductor TRITON_CACHE_DIR=/tmp/s5c/triton CUDA_CACHE_PATH=/tmp/s5c/nv
    for pass in freeze nofreeze; do
      rm -rf /tmp/s5c; mkdir -p /tmp/s5c
      KFTUNE_GC_FREEZE=\$([ \$pass = freeze ] && echo 1 || echo 0) $B --runs kftune --shapes 8b \
         --lora r16all --gpus 1 --steps 50 --tag \$pass
    done
    ;;
  s6a)  # next, on 4 GPUs: scaling again now that the trainer freezes the heap after compiling
         # (session 3 found the 0.5 s pauses were full garbage collections); 8B r16all, 1 GPU and
         # 4 GPUs x 1 node, 40 steps (about 6 min)
    $B --runs kftune --shapes 8b --lora r16all --gpus 1,4 --topologies 1node --steps 40
    ;;
  s6b)  # then 8B on 4 GPUs as 2 nodes (its 1-GPU baseline is s6a's), and 1B r8qv, whose 4 GPU x
         # 2 nodes figure was 95.3% in s2b (about 8 min)
    $B --runs kftune --shapes 8b --lora r16all --gpus 4 --topologies 2nodes --steps 40
    $B --runs kftune --shapes 1b --lora r8qv --gpus 1,4 --topologies 1node,2nodes --steps 40
    ;;
  s7a)  # session 4 (1 GPU lent): the GPU tests (fast path vs the plain HF forward; DDP and FSDP2
         # on 1 GPU), 8B r16all kftune vs reference after the trainer split, and kftune with the
         # base sharded by FSDP2 over a mesh of one GPU (the sharded code path; no memory saved)
    python3 -m pytest -v -s -m gpu tests/gpu -p no:cacheprovider
    $B --runs kftune,reference --shapes 8b --lora r16all --steps 20
    $B --runs kftune --shapes 8b --lora r16all --steps 20 --tag fsdp1 \
       --kftune-extra '{\"fsdp\": \"full_shard\"}'
    ;;
  s7b|s7c)  # s7c: without the tests. Session 4: the 1-GPU trainer tests (DDP and FSDP2; they need the demo corpus wheel),
         # then QLoRA 8B r16all on 1 GPU, kftune vs HF Trainer + PEFT + bitsandbytes (the reference
         # recipe with a 4-bit base); kftune compiled first, eager if compiling fails
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site ../whl/*.whl
    export PYTHONPATH=/tmp/site:\$PYTHONPATH
    [ "$phase" = s7b ] && python3 -m pytest -v -s -m gpu tests/gpu/test_trainer_gpu.py -k 'one_gpu' -p no:cacheprovider
    Q='{\"quantization\": {\"load_in_4bit\": true, \"bnb_4bit_quant_type\": \"nf4\", \"bnb_4bit_compute_dtype\": \"bfloat16\", \"bnb_4bit_use_double_quant\": true}}'
    $B --runs kftune,reference-qlora --shapes 8b --lora r16all --steps \${QSTEPS:-20} --tag qlora --kftune-extra \"\$Q\"
    if grep '\"tag\": \"qlora\"' $OUT/results.jsonl | grep -q '\"error\"'; then
      KFTUNE_COMPILE=0 $B --runs kftune --shapes 8b --lora r16all --steps 20 --tag qlora --kftune-extra \"\$Q\"
    fi
    ;;
  dpo)  # issue 24: 8B r16all on 1 GPU: kftune DPO vs TRL DPOTrainer + PEFT (bf16, default padded
        # batches) on the same pairs, and kftune SFT vs TRL SFTTrainer (packing bfd, padding-free,
        # Liger if carried). Needs trl, peft, datasets (+ their wheels) in .whl (about 10 min)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:\$PYTHONPATH
    $B --runs kftune-dpo,trl-dpo,kftune,trl-sft --shapes 8b --lora r16all --steps 17 --warmup 3
    ;;
  gputests)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site:\$PYTHONPATH python3 -m pytest -v -s -m gpu tests/gpu/test_trainer_gpu.py -p no:cacheprovider
    ;;
  *) $B $* ;;
esac" 2>&1 | tee -a "$FINAL/log.txt"
$B table 2>&1 | tee "$FINAL/table.md"
cp "$OUT/results.jsonl" "$FINAL/" 2>/dev/null
for f in /tmp/kftune-bench/scratch/*/final/metrics.json; do
  [ -f "$f" ] && cp "$f" "$OUT/$(basename "$(dirname "$(dirname "$f")")")-metrics.json"
done
tar czf "$FINAL/jobs.tgz" -C "$FINAL" jobs && rm -rf "$OUT"
ls -la "$FINAL"
