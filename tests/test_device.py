"""Device choice on machines this suite does not run on: a CUDA GPU, Apple's MPS, Intel's XPU.

Every accelerator here is FAKED: pytest's monkeypatch replaces what PyTorch answers about the
machine (`torch.cuda.is_available`, `torch.accelerator.is_available`, `current_accelerator`,
`device_count`, the device modules' `is_bf16_supported`, ...), and nothing runs on the faked
device: these tests check the choices mnistlab makes from PyTorch's answers, on a CPU. The
choices made on a real CUDA GPU are tests/test_gpu.py's.
"""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from mnistlab import bench, device
from mnistlab.device import resolve_device, sum_dtype, wait_for
from mnistlab.errors import MnistlabError
from mnistlab.models import build_model
from mnistlab.training import distributed, state
from mnistlab.training.engine import use_bf16
from mnistlab.training.step import loss_and_logits

needs_accelerator_module = pytest.mark.skipif(not hasattr(torch, "accelerator"),
                                              reason="torch.accelerator is new in PyTorch 2.6")


def fake_machine(monkeypatch, *, cuda: int = 0, accelerator: str | None = None,
                 count: int = 1) -> None:
    """Make PyTorch report `cuda` CUDA GPUs, and `count` devices of the accelerator type
    `accelerator` through torch.accelerator (a CUDA GPU is PyTorch's accelerator too)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    if cuda:
        accelerator, count = "cuda", cuda
    if hasattr(torch, "accelerator"):
        monkeypatch.setattr(torch.accelerator, "is_available", lambda: accelerator is not None)
        monkeypatch.setattr(torch.accelerator, "current_accelerator",
                            lambda *a: SimpleNamespace(type=accelerator) if accelerator else None)
        monkeypatch.setattr(torch.accelerator, "device_count",
                            lambda: count if accelerator else 0)


def refusal(name: str) -> str:
    with pytest.raises(MnistlabError) as refused:
        resolve_device(name)
    message = str(refused.value)
    assert "\n" not in message and message.startswith("--device ")
    return message


# ---- auto ------------------------------------------------------------------------------------


def test_auto_is_a_cuda_gpu_where_there_is_one(monkeypatch):
    """CUDA faked present (2 GPUs)."""
    fake_machine(monkeypatch, cuda=2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device() == torch.device("cuda")


@needs_accelerator_module
@pytest.mark.parametrize("kind", ["mps", "xpu"])
def test_auto_is_the_other_accelerator_pytorch_reports(monkeypatch, kind):
    """No CUDA; an MPS or XPU device faked present through torch.accelerator."""
    fake_machine(monkeypatch, accelerator=kind)
    assert resolve_device("auto") == torch.device(kind)


def test_auto_is_the_cpu_where_there_is_no_accelerator(monkeypatch):
    """No CUDA and no other accelerator (faked absent, so that this holds on a GPU machine too)."""
    fake_machine(monkeypatch)
    assert resolve_device("auto") == torch.device("cpu")


def test_auto_without_torch_accelerator_is_cuda_or_the_cpu(monkeypatch):
    """PyTorch before 2.6, faked by removing torch.accelerator: an MPS faked present through
    torch.mps is not chosen by auto, but named, it is taken."""
    fake_machine(monkeypatch)
    monkeypatch.delattr(torch, "accelerator", raising=False)
    monkeypatch.setattr(torch.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.mps, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("mps") == torch.device("mps")
    monkeypatch.setattr(torch.mps, "is_available", lambda: False)
    assert refusal("mps") == "--device mps: no MPS device is available here (use --device cpu or auto)"


# ---- names -----------------------------------------------------------------------------------


@needs_accelerator_module
@pytest.mark.parametrize("name", ["mps", "mps:0"])
def test_mps_is_taken_where_pytorch_reports_it(monkeypatch, name):
    """An MPS device faked present."""
    fake_machine(monkeypatch, accelerator="mps")
    assert resolve_device(name) == torch.device(name)
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["mps", "mps:0", "xpu", "xpu:1"])
def test_an_absent_accelerator_is_refused_in_one_line(monkeypatch, name):
    """A machine faked with a CUDA GPU and nothing else: MPS and XPU are absent."""
    fake_machine(monkeypatch, cuda=1)
    kind = name.partition(":")[0]
    assert refusal(name) == (f"--device {name}: no {kind.upper()} device is available here "
                             "(use --device cpu or auto)")


def test_cuda_is_refused_where_there_is_no_gpu(monkeypatch):
    """CUDA faked absent; an XPU faked present does not stand in for it."""
    fake_machine(monkeypatch, accelerator="xpu")
    assert refusal("cuda") == "--device cuda: no CUDA GPU is available here (use --device cpu or auto)"
    assert refusal("cuda:0").startswith("--device cuda:0: no CUDA GPU is available here")


@needs_accelerator_module
def test_an_index_past_the_devices_says_how_many_there_are(monkeypatch):
    """Two XPUs faked present, then one, then two CUDA GPUs."""
    fake_machine(monkeypatch, accelerator="xpu", count=2)
    assert resolve_device("xpu:1") == torch.device("xpu", 1)
    assert refusal("xpu:3") == "--device xpu:3: this machine has 2 XPU devices, xpu:0 to xpu:1"
    assert refusal("xpu:2").startswith("--device xpu:2: this machine has 2 XPU devices")
    fake_machine(monkeypatch, accelerator="xpu", count=1)
    assert refusal("xpu:1") == "--device xpu:1: this machine has 1 XPU device, xpu:0"
    fake_machine(monkeypatch, cuda=2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert refusal("cuda:2") == "--device cuda:2: this machine has 2 CUDA GPUs, cuda:0 to cuda:1"


@needs_accelerator_module
def test_a_plug_in_accelerator_is_taken_when_pytorch_reports_it(monkeypatch):
    """A plug-in's accelerator (Ascend's npu) faked as PyTorch's current one; without it, npu
    is no name --device knows."""
    fake_machine(monkeypatch, accelerator="npu", count=2)
    monkeypatch.setattr(torch, "device", lambda name: name)  # this PyTorch has no npu to parse
    assert resolve_device("npu:1") == "npu:1"
    assert resolve_device("auto") == "npu"
    fake_machine(monkeypatch)
    assert refusal("npu").startswith("--device npu: expected auto, cpu, cuda")


@pytest.mark.parametrize("name, message", [
    ("tpu", "--device tpu: expected auto, cpu, cuda, mps, xpu, hpu or mtia"),
    ("MPS", "--device MPS: expected auto, cpu, cuda"),
    ("meta", "--device meta: expected auto, cpu"),  # a PyTorch device, but not one to train on
    ("cpu:0", "--device cpu:0: expected auto, cpu"),
    ("", "--device : expected auto, cpu"),
    (" cuda", "--device  cuda: expected auto, cpu"),
    ("x" * 1000, f"--device {'x' * 40}: expected auto, cpu"),
    ("cuda:abc", "--device cuda:abc: a GPU is cuda, or cuda:N for the N-th (cuda:0, cuda:1, ...)"),
    ("cuda:-1", "--device cuda:-1: a GPU is cuda, or cuda:N"),
    ("cuda:99999", "--device cuda:99999: a GPU is cuda, or cuda:N"),
    ("mps:", "--device mps:: expected mps, or mps:N for the N-th (mps:0, mps:1, ...)"),
    ("xpu:1:2", "--device xpu:1:2: expected xpu, or xpu:N"),
    ("xpu:one", "--device xpu:one: expected xpu, or xpu:N"),
])
def test_wrong_names_are_refused_in_one_line(monkeypatch, name, message):
    """Refused whatever the machine has: every accelerator is faked present in turn."""
    for machine in [dict(cuda=2), dict(accelerator="mps"), dict(accelerator="xpu", count=4), {}]:
        fake_machine(monkeypatch, **machine)
        assert refusal(name).startswith(message), machine


# ---- waiting, sums ---------------------------------------------------------------------------


def test_wait_for_synchronises_the_accelerator_and_not_the_cpu(monkeypatch):
    """The synchronising calls are faked: recorded, not run."""
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: calls.append(("cuda", d)))
    if hasattr(torch, "accelerator"):
        monkeypatch.setattr(torch.accelerator, "synchronize", lambda d=None: calls.append(("acc", d)))
    else:
        monkeypatch.setattr(torch.mps, "synchronize", lambda: calls.append(("acc", None)))
    wait_for(torch.device("cpu"))
    assert calls == []
    wait_for(torch.device("cuda", 1))
    wait_for(torch.device("mps"))
    assert [kind for kind, _ in calls] == ["cuda", "acc"] and calls[0][1] == torch.device("cuda", 1)


def test_sums_are_float64_where_the_device_has_it():
    """MPS has no float64: sums on another accelerator are float32 (no device is used)."""
    assert sum_dtype(torch.device("cpu")) == sum_dtype(torch.device("cuda", 0)) == torch.float64
    assert sum_dtype(torch.device("mps")) == sum_dtype(torch.device("xpu", 1)) == torch.float32


# ---- bf16 ------------------------------------------------------------------------------------


def fake_bf16(monkeypatch, kind: str, *, native: bool, emulated: bool) -> None:
    """The XPU module's answer faked: bf16 `native` in hardware, or `emulated` only."""
    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return native or (emulated and including_emulation)
    monkeypatch.setattr(getattr(torch, kind), "is_bf16_supported", is_bf16_supported)


@pytest.mark.parametrize("native, emulated, expected", [(True, True, True), (False, True, False),
                                                        (False, False, False)])
def test_auto_precision_on_an_xpu_follows_pytorchs_answer(monkeypatch, native, emulated, expected):
    """An XPU faked to compute bf16 natively, by emulation only, or not at all: emulation is
    slower than float32, so only native bf16 counts."""
    fake_bf16(monkeypatch, "xpu", native=native, emulated=emulated)
    assert use_bf16("auto", torch.device("xpu")) is expected
    assert use_bf16("fp32", torch.device("xpu")) is False
    assert use_bf16("bf16", torch.device("xpu")) is True


def test_auto_precision_on_mps_is_float32(monkeypatch):
    """torch.mps says nothing about bf16 (faked absent, in case a later PyTorch adds it)."""
    monkeypatch.delattr(torch.mps, "is_bf16_supported", raising=False)
    assert use_bf16("auto", torch.device("mps")) is False
    assert use_bf16("bf16", torch.device("mps")) is True  # asked for, and MPS has autocast


def test_no_bf16_on_a_device_without_autocast(monkeypatch):
    """PyTorch faked to have no autocast for XPU, though the XPU is faked to compute bf16:
    float32, even asked for bf16."""
    fake_bf16(monkeypatch, "xpu", native=True, emulated=True)
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda kind: kind in ("cpu", "cuda"))
    assert use_bf16("auto", torch.device("xpu")) is False
    assert use_bf16("bf16", torch.device("xpu")) is False
    assert use_bf16("bf16", torch.device("cpu")) is True


@pytest.mark.parametrize("supported", [True, False])
def test_auto_precision_on_cuda_is_cudas_answer(monkeypatch, supported):
    """torch.cuda.is_bf16_supported faked."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    assert use_bf16("auto", torch.device("cuda")) is supported


def test_a_float32_step_enters_no_autocast(monkeypatch):
    """torch.autocast faked to fail, as it does on a device PyTorch has no autocast for."""
    def no_autocast(*args, **kwargs):
        raise RuntimeError("User specified an unsupported autocast device_type")
    net, x, y = build_model("softmax"), torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    expected = F.cross_entropy(net(x), y)
    monkeypatch.setattr(torch, "autocast", no_autocast)
    loss, _ = loss_and_logits(net, x, y, bf16=False, autocast_cache=True, label_smoothing=0.0,
                              reduction="mean")
    assert torch.equal(loss, expected)
    with pytest.raises(RuntimeError, match="autocast"):
        loss_and_logits(net, x, y, bf16=True, autocast_cache=True, label_smoothing=0.0,
                        reduction="mean")


# ---- the training state, bench, torchrun -----------------------------------------------------


def test_an_accelerators_random_state_is_saved_and_restored(monkeypatch, tmp_path):
    """An XPU faked as the machine's accelerator; its random-number state lives in a tensor
    here. Restored only where the same accelerator is present."""
    from mnistlab.recipebook import load_recipe
    xpu_rng = {"state": torch.arange(8, dtype=torch.uint8)}
    monkeypatch.setattr(state, "accelerator", lambda: "xpu")
    monkeypatch.setattr(torch.xpu, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.xpu, "get_rng_state", lambda *a: xpu_rng["state"].clone())
    monkeypatch.setattr(torch.xpu, "set_rng_state", lambda t, *a: xpu_rng.update(state=t.clone()))
    model = build_model("softmax")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    meta = {"recipe": load_recipe("quick").to_dict(), "seed": 0, "step": 1, "total_steps": 10,
            "train_seconds": 0.5, "data_dir": None}
    state.save_training_state(tmp_path, model, optimizer, meta)
    tensors, meta = state.read_training_state(tmp_path)
    assert torch.equal(tensors["rng.xpu"], torch.arange(8, dtype=torch.uint8))
    rng = torch.get_rng_state()
    try:
        xpu_rng["state"] = torch.zeros(8, dtype=torch.uint8)
        state.restore_training_state(tensors, meta, model, optimizer, str(tmp_path))
        assert torch.equal(xpu_rng["state"], torch.arange(8, dtype=torch.uint8))
        xpu_rng["state"] = torch.zeros(8, dtype=torch.uint8)  # resumed where there is no XPU
        monkeypatch.setattr(state, "accelerator", lambda: None)
        state.restore_training_state(tensors, meta, model, optimizer, str(tmp_path))
        assert not xpu_rng["state"].any()
    finally:
        torch.set_rng_state(rng)


def test_bench_names_and_waits_for_another_accelerator(monkeypatch):
    """The hardware's name on a faked MPS (torch.mps names no device) and a faked XPU."""
    monkeypatch.delattr(torch.mps, "get_device_name", raising=False)
    monkeypatch.setattr(torch.xpu, "get_device_name", lambda d=None: "Intel Arc B580")
    assert bench.hardware_name(torch.device("mps")) == "MPS"
    assert bench.hardware_name(torch.device("xpu")) == "Intel Arc B580"
    assert bench.hardware_name(torch.device("cpu")) not in ("", "CPU")


def test_torchrun_on_another_accelerator_is_refused_in_one_line(monkeypatch):
    """A torchrun process faked by its environment: gloo cannot carry MPS tensors."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(MnistlabError, match=r"^--device mps: training over several processes"):
        distributed.join(torch.device("mps"))


def test_the_accelerators_device_is_asked_only_once_resolved(monkeypatch):
    """Resolving cpu or cuda asks nothing of torch.accelerator (faked to fail if asked): the
    CPU and CUDA paths cost what they did."""
    fake_machine(monkeypatch, cuda=1)
    if hasattr(torch, "accelerator"):
        monkeypatch.setattr(torch.accelerator, "is_available", lambda: pytest.fail("asked"))
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("auto") == torch.device("cuda")
    assert device.ACCELERATORS[0] == "cuda"
