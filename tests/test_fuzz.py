"""Fuzzing every reader of untrusted input: only its documented error may come out.

The targets and strategies are in tests/fuzzing.py; here each runs a couple of hundred
derandomised cases (the same ones on every run), a few seconds a target;
`pytest tests/test_fuzz.py --fuzz-cases 3000 -s` runs thousands a target and prints a tally.
Below them, the bugs fuzzing found, one test each.
"""

import io
import json
import time
import tracemalloc
from collections import Counter

import numpy as np
import pytest
import torch
from fuzzing import (
    TARGETS,
    checkpoint_seeds,
    join_safetensors,
    run_case,
    split_safetensors,
)
from hypothesis import HealthCheck, given, settings
from PIL import Image

from mnistlab import checkpoint
from mnistlab.checkpoint import CheckpointError
from mnistlab.data.idx import IdxError, read_idx
from mnistlab.inference.images import decode_image
from mnistlab.inference.preprocess import read_digits
from mnistlab.models import build_model
from mnistlab.recipebook.recipe import RecipeError, parse_recipe
from mnistlab.training import state

CASES = {"pixels": 60, "checkpoint-model": 150}  # the slow ones to generate or to run


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_fuzz(target, request):
    cases = request.config.getoption("--fuzz-cases") or CASES.get(target.name, 200)
    tally: Counter = Counter()

    @settings(max_examples=cases, derandomize=True, database=None,
              deadline=None, suppress_health_check=list(HealthCheck))
    @given(target.strategy())
    def fuzz(case):
        start = time.perf_counter()
        tally["accepted" if run_case(target, case) else "refused"] += 1
        tally["slowest ms"] = max(tally["slowest ms"], 1000 * (time.perf_counter() - start))

    start = time.perf_counter()
    fuzz()
    print(f"\nfuzz {target.name}: {tally['accepted'] + tally['refused']:,} cases, "
          f"{tally['accepted']:,} accepted, {tally['refused']:,} refused "
          f"({target.allowed.__name__}), no other exception; slowest case "
          f"{tally['slowest ms']:.0f} ms, {time.perf_counter() - start:.0f} s")


# ---- the bugs it found ---------------------------------------------------------------------


def test_idx_empty_array_with_sizes_numpy_cannot_index(tmp_path):
    path = tmp_path / "bad.idx"  # 0 images of 4294967295 x 4294967295: 0 bytes, yet no array
    path.write_bytes(b"\x00\x00\x0b\x03\x00\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff")
    with pytest.raises(IdxError, match="numpy cannot hold"):
        read_idx(path)


def test_idx_tiny_file_declaring_gigabytes_costs_nothing(tmp_path):
    path = tmp_path / "bomb.idx"  # 9 bytes whose header declares 537 MB of data (within the cap)
    path.write_bytes(b"\x00\x00\x08\x01\x20\x00\x00\x00\x08")
    tracemalloc.start()
    try:
        with pytest.raises(IdxError, match="truncated"):
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_recipe_model_args_of_the_wrong_type():
    with pytest.raises(RecipeError, match="'model.args': expected a table"):
        parse_recipe('name = "x"\ndescription = ""\n[model]\nname = "softmax"\nargs = [[1, 2]]\n'
                     '[optimizer]\nname = "sgd"\nlr = 0.1\n[train]\nbatch_size = 1\nsteps = 1\n',
                     "fuzz.toml")


def _default_with(edit) -> bytes:
    header, body = split_safetensors(checkpoint_seeds()["model"])
    meta = json.loads(header["__metadata__"]["mnistlab"])
    edit(meta)
    header["__metadata__"]["mnistlab"] = json.dumps(meta)
    return join_safetensors(header, body)


def test_checkpoint_metadata_with_huge_sizes_allocates_nothing(tmp_path):
    # before: the model was built (and its gigabytes allocated) before its weights were checked;
    # now sizes beyond any MNIST model are refused with the arguments, before any building
    data = _default_with(lambda m: m["model"]["args"].update(widths=[2**20, 2**20, 2**20]))
    (tmp_path / checkpoint.MODEL_FILE).write_bytes(data)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="widths must be a list of 3 integers from 1 to 1024"):
        checkpoint.load_model(tmp_path)
    assert time.perf_counter() - start < 2


@pytest.mark.parametrize("edit", [
    lambda t, m: m.update(optim_scalars=[]),  # a list where a table belongs
    lambda t, m: m.update(optim_scalars={"x": {}}),  # a parameter index that is no number
    lambda t, m: t.pop("rng.cpu"),  # the random-number state missing
    lambda t, m: t.update({"rng.cpu": t["rng.cpu"][:7]}),  # ... or cut short
    lambda t, m: t.update({"optim.x": t["rng.cpu"].clone()}),  # a tensor name with no index
    lambda t, m: t.pop("optim.0.exp_avg_sq"),  # a weight's state not whole: a KeyError at step
])
def test_damaged_training_state_is_a_checkpoint_error(tmp_path, edit):
    import safetensors.torch

    tensors, meta = state.read_training_state(_state_folder(tmp_path))
    edit(tensors, meta)
    (tmp_path / state.STATE_FILE).write_bytes(safetensors.torch.save(
        {k: v.contiguous() for k, v in tensors.items()}, {"mnistlab": json.dumps(meta)}))
    model = build_model("softmax")
    rng = torch.get_rng_state()
    try:  # refused when read (metadata of the wrong kind) or when restored
        with pytest.raises(CheckpointError, match="damaged or does not fit|should be|keeps"):
            tensors, meta = state.read_training_state(tmp_path)
            state.restore_training_state(tensors, meta, model,
                                              torch.optim.AdamW(model.parameters()), str(tmp_path))
    finally:
        torch.set_rng_state(rng)


def _state_folder(folder):
    (folder / state.STATE_FILE).write_bytes(checkpoint_seeds()["state"])
    return folder


@pytest.mark.parametrize("shape", [(1, 16_000_000), (16_000_000, 1)])
def test_picture_one_pixel_thin_and_16_megapixels_long(shape):
    # before: max-pooling padded it to k times its size (466 GiB) and raised MemoryError
    a = np.full(shape, 255, np.uint8)
    a.flat[::7] = 0
    buffer = io.BytesIO()
    Image.fromarray(a).save(buffer, "PNG")
    digits = read_digits(decode_image(buffer.getvalue()))
    assert all(d.shape == (28, 28) and d.any() for d in digits)


def test_training_state_missing_a_setting_takes_the_recipes_and_trains_on(tmp_path):
    # before: the saved group replaced the optimiser's whole, and step() raised KeyError
    tensors, meta = state.read_training_state(_state_folder(tmp_path))
    del meta["param_groups"][0]["weight_decay"]
    model = build_model("softmax")
    optimizer = torch.optim.AdamW(model.parameters(), weight_decay=0.25)
    rng = torch.get_rng_state()
    try:
        state.restore_training_state(tensors, meta, model, optimizer, str(tmp_path))
    finally:
        torch.set_rng_state(rng)
    model(torch.rand(2, 1, 28, 28)).sum().backward()
    optimizer.step()
    assert optimizer.param_groups[0]["weight_decay"] == 0.25
