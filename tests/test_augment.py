import torch

from mnistlab.data.splits import load_split
from mnistlab.recipes.recipe import AugmentSection
from mnistlab.train.augment import random_affine
from mnistlab.train.metrics import as_input

IMAGES = as_input(load_split("test").images[:64])


def test_no_distortion_is_the_identity():
    out = random_affine(IMAGES, AugmentSection())
    assert torch.allclose(out, IMAGES, atol=1e-5)


def test_distortions_move_ink_but_keep_it():
    torch.manual_seed(0)
    spec = AugmentSection(rotate=15, scale=0.1, shear=10, translate=2)
    out = random_affine(IMAGES, spec)
    assert out.shape == IMAGES.shape and out.min() >= 0 and out.max() <= 1
    changed = (out - IMAGES).abs().flatten(1).max(1).values
    assert (changed > 0.2).all()  # every image was moved
    ratio = out.flatten(1).sum(1) / IMAGES.flatten(1).sum(1)
    assert ((ratio > 0.7) & (ratio < 1.4)).all()  # and none lost or gained much ink


def test_translations_stay_within_their_limit():
    torch.manual_seed(1)
    out = random_affine(IMAGES, AugmentSection(translate=3))
    grid = torch.arange(28.0)

    def centre(batch):  # centre of mass, in pixels, along columns and rows
        mass = batch[:, 0].flatten(1).sum(1)
        return ((batch[:, 0].sum(1) * grid).sum(1) / mass, (batch[:, 0].sum(2) * grid).sum(1) / mass)

    for moved, still in zip(centre(out), centre(IMAGES)):
        shift = moved - still
        assert shift.abs().max() < 3.2  # up to 3 pixels, a little more where ink leaves the edge
        assert shift.std() > 1  # spread over the range, not all alike


def test_same_seed_same_distortions():
    spec = AugmentSection(rotate=10, translate=2)
    torch.manual_seed(5)
    a = random_affine(IMAGES, spec)
    torch.manual_seed(5)
    assert torch.equal(a, random_affine(IMAGES, spec))
