"""`mnistlab bench`: time to accuracy, training and inference throughput, against a baseline.

The baseline is the same model and optimiser trained the way PyTorch's MNIST example trains:
an eager loop over `torch.utils.data.DataLoader`, one image at a time through a Dataset, fp32,
default memory format. Both are measured in the same process, on the same device, one after
the other, so their ratio is a fair comparison on whatever machine runs it.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from mnistlab.checkpoint import load_model
from mnistlab.data.splits import as_input, load_split
from mnistlab.device import resolve_device, wait_for
from mnistlab.models import build_model
from mnistlab.models.layers import stock_pytorch
from mnistlab.recipebook import Recipe, load_recipe
from mnistlab.training.engine import Trainer
from mnistlab.training.freeze import Freezer
from mnistlab.training.optim import make_optimizer
from mnistlab.training.progress import Progress


@dataclass
class BenchResult:
    recipe: str
    device: str
    seeds: int
    train_seconds: list[float]
    setup_seconds: list[float]
    accuracies: list[float]
    train_images_per_s: float  # median over seeds
    infer_batch1_images_per_s: float
    infer_batch1024_images_per_s: float
    baseline_images_per_s: float
    threads: int
    capture_seconds: list[float]  # CUDA graph capture, per seed (0 where none was used)
    cuda_graph: bool
    compile_seconds: list[float]  # torch.compile with the first step, per seed (0 without)
    compiled: bool
    hardware: str  # the GPU's or CPU's model name

    @property
    def speedup(self) -> float:
        return self.train_images_per_s / self.baseline_images_per_s

    def to_dict(self) -> dict:
        return {**asdict(self), "speedup": self.speedup,
                "train_seconds_median": statistics.median(self.train_seconds),
                "accuracy_mean": statistics.fmean(self.accuracies)}


def bench(name: str, *, seeds: int, device: str = "auto", baseline_steps: int = 200,
          quiet: bool = True, cuda_graphs: bool = True, compile: bool = False) -> BenchResult:
    recipe = load_recipe(name)
    dev = resolve_device(device)
    runs = []
    with tempfile.TemporaryDirectory(prefix="mnistlab-bench-") as tmp:
        for seed in range(seeds):
            trainer = Trainer(recipe, Path(tmp) / f"seed-{seed}", seed=seed, device=str(dev),
                              progress=Progress(1, quiet=quiet), cuda_graphs=cuda_graphs,
                              compile=compile, continue_with="")  # its folder goes with it
            result = trainer.run()
            if result.interrupted:  # Ctrl-C: the bench stops, its temporary runs go with it
                raise KeyboardInterrupt
            runs.append(result)
        model, _ = _trained_model(Path(tmp) / f"seed-{seeds - 1}", dev)
    test = load_split("test", recipe.data.dataset, device=dev)
    return BenchResult(
        recipe=recipe.name, device=str(dev), seeds=seeds,
        train_seconds=[r.train_seconds for r in runs],
        setup_seconds=[r.setup_seconds for r in runs],
        accuracies=[r.test.accuracy for r in runs],
        train_images_per_s=statistics.median(r.images_per_s for r in runs),
        infer_batch1_images_per_s=inference_rate(model, test.images, batch_size=1),
        infer_batch1024_images_per_s=inference_rate(model, test.images, batch_size=1024),
        baseline_images_per_s=baseline_rate(recipe, dev, baseline_steps),
        threads=torch.get_num_threads(),
        capture_seconds=[r.capture_seconds for r in runs],
        cuda_graph=all(r.cuda_graph for r in runs),
        compile_seconds=[r.compile_seconds for r in runs],
        compiled=all(r.compiled for r in runs),
        hardware=hardware_name(dev),
    )


def hardware_name(device: torch.device) -> str:
    if device.type != "cpu":  # torch.cuda and torch.xpu name their devices; torch.mps does not
        name = getattr(getattr(torch, device.type, None), "get_device_name", None)
        return name(device) if name is not None else device.type.upper()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def _trained_model(run_dir: Path, device: torch.device):
    model, meta = load_model(run_dir, device)  # channels last, as it trained
    return model.eval(), meta


@torch.inference_mode()
def inference_rate(model: torch.nn.Module, images: torch.Tensor, *, batch_size: int,
                   seconds: float = 2.0) -> float:
    """Images per second through `model`, median over repeated timed rounds of a few batches.

    A large batch goes through in chunks of 256, as evaluation does: on a CPU the activations
    of 256 images stay in cache, and a single call on 1,024 runs at half the rate.
    """
    batches = [as_input(images[i : i + batch_size], channels_last=True)
               for i in range(0, min(len(images), 8 * batch_size), batch_size)]
    for x in batches[:2]:  # warm-up: allocator, kernel choice
        model(x)
    rates, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(rates) < 3:
        start = time.perf_counter()
        for x in batches:
            for chunk in x.split(256):
                model(chunk).argmax(1).cpu()  # read the answer back, as a caller would
        rates.append(sum(len(x) for x in batches) / (time.perf_counter() - start))
    return statistics.median(rates)


class _OneImageAtATime(Dataset):
    """MNIST the way torchvision serves it: one float image and its label per __getitem__."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i].unsqueeze(0).float().div(255.0), self.labels[i]


@stock_pytorch()  # PyTorch's own products, layout and dropout, as the example gets them
def baseline_rate(recipe: Recipe, device: torch.device, steps: int) -> float:
    """Training images per second of the plain eager DataLoader loop, same model and optimiser."""
    data = load_split(recipe.train.split, recipe.data.dataset)  # on the CPU, as a Dataset is
    loader = DataLoader(_OneImageAtATime(data.images, data.labels),
                        batch_size=recipe.train.batch_size, shuffle=True, num_workers=0)
    torch.manual_seed(0)
    model = build_model(recipe.model.name, init=recipe.model.init, **recipe.model.args).to(device)
    optimizer = make_optimizer(model, recipe.optimizer, multi_tensor=False)  # PyTorch's default update
    freezer = Freezer(model, recipe.train.freeze_after, steps + 6)  # as the recipe's run freezes
    model.train()
    seen, start = 0, None
    for step, (x, y) in enumerate(loader):
        freezer.freeze_due(step)
        if step == 5:  # the first steps warm up allocators and kernels
            seen, start = 0, time.perf_counter()
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y, reduction=recipe.train.loss_reduction)
        loss.backward()
        optimizer.step()
        loss.item()  # the example logs the loss as it goes
        seen += len(y)
        if step >= steps + 5:
            break
    wait_for(device)
    return seen / (time.perf_counter() - start)


def format_bench(r: BenchResult) -> str:
    med = statistics.median(r.train_seconds)
    acc = statistics.fmean(r.accuracies)
    where = (f"{r.device} ({r.hardware}), "
             f"{'steps replayed from a CUDA graph' if r.cuda_graph else 'eager steps'}"
             if r.device != "cpu" else f"{r.device} ({r.hardware}, {r.threads} threads)")
    if r.compiled:
        where += ", torch.compile"
    lines = [
        f"recipe {r.recipe} on {where}, {r.seeds} seed{'s' if r.seeds != 1 else ''}",
        f"time to accuracy   median {med:.2f} s (min {min(r.train_seconds):.2f}, max "
        f"{max(r.train_seconds):.2f}) for mean test accuracy {100 * acc:.2f}%",
        f"  data loading and model building, not counted above: {r.setup_seconds[0]:.2f} s "
        f"(first run; later runs reuse the loaded data)",
        *([f"  CUDA graph capture, not counted above: {statistics.median(r.capture_seconds):.3f} s "
           f"median"] if r.cuda_graph else []),
        *([_compile_line(r.compile_seconds)] if r.compiled else []),
        f"training           {r.train_images_per_s:,.0f} images/s (median over seeds)",
        f"baseline           {r.baseline_images_per_s:,.0f} images/s (eager loop over DataLoader, "
        f"same model and optimiser)",
        f"speed-up           {r.speedup:.1f}x the baseline",
        f"inference          {r.infer_batch1_images_per_s:,.0f} images/s at batch 1, "
        f"{r.infer_batch1024_images_per_s:,.0f} images/s at batch 1024",
    ]
    return "\n".join(lines)


def _compile_line(seconds: list[float]) -> str:
    first, later = seconds[0], seconds[1:]
    reuse = f"; later runs reuse it: {statistics.median(later):.2f} s median" if later else ""
    return f"  torch.compile, not counted above: {first:.2f} s (first run, with its first step{reuse})"
