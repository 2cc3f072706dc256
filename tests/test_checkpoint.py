import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from mnistlab.checkpoint import MODEL_FILE, MODEL_META_FILE, CheckpointError, load_model, save_model
from mnistlab.models import build_model
from mnistlab.training.state import STATE_FILE, read_training_state

META = {"model": {"name": "keras-cnn", "args": {}}, "metrics": {"test": {"accuracy": 0.5}}}


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = build_model("keras-cnn")
    save_model(tmp_path, model, META)
    return tmp_path, model


def test_round_trip_keeps_weights_and_metadata(saved):
    folder, model = saved
    loaded, meta = load_model(folder)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert meta["metrics"]["test"]["accuracy"] == 0.5
    assert json.loads((folder / MODEL_META_FILE).read_text()) == meta
    assert load_model(folder / MODEL_FILE)[1] == meta  # the file itself works as well as its folder


def test_a_loaded_model_runs_channels_last_as_it_trained(saved):
    """A one-channel input alone would leave every convolution's output in the plain layout,
    where PyTorch's CPU max-pool is an order of magnitude slower; the loaded model keeps them
    channels last, and answers as the model it was saved from."""
    folder, model = saved
    loaded, _ = load_model(folder)
    outputs = []
    for layer in loaded.modules():
        if isinstance(layer, torch.nn.Conv2d):
            layer.register_forward_hook(lambda _layer, _inputs, out: outputs.append(out))
    x = torch.rand(8, 1, 28, 28)
    with torch.inference_mode():
        got, expected = loaded.eval()(x), model.eval()(x)
    assert len(outputs) == 3
    assert all(out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
               for out in outputs)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def rewrite(folder, tensors, meta):
    (folder / MODEL_FILE).write_bytes(
        safetensors.torch.save(tensors, {"mnistlab": json.dumps(meta)} if meta is not None else None))


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[: len(b) // 2], "not a valid safetensors file"),
    (lambda b: b"\x80\x04pickle" + b[10:], "not a valid safetensors file"),
    (lambda b: b"", "not a valid safetensors file"),
])
def test_damaged_files_are_refused(saved, damage, message):
    folder, _ = saved
    path = folder / MODEL_FILE
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match=message):
        load_model(folder)


def test_hostile_or_mismatched_contents_are_refused(saved):
    folder, model = saved
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    cases = [
        (state, {**META, "format": "mnistlab.model/1", "model": {"name": "os.system", "args": {}}}, "unknown model"),
        (state, {"format": "mnistlab.model/1", "model": {"name": "keras-cnn", "args": {"evil": 1}}}, "evil"),
        (state, {"format": "mnistlab.model/1", "model": "keras-cnn"}, "no valid 'model' entry"),
        (state, {"format": "something-else"}, "not an mnistlab model checkpoint"),
        (state, None, "no valid mnistlab metadata"),
        ({**state, "fc2.weight": torch.zeros(3, 3)}, {**META, "format": "mnistlab.model/1"}, "the model needs"),
        ({k: v.double() for k, v in state.items()}, {**META, "format": "mnistlab.model/1"}, "torch.float64"),
        ({k: v for k, v in list(state.items())[1:]}, {**META, "format": "mnistlab.model/1"}, "missing"),
        ({k: torch.full_like(v, float("nan")) for k, v in state.items()}, {**META, "format": "mnistlab.model/1"}, "NaN"),
    ]
    for tensors, meta, message in cases:
        rewrite(folder, tensors, meta)
        with pytest.raises(CheckpointError, match=message):
            load_model(folder)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_model(tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="is it a run folder"):
        load_model(tmp_path)


# ---- untrusted files: refused with one clear line, nothing run from them -------------------

FORMAT = {"format": "mnistlab.model/1"}


def hostile_cases(state):
    """(what, tensors, metadata or raw header text, what the error says) of files built to hurt."""
    marker = "/tmp/mnistlab-pwned"
    good = {**META, **FORMAT}
    return [
        ("int32 weights", {k: v.int() for k, v in state.items()}, good, "torch.int32"),
        ("float16 weights", {k: v.half() for k, v in state.items()}, good, "torch.float16"),
        ("bool weights", {k: v > 0 for k, v in state.items()}, good, "torch.bool"),
        ("an extra tensor", {**state, "backdoor": torch.zeros(1)}, good, "unexpected backdoor"),
        ("a transposed weight", {**state, "fc1.weight": state["fc1.weight"].t().contiguous()},
         good, "tensor 'fc1.weight'"),
        ("metadata that is a list", state, "[1, 2, 3]", "no valid mnistlab metadata"),
        ("metadata that is a string", state, '"keras-cnn"', "no valid mnistlab metadata"),
        ("metadata that is not JSON", state, "{'model': 'keras-cnn'}", "no valid mnistlab metadata"),
        ("metadata nested 100,000 deep", state, "[" * 100_000 + "]" * 100_000,
         "no valid mnistlab metadata"),
        ("5 MB of metadata", state, json.dumps({**good, "notes": "x" * 5_000_000}), "metadata"),
        ("a model name that is code", state,
         {**FORMAT, "model": {"name": f"__import__('os').system('touch {marker}')", "args": {}}},
         "unknown model"),
        ("a model name that is a path", state,
         {**FORMAT, "model": {"name": "../../../etc/passwd", "args": {}}}, "unknown model"),
        ("a dunder argument", state,
         {**FORMAT, "model": {"name": "keras-cnn", "args": {"__class__": "os.system"}}},
         "takes no argument '__class__'"),
        ("a shell command as an argument", state,
         {**FORMAT, "model": {"name": "strided-cnn", "args": {"dropout": f"$(touch {marker})"}}},
         "dropout must be"),
        ("a 360 GB model", state,
         {**FORMAT, "model": {"name": "mnistlab-cnn", "args": {"widths": [100_000] * 3}}},
         "widths must be a list of 3 integers from 1 to 1024 (channels), got [100000, 100000, 100000]"),
        ("widths each allowed, 104 million parameters together", state,  # measured on the meta device
         {**FORMAT, "model": {"name": "mnistlab-cnn", "args": {"widths": [1024] * 3, "convs": 4}}},
         "the model would have 104,006,666 parameters, more than the 100,000,000 mnistlab builds"),
        ("a large model allowed, not the file's", state,  # checked on the meta device: no memory
         {**FORMAT, "model": {"name": "mnistlab-cnn", "args": {"widths": [1024] * 3, "convs": 1}}},
         "weights do not match the model"),
        ("an argument named like build_model's own", state,
         {**FORMAT, "model": {"name": "keras-cnn", "args": {"init": "zeros"}}},
         "model 'keras-cnn' takes no argument 'init': the model's init is given beside its arguments"),
        ("class names that are not a list", state, {**good, "class_names": 12}, "class_names"),
        ("a data folder that is not a path", state, {**good, "data_dir": ["/etc"]}, "data_dir"),
        ("a recipe that is not a table", state, {**good, "recipe": "rm -rf /"}, "recipe"),
    ]


def write_hostile(folder, tensors, meta):
    text = meta if isinstance(meta, str) else json.dumps(meta)
    (folder / MODEL_FILE).write_bytes(safetensors.torch.save(tensors, {"mnistlab": text}))


def test_hostile_checkpoints_are_refused_and_nothing_runs(saved, capsys):
    from mnistlab.cli import main

    folder, model = saved
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    for what, tensors, meta, message in hostile_cases(state):
        write_hostile(folder, tensors, meta)
        with pytest.raises(CheckpointError, match=re.escape(message)):
            load_model(folder)
        # through the command a user runs: one line on stderr, status 1, no traceback
        assert main(["evaluate", str(folder), "--device", "cpu"]) == 1, what
        err = capsys.readouterr().err
        assert err.startswith(f"mnistlab: error: {folder / MODEL_FILE}: ") and err.count("\n") == 1, (what, err)
        assert len(err) < 400, (what, err)  # a huge header is not echoed back
    assert not Path("/tmp/mnistlab-pwned").exists()


def test_evaluate_refuses_a_hostile_checkpoint_as_a_process(saved):
    folder, model = saved
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    write_hostile(folder, {k: v.int() for k, v in state.items()}, {**META, **FORMAT})
    out = subprocess.run([sys.executable, "-m", "mnistlab", "evaluate", str(folder)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.startswith("mnistlab: error: ") and "torch.int32" in out.stderr
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1


def test_nothing_is_ever_unpickled():
    """No loader of ours may reach pickle: not torch.load, numpy's allow_pickle, nor eval."""
    risky = re.compile(r"(?<!safetensors\.)torch\.load\(|\bimport pickle|\bpickle\.|allow_pickle\s*=\s*True|"
                       r"\bjoblib\b|\bdill\b|(?<![.\w])(eval|exec)\(")
    src = Path(__file__).resolve().parents[1] / "src" / "mnistlab"
    found = [f"{path.relative_to(src)}:{n}: {line.strip()}" for path in sorted(src.rglob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1) if risky.search(line)]
    assert found == []


def test_hostile_training_states_are_refused(tmp_path, small_mnist, capsys):
    """`mnistlab train --resume` on a training state built to hurt: one line, status 1."""
    from mnistlab.cli import main
    from mnistlab.recipebook import load_recipe
    from mnistlab.training.engine import Trainer
    from mnistlab.training.progress import Progress

    recipe_path = tmp_path / "r.toml"
    recipe_path.write_text('name = "r"\ndescription = ""\n[model]\nname = "fast-cnn"\nwidths = [8, 8]\n'
                           '[optimizer]\nname = "adam"\nlr = 1e-3\n[train]\nbatch_size = 50\nsteps = 4\n')
    run = tmp_path / "run"

    def stop(trainer, done):
        if done == 2:
            trainer.request_stop()

    Trainer(load_recipe(recipe_path), run, device="cpu", data_dir=str(small_mnist), on_step=stop,
            progress=Progress(1, quiet=True)).run()
    good_tensors, good_meta = read_training_state(run)
    exp_avg = next(k for k in good_tensors if k.endswith(".exp_avg"))
    cases = [
        ("recipe", {"recipe": "rm -rf /"}, {}, "metadata 'recipe' should be dict"),
        ("seed", {"seed": "0; rm -rf /"}, {}, "metadata 'seed' should be int"),
        ("bool step", {"step": True}, {}, "metadata 'step' should be int"),
        ("negative step", {"step": -5}, {}, "outside 0..4"),
        ("step past the end", {"step": 10**12}, {}, "outside 0..4"),
        ("seconds", {"train_seconds": "fast"}, {}, "'train_seconds' should be"),
        ("data folder", {"data_dir": {"path": "/etc"}}, {}, "'data_dir' should be str or null"),
        ("param groups", {"param_groups": "all"}, {}, "'param_groups' should be list"),
        ("betas", {"param_groups": [{**good_meta["param_groups"][0], "betas": "os.system"}]}, {},
         "betas"),
        ("init among the model's arguments",
         {"recipe": {**good_meta["recipe"], "model": {**good_meta["recipe"]["model"],
                                                      "args": {"widths": [8, 8], "init": "zeros"}}}},
         {}, "[model] model 'fast-cnn' takes no argument 'init': the model's init is given beside"),
        ("huge widths", {"recipe": {**good_meta["recipe"], "model": {"name": "fast-cnn",
                                                                   "args": {"widths": [100_000, 64]}}}},
         {}, "[model] widths must be a list of 2 to 4 integers from 1 to 1024"),
        ("rng dtype", {}, {"rng.cpu": torch.zeros(5000)}, "random-number state"),
        ("optimiser shape", {}, {exp_avg: torch.zeros(3)}, exp_avg),
        ("optimiser dtype", {}, {exp_avg: good_tensors[exp_avg].int()}, exp_avg),
    ]
    for what, meta_change, tensor_change, message in cases:
        text = json.dumps({**good_meta, **meta_change})
        (run / STATE_FILE).write_bytes(safetensors.torch.save({**good_tensors, **tensor_change},
                                                              {"mnistlab": text}))
        assert main(["train", "--resume", str(run), "--device", "cpu", "--quiet"]) == 1, what
        err = capsys.readouterr().err
        assert err.startswith("mnistlab: error: ") and err.count("\n") == 1, (what, err)
        assert message in err, (what, err)


def test_an_onnx_file_where_a_checkpoint_is_needed_is_named_so(tmp_path):
    exported = tmp_path / "model.onnx"
    exported.write_bytes(b"\x08\x07\x12\x07pytorch" + bytes(200))  # an ONNX file's first bytes
    with pytest.raises(CheckpointError, match=r"model.onnx: an ONNX file; this needs the model's "
                                              r"checkpoint \(a run folder or a .safetensors file\)"):
        load_model(exported)
