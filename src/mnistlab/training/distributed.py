"""Data parallel training over several processes, through PyTorch's own engine.

`torchrun --nproc-per-node N -m mnistlab train ...` starts N processes; each joins the process
group (gloo on CPUs, NCCL on GPUs), builds the same model from the same seed, and takes every
N-th image of each batch. DistributedDataParallel averages the gradients, so the N replicas
take identical steps: the effective batch is the recipe's batch size, split across processes,
and the learning rate is the recipe's, unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from mnistlab.errors import MnistlabError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def join(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group that torchrun describes in the environment, if there is one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(), device
    if device.type not in ("cpu", "cuda"):  # gloo moves CPU tensors only, NCCL CUDA ones
        raise MnistlabError(f"--device {device}: training over several processes (torchrun) "
                            "runs on CPUs or CUDA GPUs only (use --device cpu or cuda)")
    if device.type == "cuda":  # one GPU per process
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size()), device


def shard(indices: torch.Tensor, world: World) -> torch.Tensor:
    """This process's share of a batch: every world.size-th image, from its rank on."""
    return indices if world.size == 1 else indices[world.rank :: world.size]


def total(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """The sum of a tensor over all processes (the tensor itself in a single process)."""
    if world.size > 1:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
    return tensor


def any_process(flag: bool, world: World, device: torch.device) -> bool:
    """Whether any process raised `flag`: all of them must stop at the same step."""
    if world.size == 1:
        return flag
    return bool(total(torch.tensor(int(flag), device=device), world))


def share_buffers(model: nn.Module, world: World) -> None:
    """Give every process the first process's buffers (batch norm's running statistics).

    Each process normalises its share of a batch by that share's own statistics, so its running
    averages drift from the others' between the broadcasts DistributedDataParallel makes before
    each forward pass; after the last step, this one makes them equal again.
    """
    if world.size == 1:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)


def replica_difference(model: nn.Module, world: World) -> float:
    """The largest difference between this process's weights and the first process's."""
    if world.size == 1:
        return 0.0
    worst = torch.zeros((), dtype=torch.float64, device=next(model.parameters()).device)
    for tensor in model.state_dict().values():
        reference = tensor.detach().clone()
        dist.broadcast(reference, src=0)
        if tensor.is_floating_point():
            worst = torch.maximum(worst, (tensor.detach() - reference).abs().max().double())
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst)
