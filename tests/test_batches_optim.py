import copy

import pytest
import torch

from mnistlab.recipebook.recipe import OptimizerSection, ScheduleSection
from mnistlab.training.batches import BatchPlan
from mnistlab.training.optim import KerasRMSprop, compiled_adam_step, lr_factor, make_optimizer
from mnistlab.training.step import DeviceFeed, fed_batch


def test_epochs_cover_every_example_once_with_a_smaller_last_batch():
    plan = BatchPlan(10, 4, seed=3, epochs=2)
    assert (plan.steps_per_epoch, plan.total_steps) == (3, 6)
    batches = [plan.indices(s) for s in range(6)]
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2]
    for epoch in range(2):
        seen = torch.cat(batches[3 * epoch : 3 * epoch + 3])
        assert sorted(seen.tolist()) == list(range(10))
    assert not torch.equal(torch.cat(batches[:3]), torch.cat(batches[3:]))  # reshuffled
    assert [plan.epoch_ends(s) for s in range(6)] == [False, False, True, False, False, True]


def test_a_device_feed_gives_each_step_its_own_batch_and_rates(monkeypatch):
    # what a CUDA graph's replayed step reads (training/step.py), run eagerly on the CPU: chunks
    # of 4 steps, so the 9 steps upload three times; every third batch is short and trains
    # outside the graph; the second parameter group freezes after step 4
    monkeypatch.setattr(DeviceFeed, "CHUNK", 4)
    plan = BatchPlan(10, 4, seed=3, epochs=3)
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1).expand(10, 28, 28).contiguous()
    labels = torch.arange(10) % 3

    def feed(step):
        return plan.indices(step), 0.01 * (step + 1)

    device_feed = DeviceFeed(feed, steps=plan.total_steps, batch_size=4, groups=2,
                             device=torch.device("cpu"))
    for step in range(plan.total_steps):
        indices, lr = device_feed.batch(step)
        assert torch.equal(indices, plan.indices(step)) and lr == 0.01 * (step + 1)
        if step == 5:
            device_feed.gates[1].zero_()
        if len(indices) < 4:
            device_feed.skip(lr)
        else:
            x, y = fed_batch(images, labels, *device_feed.tensors())
            assert torch.equal(y, labels[indices])
            assert torch.equal((x[:, 0, 0, 0] * 255).round().long(), indices)
        assert device_feed.lrs.tolist() == pytest.approx([lr, lr if step < 5 else 0.0])
    assert device_feed.slot.item() == plan.total_steps - 8  # the last chunk's first step was 8


def test_steps_stream_full_batches_across_epochs_like_next_batch():
    plan = BatchPlan(10, 4, seed=3, steps=5)
    batches = [plan.indices(s) for s in range(5)]
    assert all(len(b) == 4 for b in batches)
    stream = torch.cat(batches)  # 20 positions = exactly two shuffled epochs
    assert sorted(stream[:10].tolist()) == list(range(10))
    assert sorted(stream[10:].tolist()) == list(range(10))


def test_order_depends_only_on_seed_and_step():
    a = BatchPlan(100, 7, seed=1, steps=50)
    b = BatchPlan(100, 7, seed=1, steps=50)
    late = b.indices(40)  # asked out of order, as a resumed run does
    assert torch.equal(late, a.indices(40))
    assert not torch.equal(BatchPlan(100, 7, seed=2, steps=50).indices(0), a.indices(0))


def test_keras_rmsprop_follows_keras_arithmetic():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = KerasRMSprop([w], lr=0.1, rho=0.9, eps=1e-7)
    v = torch.zeros(2)
    expected = w.detach().clone()
    for grad in (torch.tensor([0.5, -1.0]), torch.tensor([0.25, 3.0])):
        w.grad = grad.clone()
        opt.step()
        v = 0.9 * v + 0.1 * grad**2
        expected -= 0.1 * grad / torch.sqrt(v + 1e-7)
        assert torch.allclose(w.detach(), expected, atol=1e-6)


def test_schedules():
    constant = ScheduleSection()
    assert lr_factor(constant, 0, 100) == lr_factor(constant, 99, 100) == 1.0
    onecycle = ScheduleSection(name="onecycle", warmup=0.2, final=0.1)
    assert lr_factor(onecycle, 0, 100) == 1 / 20
    assert lr_factor(onecycle, 19, 100) == 1.0
    assert abs(lr_factor(onecycle, 99, 100) - (0.1 + 0.9 / 80)) < 1e-9
    cosine = ScheduleSection(name="cosine", final=0.0)
    assert lr_factor(cosine, 0, 100) == 1.0 and lr_factor(cosine, 50, 100) == 0.5


TORCH_OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


@pytest.mark.parametrize("spec", [
    OptimizerSection(name="adam", lr=1e-2),
    OptimizerSection(name="adam", lr=1e-2, weight_decay=1e-3),
    OptimizerSection(name="adamw", lr=1e-2, weight_decay=0.05),
    OptimizerSection(name="sgd", lr=1e-2),
    OptimizerSection(name="sgd", lr=1e-2, momentum=0.9, nesterov=True, weight_decay=1e-3),
], ids=["adam", "adam-decay", "adamw", "sgd", "sgd-nesterov"])
def test_direct_fused_step_matches_torch_optim_bit_for_bit(spec):
    """make_optimizer's Adam, AdamW and SGD call the fused kernel directly once their state
    exists: the weights and the state must be exactly torch.optim's, a frozen weight included."""
    torch.manual_seed(0)
    ours = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3))
    theirs = copy.deepcopy(ours)
    mine = make_optimizer(ours, spec)
    options = ({"momentum": spec.momentum, "nesterov": spec.nesterov} if spec.name == "sgd"
               else {"betas": tuple(spec.betas), "eps": spec.eps})
    reference = TORCH_OPTIMIZERS[spec.name](theirs.parameters(), lr=spec.lr,
                                            weight_decay=spec.weight_decay, fused=True, **options)
    for step in range(6):
        x = torch.randn(4, 6)
        for model, optimizer in ((ours, mine), (theirs, reference)):
            if step == 4:  # a weight stops training: its gradient is None from now on
                model[0].weight.requires_grad_(False)
                model[0].weight.grad = None
            optimizer.zero_grad(set_to_none=True)
            assert all(p.grad is None for p in model.parameters())
            model(x).square().sum().backward()
            optimizer.step()
        # steps 1 to 3 went direct (SGD without momentum from step 0: it keeps no state); from
        # step 4 a weight has no gradient: torch.optim's step
        assert (mine._direct_groups() is not None) == (step < 4)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(mine.state.values(), reference.state.values()):
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_step_hooks_run_and_see_torch_optims_update():
    """The direct step leaves out torch.optim's profiler scope and hooks; a registered hook
    sends the step through torch.optim, which runs it, with the same update."""
    torch.manual_seed(0)
    ours = torch.nn.Linear(6, 3)
    theirs = copy.deepcopy(ours)
    hooked, plain = (make_optimizer(m, OptimizerSection(name="adam", lr=1e-2)) for m in (ours, theirs))
    calls = []
    hooked.register_step_pre_hook(lambda optimizer, args, kwargs: calls.append("pre"))
    hooked.register_step_post_hook(lambda optimizer, args, kwargs: calls.append("post"))
    for _ in range(3):
        x = torch.randn(4, 6)
        for model, optimizer in ((ours, hooked), (theirs, plain)):
            optimizer.zero_grad()
            model(x).square().sum().backward()
            optimizer.step()
    assert calls == ["pre", "post"] * 3
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters()))


@pytest.mark.parametrize("spec", [
    OptimizerSection(name="adam", lr=1e-2, weight_decay=1e-3),
    OptimizerSection(name="adamw", lr=4e-2, weight_decay=5e-4),
], ids=["adam-decay", "adamw"])
def test_compiled_adam_step_follows_torch_optim(spec):
    """The compiled update (a CUDA graph's, under --compile) computes torch.optim's Adam and
    AdamW, with the learning rate a tensor, in two parameter groups (as freezing makes them),
    and leaves a state torch.optim's own step goes on from."""
    torch.manual_seed(0)
    ours = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 36, 3))
    ours = ours.to(memory_format=torch.channels_last)
    theirs = copy.deepcopy(ours)
    groups = [list(ours[0].parameters()), list(ours[2].parameters())]
    mine = make_optimizer(ours, spec, groups=groups)
    for group in mine.param_groups:
        group["lr"] = torch.tensor(spec.lr)
    reference = TORCH_OPTIMIZERS[spec.name](
        [{"params": list(theirs[0].parameters())}, {"params": list(theirs[2].parameters())}],
        lr=spec.lr, weight_decay=spec.weight_decay, betas=tuple(spec.betas), eps=spec.eps)
    for step in range(5):
        x = torch.randn(8, 1, 8, 8)
        for model, optimizer in ((ours, mine), (theirs, reference)):
            optimizer.zero_grad(set_to_none=True)
            model(x).square().sum().backward()
            # the last step is torch.optim's on both sides, from the compiled steps' state
            compiled_adam_step(optimizer) if optimizer is mine and step < 4 else optimizer.step()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # a wrong update is off by ~lr
    for a, b in zip(mine.state.values(), reference.state.values()):
        assert a.keys() == b.keys() and a["step"].item() == b["step"].item() == 5
        torch.testing.assert_close(a["exp_avg_sq"], b["exp_avg_sq"], rtol=1e-4, atol=1e-8)
