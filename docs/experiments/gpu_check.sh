#!/usr/bin/env bash
# The GPU checks of the speed and accuracy issues, on a GPU machine (its python3 has PyTorch
# with CUDA; mnistlab runs from src/ without installing), in two calls of under 10 minutes each:
#   OUT=$OUT bash docs/experiments/gpu_check.sh speed
#   OUT=$OUT bash docs/experiments/gpu_check.sh accuracy     (SECONDS_LEFT=N to fit less time;
#                                                             DISTILL=1 also distils the members;
#                                                             EPOCHS=N trains every member N epochs)
#   OUT=$OUT bash docs/experiments/gpu_check.sh api          (about a minute)
#   OUT=$OUT bash docs/experiments/gpu_check.sh fast         (the GPU tests, then fast in bigger
#                                                             batches: docs/experiments/fast_gpu.py)
#   OUT=$OUT bash docs/experiments/gpu_check.sh kernels      (the GPU tests, then fast's kernels
#                                                             profiled and switches that keep its
#                                                             recipe: fast_gpu_kernels.py)
#   OUT=$OUT BASELINE=DIR bash docs/experiments/gpu_check.sh ab
#                                                            (the GPU tests, then fast benched from
#                                                             DIR/src and from this tree in turns;
#                                                             DIR from `git archive COMMIT src |
#                                                             tar -x -C DIR`)
#   OUT=$OUT BASELINE=DIR bash docs/experiments/gpu_check.sh steps
#                                                            (a fast --compile step's GPU and host
#                                                             time, from DIR/src and this tree in
#                                                             turns: step_time_gpu.py)
# Writes log.txt (everything printed) and bench.tgz (the bench JSON files) into $OUT.
# `speed` runs the GPU tests and benches fast, fast-99.2 and fast-99.5 (docs/BENCHMARKS.md);
# `accuracy` runs docs/experiments/ensemble_members_gpu.py (docs/RESULTS.md); `api` checks that
# the Python API's default device is the GPU and that a run from it loads and evaluates there
# (issue 19); no argument runs all three.
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT" /tmp/bench
exec > >(tee -a "$OUT/log.txt") 2>&1
py=python3
nvidia-smi -L
$py -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())"

gpu_tests() {
  echo "== tests on the GPU"
  timeout 150 $py -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_splits.py -k "not compiled"
  graphs_ok=$?
  timeout 150 $py -m pytest -q -p no:cacheprovider tests/test_gpu.py -k compiled
  compile_ok=$?
}

speed() {
  local eager=""
  gpu_tests
  [ "$graphs_ok" = 0 ] || { eager="--eager"; echo "GPU tests failed: the runs below are eager"; }
  echo "== bench"
  for recipe in fast fast-99.2; do
    timeout 120 $py -m mnistlab bench $recipe --seeds 10 --device cuda $eager --json /tmp/bench/$recipe-cuda.json
    # torch.compile inside the graph: fewer, fused kernels per step (only if its test passed)
    [ "$compile_ok" = 0 ] && timeout 180 $py -m mnistlab bench $recipe --seeds 10 --device cuda $eager --compile --json /tmp/bench/$recipe-cuda-compile.json
  done
  timeout 120 $py -m mnistlab bench fast-99.5 --seeds 3 --device cuda $eager --json /tmp/bench/fast-99.5-cuda.json
  tar czf "$OUT/bench.tgz" -C /tmp bench
}

accuracy() {
  # SECONDS_LEFT: the device time this call may use (default 560); no member starts in its last
  # 140 s, which the last member and the ensembles' evaluation need
  local seconds=${SECONDS_LEFT:-560}
  echo "== ensemble: ten members of five recipes, then their ensembles on test"
  timeout "$seconds" $py docs/experiments/ensemble_members_gpu.py --out /tmp/ensemble --budget $((seconds - 140)) \
    --json "$OUT/ensemble-members.json" ${DISTILL:+--distill} ${EPOCHS:+--epochs $EPOCHS}
  # the distilled model itself, should it be worth shipping
  mkdir -p "$OUT/distilled"
  cp /tmp/ensemble/distill-compact/seed-0/model.* "$OUT/distilled/" 2>/dev/null
}

api() {
  echo "== the Python API on the GPU: device auto, a run, its model loaded and measured"
  timeout 120 $py -m pytest -q -p no:cacheprovider tests/test_device.py
  timeout 120 $py - <<'PY'
import mnistlab
run = mnistlab.train("fast", seed=0, quiet=True, report=False, out="/tmp/api-fast")
assert run.result.device.startswith("cuda"), f"auto chose {run.result.device}"
model = mnistlab.load(run.run_dir)
print(repr(run), "on", run.result.device, f"in {run.train_seconds:.2f} s")
print(model, repr(model.evaluate()))
PY
}

fast() {
  gpu_tests
  echo "== fast in bigger batches, chosen on validation, then benched on test"
  timeout "${SECONDS_LEFT:-360}" $py docs/experiments/fast_gpu.py --json "$OUT/fast-gpu.json"
}

kernels() {
  gpu_tests
  echo "== fast's kernels, then ways of compiling it, chosen on validation"
  timeout "${SECONDS_LEFT:-360}" $py docs/experiments/fast_gpu_kernels.py --json "$OUT/fast-gpu-kernels.json"
}

ab() {
  gpu_tests
  echo "== fast, 10 seeds, from $BASELINE/src and from this tree, in turns (each side first once)"
  local side src
  for round in 1 2; do
    for side in $([ $round = 1 ] && echo baseline this || echo this baseline); do
      src=$PWD/src; [ $side = baseline ] && src=$BASELINE/src
      PYTHONPATH=$src timeout 150 $py -m mnistlab bench fast --seeds 10 --device cuda --compile \
        --json /tmp/bench/fast-compile-$side-$round.json
      [ $round = 1 ] && PYTHONPATH=$src timeout 120 $py -m mnistlab bench fast --seeds 10 \
        --device cuda --json /tmp/bench/fast-$side-$round.json
    done
  done
  $py - <<'PY'
import glob, json, os
for path in sorted(glob.glob("/tmp/bench/fast*-[12].json")):
    r = json.load(open(path))
    print(f"{os.path.basename(path):32} median {r['train_seconds_median']:.4f} s  "
          f"range {min(r['train_seconds']):.4f}-{max(r['train_seconds']):.4f}  "
          f"accuracy {r['accuracy_mean']:.4%}  compile {r['compile_seconds'][0]:.1f} s")
PY
  tar czf "$OUT/bench.tgz" -C /tmp bench
}

steps() {
  echo "== a fast --compile step's GPU and host time, from $BASELINE/src and this tree, in turns"
  local side src
  for round in 1 2 3; do
    for side in $([ $round = 2 ] && echo this baseline || echo baseline this); do
      src=$PWD/src; [ $side = baseline ] && src=$BASELINE/src
      PYTHONPATH=$src timeout 100 $py docs/experiments/step_time_gpu.py --seeds 8 \
        --json "$OUT/step-time-$side-$round.json" | tail -1 | sed "s/^/$side $round: /"
    done
  done
}

case "${1:-all}" in
  speed) speed ;;
  accuracy) accuracy ;;
  api) api ;;
  fast) fast ;;
  kernels) kernels ;;
  ab) ab ;;
  steps) steps ;;
  *) speed; accuracy; api ;;
esac
