"""One-epoch architecture search for the `fast` recipe: validation accuracy and training time.

    python docs/experiments/fast_architectures.py --arch M32-m32 --lr 3e-2 --fused 1 --nhwc 1 --seeds 0 1 2 3

Trains a network described by a dash-separated string on the 55,000-image train split and
prints, per seed, the training time (first step to last, data in memory) and the accuracy on
the 5,000 validation images; with several seeds, the median time and mean accuracy. The test
set is never touched. bf16 autocast and channels-last as in the engine; AdamW, one-cycle.

Layers (each convolution has no bias and is followed by BatchNorm and ReLU):
  cN  3x3 conv, same size          p   2x2 max-pool (ceil)       sN  4x4 stride-2 conv
  tN  3x3 stride-2 conv            qN  4x4 stride-4 conv         oN  6x6 stride-4 conv
  mN  3x3 conv, max-pool, then BatchNorm and ReLU (normalising after the pool)
  MN  4x4 stride-2 conv, max-pool, then BatchNorm and ReLU (fast-cnn's stem)
  PN  the same without padding (x3-P32 sees what x4-M32 sees, with pixels for its padding)
  u   pixel unshuffle 2x2          hN  hidden linear layer        dP  dropout
  xK  crop K pixels from each side (MNIST's digits sit in the middle 20x20)
--opt muon: Muon (orthogonalised momentum) for the convolutions after the stem, AdamW for the rest.
--nhwc 1 flattens in (height, width, channels) order, as fast-cnn does.
--step-ms times training steps on random images instead (and --profile shows where they go).
"""

import argparse
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from mnistlab.data.splits import as_input, load_split

p = argparse.ArgumentParser()
p.add_argument("--arch", default="c16-p-c32-p-c64-p")
p.add_argument("--bs", type=int, default=256)
p.add_argument("--epochs", type=float, default=1.0)
p.add_argument("--lr", type=float, default=5e-3)
p.add_argument("--wd", type=float, default=5e-4)
p.add_argument("--ls", type=float, default=0.1)
p.add_argument("--warm", type=float, default=0.2)
p.add_argument("--final", type=float, default=0.02)
p.add_argument("--seeds", type=int, nargs="+", default=[0])
p.add_argument("--opt", default="adamw")
p.add_argument("--bf16", type=int, default=1)
p.add_argument("--split", default="train")
p.add_argument("--compile", type=int, default=0)
p.add_argument("--fused", type=int, default=0)
p.add_argument("--b1", type=float, default=0.9)
p.add_argument("--b2", type=float, default=0.999)
p.add_argument("--nhwc", type=int, default=0)
p.add_argument("--muon-lr", type=float, default=0.02)
p.add_argument("--muon-momentum", type=float, default=0.9)
p.add_argument("--stem", default="learned", choices=["learned", "pca", "random"],
               help="pca or random: the first convolution fixed, never trained (pca: whitening "
               "filters of the training images' patches and their negatives)")
p.add_argument("--freeze-stem-at", type=float, default=None,
               help="stop training the first convolution and its BatchNorm after this fraction "
               "of the steps, as the engine's freeze_after = { stem = F } does")
p.add_argument("--step-ms", action="store_true",
               help="time training steps on random images instead of training on MNIST")
p.add_argument("--profile", action="store_true", help="with --step-ms: where a step's time goes")
a = p.parse_args()


class Crop(nn.Module):
    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, x):
        return x[:, :, self.k : x.shape[2] - self.k, self.k : x.shape[3] - self.k]


class NHWCFlatten(nn.Module):
    def forward(self, x):
        return x.permute(0, 2, 3, 1).flatten(1) if x.dim() == 4 else x


# conv letters: (kernel, stride, padding, max-pool before BatchNorm, output size from input size)
CONVS = {
    "c": (3, 1, 1, False, lambda s: s),
    "s": (4, 2, 1, False, lambda s: s // 2),
    "v": (5, 1, 0, False, lambda s: s - 4),
    "t": (3, 2, 1, False, lambda s: math.ceil(s / 2)),
    "q": (4, 4, 0, False, lambda s: s // 4),
    "m": (3, 1, 1, True, lambda s: math.ceil(s / 2)),
    "M": (4, 2, 1, True, lambda s: math.ceil(s // 2 / 2)),
    "P": (4, 2, 0, True, lambda s: math.ceil(((s - 4) // 2 + 1) / 2)),
    "o": (6, 4, 1, False, lambda s: (s + 2 - 6) // 4 + 1),
}


def build(arch):
    layers, c, size = [], 1, 28
    for tok in arch.split("-"):
        if tok == "p":
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
            size = math.ceil(size / 2)
        elif tok.startswith("x"):
            k = int(tok[1:])
            layers.append(Crop(k))
            size -= 2 * k
        elif tok == "r":
            layers.append(nn.ReLU())
        elif tok[0] in CONVS:  # a convolution, (a max-pool,) BatchNorm and ReLU
            kernel, stride, padding, pool, out_size = CONVS[tok[0]]
            n = int(tok[1:])
            layers.append(nn.Conv2d(c, n, kernel, stride=stride, padding=padding, bias=False))
            if pool:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            layers += [nn.BatchNorm2d(n), nn.ReLU()]
            c, size = n, out_size(size)
        elif tok.startswith("h"):  # hidden fc
            n = int(tok[1:])
            layers += [NHWCFlatten(), nn.Linear(c * size * size, n), nn.ReLU()]
            c = n
            size = 1
        elif tok.startswith("u"):  # pixel unshuffle
            layers.append(nn.PixelUnshuffle(2))
            c *= 4
            size //= 2
        elif tok.startswith("g"):  # global max pool
            layers.append(nn.AdaptiveMaxPool2d(1))
            size = 1
        elif tok.startswith("d"):
            layers.append(nn.Dropout(float(tok[1:])))
    layers += [NHWCFlatten() if a.nhwc else nn.Flatten(), nn.Linear(c * size * size, 10)]
    return nn.Sequential(*layers)


def orthogonalise(g, steps=5):
    """Newton-Schulz iteration towards the nearest semi-orthogonal matrix (Muon's update)."""
    x = g / (g.norm() + 1e-7)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        A = x @ x.T
        x = 3.4445 * x + (-4.7750 * A + 2.0315 * A @ A) @ x
    return x.T if tall else x


class MuonAdamW:
    """Muon for the hidden convolutions (weights seen as out x (in*k*k)), AdamW for the rest."""

    def __init__(self, hidden, rest, a):
        self.hidden = hidden
        self.bufs = [torch.zeros_like(p) for p in hidden]
        self.adam = torch.optim.AdamW(rest, lr=a.lr, weight_decay=a.wd, foreach=True)
        self.param_groups = self.adam.param_groups + [{"lr": a.lr, "muon": True}]
        self.momentum = a.muon_momentum
        self.scale = a.muon_lr / a.lr

    def zero_grad(self, set_to_none=True):
        self.adam.zero_grad(set_to_none=set_to_none)
        for p in self.hidden:
            p.grad = None

    @torch.no_grad()
    def step(self):
        self.adam.step()
        lr = self.param_groups[-1]["lr"] * self.scale
        for p, buf in zip(self.hidden, self.bufs):
            g = p.grad
            buf.mul_(self.momentum).add_(g)
            g = g.add(buf, alpha=self.momentum).flatten(1)
            o = orthogonalise(g)
            p.add_(o.view_as(p), alpha=-lr * max(1, o.shape[0] / o.shape[1]) ** 0.5)


def stem_parameters(model):
    """The first convolution's weights and its BatchNorm's: fast-cnn's `stem`."""
    modules = list(model.modules())
    conv = next(i for i, m in enumerate(modules) if isinstance(m, nn.Conv2d))
    bn = next(m for m in modules[conv:] if isinstance(m, nn.BatchNorm2d))
    return [modules[conv].weight, bn.weight, bn.bias]


def freeze_stem(model, images):
    """Fix the first convolution's filters and stop training them: with nothing before it to
    train, the backward pass then stops at the BatchNorm after it (no pool or conv backward).
    pca: the principal directions of its patches, scaled to unit variance (whitening), and
    their negatives, so that max-pooling sees both signs; random: kept as initialised."""
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    if a.stem == "pca":
        assert conv.in_channels == 1 and conv.out_channels == 2 * conv.kernel_size[0] ** 2
        x = images
        for m in model:
            if m is conv:
                break
            x = m(x)
        k = conv.kernel_size[0]
        patches = F.unfold(x, k, stride=conv.stride, padding=conv.padding).transpose(1, 2)
        patches = patches.reshape(-1, k * k).double()
        patches = patches - patches.mean(0)
        values, vectors = torch.linalg.eigh(patches.T @ patches / len(patches))
        filters = (vectors.T / (values + 1e-2).sqrt()[:, None]).float().view(-1, 1, k, k)
        with torch.no_grad():
            conv.weight.copy_(torch.cat([filters, -filters]))
    conv.weight.requires_grad_(False)


def train_step(fwd, opt, x, y):
    """One step as the engine takes it on the CPU: bf16 autocast, fp32 loss, AdamW."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(a.bf16)):
        out = fwd(x)
    loss = F.cross_entropy(out.float(), y, label_smoothing=a.ls)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def time_steps():
    """Milliseconds a training step takes (the best of 7 rounds of 50 steps, on random images,
    after 20 to warm up); with --profile, torch.profiler's table by operator and input shape."""
    torch.manual_seed(0)
    model = build(a.arch).to(memory_format=torch.channels_last)
    x = torch.rand(a.bs, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    if a.stem != "learned":
        freeze_stem(model, x)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=a.lr, fused=True)
    y = torch.randint(0, 10, (a.bs,))

    def step():
        train_step(model, opt, x, y)

    for _ in range(20):
        step()
    rounds = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(50):
            step()
        rounds.append((time.perf_counter() - start) / 50 * 1000)
    print(f"{a.arch} batch {a.bs}: {min(rounds):.2f} ms a step (best of 7 rounds of 50)")
    if a.profile:
        with torch.profiler.profile(record_shapes=True) as prof:
            for _ in range(100):
                step()
        table = prof.key_averages(group_by_input_shape=True)
        print(table.table(sort_by="self_cpu_time_total", row_limit=20))


if a.step_ms:
    time_steps()
    raise SystemExit

train = load_split(a.split, "mnist", None, torch.device("cpu"))
val = load_split("validation", "mnist", None, torch.device("cpu"))
n = len(train.labels)
steps = int(round(a.epochs * n / a.bs))
results = []
for seed in a.seeds:
    torch.manual_seed(seed)
    model = build(a.arch).to(memory_format=torch.channels_last)
    if a.stem != "learned":  # timed as training: the first 5,000 images' patches
        t_stem = time.perf_counter()
        freeze_stem(model, as_input(train.images[:5000]))
        t_stem = time.perf_counter() - t_stem
    params = sum(p.numel() for p in model.parameters())
    if a.opt == "muon":
        hidden = [p for p in model.parameters() if p.dim() == 4][1:]
        rest = [p for p in model.parameters() if all(p is not h for h in hidden)]
        opt = MuonAdamW(hidden, rest, a)
    elif a.opt == "adamw":
        opt = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad],
            lr=a.lr,
            betas=(a.b1, a.b2),
            weight_decay=a.wd,
            **({"fused": True} if a.fused else {"foreach": True}),
        )
    else:
        opt = torch.optim.SGD(
            model.parameters(),
            lr=a.lr,
            momentum=0.9,
            nesterov=True,
            weight_decay=a.wd,
            **({"fused": True} if a.fused else {"foreach": True}),
        )
    fwd = torch.compile(model) if a.compile else model
    g = torch.Generator().manual_seed(seed)
    perm = torch.cat([torch.randperm(n, generator=g) for _ in range(math.ceil(a.epochs) + 1)])
    warm = int(a.warm * steps)
    if a.compile:  # warm-up compile on a throwaway batch (not timed); restore weights
        sd = {k: v.clone() for k, v in model.state_dict().items()}
        x = as_input(train.images[: a.bs], channels_last=True)
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(a.bf16)):
            out = fwd(x)
        F.cross_entropy(out.float(), train.labels[: a.bs]).backward()
        model.zero_grad(set_to_none=True)
        model.load_state_dict(sd)
        print(f"compile {time.perf_counter() - t0:.1f}s")
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        idx = perm[step * a.bs : (step + 1) * a.bs]
        x = as_input(train.images[idx], channels_last=True)
        y = train.labels[idx]
        f = (
            (step + 1) / warm
            if step < warm
            else 1 - (1 - a.final) * (step - warm) / max(1, steps - warm)
        )
        for gr in opt.param_groups:
            gr["lr"] = a.lr * f
        if a.freeze_stem_at is not None and step == int(a.freeze_stem_at * steps):
            for p_ in stem_parameters(model):  # as the engine's freeze_after = { stem = F }
                p_.requires_grad_(False)
                p_.grad = None
        train_step(fwd, opt, x, y)
    dt = time.perf_counter() - t0 + (t_stem if a.stem != "learned" else 0)
    model.eval()
    correct = 0
    with torch.inference_mode():
        for s in range(0, len(val.labels), 500):
            correct += (
                (
                    model(as_input(val.images[s : s + 500], channels_last=True)).argmax(1)
                    == val.labels[s : s + 500]
                )
                .sum()
                .item()
            )
    acc = correct / len(val.labels)
    results.append((dt, acc))
    print(
        f"seed {seed} {a.arch} params {params} steps {steps} time {dt:.2f}s {steps * a.bs / dt:.0f} img/s acc {100 * acc:.2f}",
        flush=True,
    )
if len(results) > 1:
    print(
        f"MEDIAN time {statistics.median(r[0] for r in results):.2f}s mean acc {100 * statistics.mean(r[1] for r in results):.3f} min {100 * min(r[1] for r in results):.2f}"
    )
