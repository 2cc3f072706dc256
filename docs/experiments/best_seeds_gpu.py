"""Seeds 1, 2 and 0 of the recipe that best_search_gpu.py chose, then their ensemble, on a GPU.

The recipe is read from best-chosen-gpu.json (the search's own record of it), so that it is the
one the search chose to the letter; it equals src/mnistlab/recipebook/best.toml but for its name.

    PYTHONPATH=src python3 docs/experiments/best_seeds_gpu.py

On an H200 (2026-11-26) it printed:
    seed 1: test 99.74% val 99.70% train 15.4 s graph True
    seed 2: test 99.77% val 99.74% train 14.8 s graph True
    seed 0: test 99.74% val 99.76% train 14.8 s graph True
    ensemble of 3: 99.76%
"""

import json
from pathlib import Path

from mnistlab.committee import evaluate_ensemble
from mnistlab.models import build_model
from mnistlab.recipebook import recipe_from_dict
from mnistlab.training.engine import Trainer
from mnistlab.training.progress import Progress

HERE = Path(__file__).parent

table = json.loads((HERE / "best-chosen-gpu.json").read_text())
recipe = recipe_from_dict(table, "chosen")
model = build_model(recipe.model.name, **recipe.model.args)
print(recipe.model, sum(p.numel() for p in model.parameters()))
runs = []
for seed in (1, 2, 0):
    r = Trainer(recipe, Path(f"/tmp/m/seed-{seed}"), seed=seed, device="cuda",
                progress=Progress(1, quiet=True)).run()
    runs.append(str(r.run_dir))
    print(f"seed {seed}: test {100 * r.test.accuracy:.2f}% val {100 * r.validation.accuracy:.2f}% "
          f"train {r.train_seconds:.1f} s graph {r.cuda_graph}", flush=True)
e = evaluate_ensemble(runs, device="cuda")
print(f"ensemble of 3: {100 * e.metrics.accuracy:.2f}%")
