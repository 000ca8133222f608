#!/bin/bash
# merge8b (session 5): export_model's peak RSS and wall time on a Llama-3-8B-shaped model, merge
# only and with the logits check; the check with this session's code (.dev/tree) and with main's.
set -u
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .dev/whl/*.whl || exit 1
mkdir -p /tmp/new /tmp/old; ln -sfn "$PWD/.dev/tree" /tmp/new/kftune; ln -sfn "$PWD/.dev/old" /tmp/old/kftune
{ date -u; nproc; free -g; df -h /tmp; grep -m1 "model name" /proc/cpuinfo
  PYTHONPATH=/tmp/site python3 -c "import torch, transformers, accelerate, peft, safetensors; print(torch.__version__, transformers.__version__, accelerate.__version__, peft.__version__, safetensors.__version__, torch.cuda.is_available())"
} 2>&1 | tee "$OUT/env.txt"
rm -rf /tmp/b8
export KFTUNE_CACHE_DIR="$PWD/.dev/cache"
cd .dev/tree
for phase in ${PHASES:-new old}; do
  if [ "$phase" = new ]; then
    echo "== new: PYTHONPATH=/tmp/new:/tmp/site python3 bench/export_peak_rss.py --model llama3-8b --modes baseline,merge,check --workdir /tmp/b8"
    PYTHONPATH=/tmp/new:/tmp/site timeout ${NEW_LIMIT:-400} python3 bench/export_peak_rss.py --model llama3-8b --modes baseline,merge,check --workdir /tmp/b8 2>&1 | grep -v Warning | tee "$OUT/new.txt"
  else
    echo "== old (main's export_model): PYTHONPATH=/tmp/old:/tmp/site python3 bench/export_peak_rss.py --model llama3-8b --modes check --workdir /tmp/b8"
    PYTHONPATH=/tmp/old:/tmp/site timeout ${OLD_LIMIT:-400} python3 bench/export_peak_rss.py --model llama3-8b --modes check --workdir /tmp/b8 2>&1 | grep -v Warning | tee "$OUT/old.txt"
  fi
  df -h /tmp | tail -1; free -g | sed -n 2p
done
