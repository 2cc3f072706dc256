import json

import pytest
import safetensors.torch
import torch

from mnistlab.models import build_model
from mnistlab.train.checkpoint import (
    MODEL_FILE,
    MODEL_META_FILE,
    CheckpointError,
    load_model,
    save_model,
)

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
