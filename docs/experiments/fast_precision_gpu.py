"""The `fast` recipe on a GPU in fp32 and in bf16 autocast, six seeds each (steps replayed from a
CUDA graph): does the precision change the training time?

    PYTHONPATH=src python3 docs/experiments/fast_precision_gpu.py

On an H200 (2026-11-26) it printed (training seconds per seed):
    fp32 median 0.1597 acc 99.157 [0.574, 0.157, 0.156, 0.158, 0.163, 0.161]
    bf16 median 0.1588 acc 99.142 [0.269, 0.16, 0.16, 0.158, 0.156, 0.155]
    fp32 median 0.1583 acc 99.142 [0.157, 0.158, 0.157, 0.158, 0.163, 0.16]
No: about 0.16 s either way, so the step is bound by its number of kernels, not by arithmetic.
"""

import statistics
from pathlib import Path

from mnistlab.recipes import load_recipe, recipe_from_dict
from mnistlab.training.engine import Trainer
from mnistlab.training.progress import Progress

for precision in ("fp32", "bf16", "fp32"):
    table = load_recipe("fast").to_dict()
    table["train"]["precision"] = precision
    recipe = recipe_from_dict(table, precision)
    runs = [Trainer(recipe, Path(f"/tmp/f/{precision}-{seed}-{id(table)}"), seed=seed,
                    device="cuda", progress=Progress(1, quiet=True)).run() for seed in range(6)]
    print(precision, "median", round(statistics.median(r.train_seconds for r in runs), 4),
          "acc", round(100 * statistics.fmean(r.test.accuracy for r in runs), 3),
          [round(r.train_seconds, 3) for r in runs], flush=True)
