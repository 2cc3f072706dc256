"""Optimisers and learning-rate schedules built from a recipe."""

from __future__ import annotations

import functools
import math

import torch
from torch import nn
from torch.optim import optimizer as torch_optimizer

from mnistlab.recipebook.recipe import OptimizerSection, ScheduleSection
from mnistlab.training.compiling import compile_step_part


class KerasRMSprop(torch.optim.Optimizer):
    """RMSprop as Keras computes it.

    PyTorch's RMSprop divides by sqrt(v) + eps with rho 0.99 and eps 1e-8 by default; Keras
    divides by sqrt(v + eps) with rho 0.9 and eps 1e-7. The Keras tutorial used Keras' defaults, so a
    faithful reproduction needs Keras' arithmetic.
    """

    def __init__(self, params, lr: float = 1e-3, rho: float = 0.9, eps: float = 1e-7):
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            velocities = []
            for p in params:
                state = self.state[p]
                if not state:
                    state["velocity"] = torch.zeros_like(p)
                velocities.append(state["velocity"])
            rho, eps = group["rho"], group["eps"]
            torch._foreach_mul_(velocities, rho)
            torch._foreach_addcmul_(velocities, grads, grads, value=1 - rho)
            denominators = torch._foreach_add(velocities, eps)
            torch._foreach_sqrt_(denominators)
            torch._foreach_addcdiv_(params, grads, denominators, value=-group["lr"])


class _DirectFusedStep:
    """PyTorch's fused Adam, AdamW or SGD, its kernel called directly on the CPU once the state
    exists, and zero_grad without torch.optim's profiler scope.

    The update itself is one fused kernel; around it, torch.optim's step spends Python on hooks,
    a profiler scope, checks over every weight and grouping tensors by device: about 0.1 ms a
    step for Adam, 4% of the strided CNN's 2.5 ms step on a 2-core CPU, and for SGD several times
    what its kernel takes on softmax regression's weights. Where nothing of that applies (every
    weight on the CPU with a gradient and a state, no AMSGrad, maximize or closure) this step
    makes the same calls PyTorch's would. Anything else goes through torch.optim
    (tests/test_batches_optim.py checks both agree bit for bit).
    """

    @torch.no_grad()
    def step(self, closure=None):
        groups = self._direct_groups() if closure is None and not _has_step_hooks(self) else None
        if groups is None:
            return self._torch_step(closure)
        for group, params, states in groups:
            self._fused_update(group, params, states)
        return None

    # torch.optim wraps each optimiser class's step in a profiler scope that runs the step hooks:
    # 0.08 ms a call on 2 CPU cores, where the whole step takes 2.5 ms for the strided CNN. The
    # direct step goes without it; a step with hooks, or one the direct path cannot take, goes
    # through torch.optim's step, wrapped.
    step.hooked = True

    @torch.optim.Optimizer.profile_hook_step
    def _torch_step(self, closure=None):
        step = super().step
        if getattr(step, "hooked", False):  # an instance of torch.optim's class wrapped it too:
            step = functools.partial(step.__wrapped__, self)  # the hooks must run once
        return step(closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        if not set_to_none:
            super().zero_grad(set_to_none=False)
            return
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def _direct_groups(self):
        groups = []
        for group in self.param_groups:
            if (not group["fused"] or group.get("amsgrad") or group["maximize"]
                    or group.get("capturable") or group["differentiable"]
                    or isinstance(group["lr"], torch.Tensor)):
                return None
            params = group["params"]
            states = [self.state.get(p) for p in params]
            if not all(p.grad is not None and p.device.type == "cpu" and not p.grad.is_sparse
                       and self._has_state(group, state) for p, state in zip(params, states)):
                return None  # the first step (no state yet), a frozen weight, another device
            groups.append((group, params, states))
        return groups


class _DirectAdam(_DirectFusedStep):
    @staticmethod
    def _has_state(group: dict, state: dict | None) -> bool:
        return bool(state) and "exp_avg" in state

    def _fused_update(self, group: dict, params: list, states: list[dict]) -> None:
        steps = [state["step"] for state in states]
        torch._foreach_add_(steps, 1)
        beta1, beta2 = group["betas"]
        kernel = torch._fused_adamw_ if _decoupled(self, group) else torch._fused_adam_
        kernel(params, [p.grad for p in params], [state["exp_avg"] for state in states],
               [state["exp_avg_sq"] for state in states], [], steps, amsgrad=False,
               lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
               eps=group["eps"], maximize=False, grad_scale=None, found_inf=None)


def _has_step_hooks(optimizer: torch.optim.Optimizer) -> bool:
    """Whether step hooks are registered, on this optimiser or on all (torch.optim's globals)."""
    return bool(optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks
                or torch_optimizer._global_optimizer_pre_hooks
                or torch_optimizer._global_optimizer_post_hooks)


def _decoupled(optimizer: torch.optim.Optimizer, group: dict) -> bool:
    """Whether a group's weight decay is AdamW's (decoupled) rather than Adam's (in the gradient)."""
    return isinstance(optimizer, torch.optim.AdamW) or bool(group.get("decoupled_weight_decay"))


class _Adam(_DirectAdam, torch.optim.Adam):
    pass


class _AdamW(_DirectAdam, torch.optim.AdamW):
    pass


class _SGD(_DirectFusedStep, torch.optim.SGD):
    @staticmethod
    def _has_state(group: dict, state: dict | None) -> bool:
        # without momentum SGD keeps no state; with it, the buffers made by the first step
        return group["momentum"] == 0 or (bool(state) and state.get("momentum_buffer") is not None)

    def _fused_update(self, group: dict, params: list, states: list[dict]) -> None:
        momentum = group["momentum"]
        buffers = [] if momentum == 0 else [state["momentum_buffer"] for state in states]
        torch._fused_sgd_(params, [p.grad for p in params], buffers,
                          weight_decay=group["weight_decay"], momentum=momentum, lr=group["lr"],
                          dampening=group["dampening"], nesterov=group["nesterov"],
                          maximize=False, is_first_step=False, grad_scale=None, found_inf=None)


def make_optimizer(model: nn.Module, spec: OptimizerSection, *, multi_tensor: bool = True,
                   capturable: bool = False,
                   groups: list[list[nn.Parameter]] | None = None) -> torch.optim.Optimizer:
    """The recipe's optimiser; `multi_tensor=False` gives PyTorch's default per-tensor loop, and
    `capturable=True` an Adam or AdamW that a CUDA graph can replay (training/step.py). `groups`
    splits the trainable weights into parameter groups (Freezer.weight_groups); one by default."""
    groups = groups or [[p for p in model.parameters() if p.requires_grad]]
    params = [{"params": group} for group in groups]
    # One fused kernel for the whole update, on a GPU and on the CPU: for `fast` on a 2-core CPU,
    # 0.12 ms an AdamW step against 0.47 ms for the multi-tensor (foreach) update. (A resumed
    # run once ended differently with it: restored moments lacked their parameter's
    # channels-last layout, which match_state_layout now gives them; tests/test_train.py.)
    fast = {"fused": True} if multi_tensor else {}
    if spec.name == "sgd":
        return _SGD(
            params, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov,
            weight_decay=spec.weight_decay, **fast,
        )
    if spec.name in ("adam", "adamw"):
        cls = _Adam if spec.name == "adam" else _AdamW
        return cls(
            params, lr=spec.lr, betas=tuple(spec.betas), eps=spec.eps,
            weight_decay=spec.weight_decay, **fast, **({"capturable": True} if capturable else {}),
        )
    if spec.name == "keras-rmsprop":
        return KerasRMSprop(params, lr=spec.lr, rho=spec.rho, eps=spec.eps)
    raise AssertionError(f"unhandled optimizer {spec.name}")  # recipes validate the name


def match_state_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give restored moment tensors their parameter's memory layout (channels-last, say): a
    checkpoint stores them contiguous, and the fused GPU update refuses mixed layouts."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.shape == p.shape and value.stride() != p.stride():
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def lr_factor(spec: ScheduleSection, step: int, total_steps: int) -> float:
    """The learning rate at `step` (0-based) as a fraction of the recipe's peak rate.

    A pure function of the step, so a resumed run needs no scheduler state.
    """
    if spec.name == "constant":
        return 1.0
    warmup = int(spec.warmup * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    if spec.name == "onecycle":
        return 1.0 - (1.0 - spec.final) * progress
    if spec.name == "cosine":
        return spec.final + (1.0 - spec.final) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise AssertionError(f"unhandled schedule {spec.name}")


@torch.no_grad()
def compiled_adam_step(optimizer: torch.optim.Optimizer) -> None:
    """Adam's or AdamW's step through torch.compile, with each group's learning rate a tensor on
    the device (training/step.py's CUDA graph).

    PyTorch's fused kernel hands each block of threads 65,536 values, so a small network's update
    runs on a handful of blocks: on an H100, 15 us a group for `fast`'s 95,000 weights, most of
    its update's time. Compiled, the same arithmetic spreads over the whole GPU, and groups that
    differ only in their learning rate (training/freeze.py's) update in one call. The state is
    the one torch.optim keeps (made here on the first step, as its capturable step makes it), so
    an eager step, a checkpoint or a resumed run sees no difference.
    """
    calls: dict[tuple, tuple[list, list]] = {}
    for group in optimizer.param_groups:
        settings = (tuple(group["betas"]), group["eps"], group["weight_decay"],
                    _decoupled(optimizer, group))
        params, lrs = calls.setdefault(settings, ([], []))
        for p in group["params"]:
            if p.grad is not None:
                params.append(p)
                lrs.append(group["lr"])
    for ((beta1, beta2), eps, weight_decay, decoupled), (params, lrs) in calls.items():
        if not params:
            continue
        states = [_adam_state(optimizer, p) for p in params]
        _compiled_adam_update()(
            params, [p.grad for p in params], [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states], [s["step"] for s in states], lrs,
            beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, decoupled=decoupled)


def _adam_state(optimizer: torch.optim.Optimizer, p: torch.Tensor) -> dict:
    state = optimizer.state[p]
    if not state:  # as torch.optim's capturable Adam makes it
        state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return state


@functools.cache
def _compiled_adam_update():
    """Made once: a later model of the same shapes (the next seed's) reuses what compiled."""
    return compile_step_part(_adam_update)


def _adam_update(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
                 exp_avg_sqs: list[torch.Tensor], steps: list[torch.Tensor], lrs: list[torch.Tensor],
                 *, beta1: float, beta2: float, eps: float, weight_decay: float,
                 decoupled: bool) -> None:
    """Adam (Kingma and Ba), or AdamW's decoupled weight decay (Loshchilov and Hutter), in
    foreach operators, which torch.compile turns into one kernel over every weight."""
    torch._foreach_add_(steps, 1)
    if weight_decay and decoupled:
        torch._foreach_mul_(params, [1 - lr * weight_decay for lr in lrs])
    elif weight_decay:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
    # the bias corrections, from each weight's step count on the device
    unbiased_first = [lr / (1 - beta1 ** step) for lr, step in zip(lrs, steps)]
    root_second = [(1 - beta2 ** step).sqrt() for step in steps]
    denominators = torch._foreach_div(torch._foreach_sqrt(exp_avg_sqs), root_second)
    torch._foreach_add_(denominators, eps)
    updates = torch._foreach_div(exp_avgs, denominators)
    torch._foreach_mul_(updates, unbiased_first)
    torch._foreach_sub_(params, updates)
