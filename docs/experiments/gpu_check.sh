#!/usr/bin/env bash
# The GPU checks of issues 4 (speed) and 5 (accuracy), in one call on a lent GPU machine
# (its python3 has PyTorch with CUDA; mnistlab runs from src/ without installing):
#   OUT=/tmp/gpu bash docs/experiments/gpu_check.sh
# Writes log.txt (everything printed), bench.tgz (the bench JSON files), search.json and
# members-*.tgz (the ensemble members' models and metrics) into $OUT.
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT" /tmp/bench
exec > >(tee -a "$OUT/log.txt") 2>&1
py=python3
nvidia-smi -L
$py -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())"

echo "== tests on the GPU"
timeout 180 $py -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_splits.py
graphs_ok=$?
eager=""
[ "$graphs_ok" = 0 ] || { eager="--eager"; echo "GPU tests failed: the runs below are eager"; }

echo "== bench"
timeout 120 $py -m mnistlab bench fast --seeds 10 --device cuda $eager --json /tmp/bench/fast-cuda.json
timeout 120 $py -m mnistlab bench fast --seeds 10 --device cuda --eager --json /tmp/bench/fast-cuda-eager.json
timeout 120 $py -m mnistlab bench fast-99.2 --seeds 10 --device cuda $eager --json /tmp/bench/fast-99.2-cuda.json
timeout 120 $py -m mnistlab bench fast-99.5 --seeds 3 --device cuda $eager --json /tmp/bench/fast-99.5-cuda.json
tar czf "$OUT/bench.tgz" -C /tmp bench

echo "== best: search on validation, then the chosen recipe's seeds on test"
timeout 330 $py docs/experiments/best_search_gpu.py --out /tmp/search --members 10 --budget 240 $eager
cp /tmp/search/search.json "$OUT/" 2>/dev/null
cd /tmp/search/members 2>/dev/null && for first in 0 3 6 9; do
  dirs=$(for s in $(seq $first $((first + 2))); do [ -d seed-$s ] && echo seed-$s; done)
  [ -n "$dirs" ] && tar czf "$OUT/members-$first.tgz" --exclude=training_state.safetensors $dirs
done
ls -la "$OUT"
