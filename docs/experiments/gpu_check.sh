#!/usr/bin/env bash
# The GPU checks of the speed and accuracy issues, in one call on a lent GPU machine (its
# python3 has PyTorch with CUDA; mnistlab runs from src/ without installing):
#   OUT=/tmp/gpu bash docs/experiments/gpu_check.sh
# Writes log.txt (everything printed) and bench.tgz (the bench JSON files) into $OUT.
# About 5 minutes on an H200. (Its first version, on 2026-11-26, also ran
# best_search_gpu.py, which chose today's `best`.)
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
for recipe in fast fast-99.2; do
  timeout 120 $py -m mnistlab bench $recipe --seeds 10 --device cuda $eager --json /tmp/bench/$recipe-cuda.json
done
timeout 120 $py -m mnistlab bench fast --seeds 10 --device cuda --eager --json /tmp/bench/fast-cuda-eager.json
timeout 120 $py -m mnistlab bench fast-99.5 --seeds 3 --device cuda $eager --json /tmp/bench/fast-99.5-cuda.json
tar czf "$OUT/bench.tgz" -C /tmp bench

echo "== best: ten members and their ensemble (about 15 s a member with the graph)"
timeout 300 $py -m mnistlab train --recipe best --seeds 10 --device cuda --out /tmp/best --no-report --quiet
timeout 60 $py -m mnistlab ensemble /tmp/best/seed-{0,1,2} --device cuda
timeout 60 $py -m mnistlab ensemble /tmp/best/seed-* --device cuda
