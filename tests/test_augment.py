import math

import torch

from mnistlab.data.splits import as_input, load_split
from mnistlab.recipebook.recipe import AugmentSection
from mnistlab.training.augment import elastic_field, random_distortion

IMAGES = as_input(load_split("test").images[:64])


def test_no_distortion_is_the_identity():
    out = random_distortion(IMAGES, AugmentSection())
    assert torch.allclose(out, IMAGES, atol=1e-5)


def test_distortions_move_ink_but_keep_it():
    torch.manual_seed(0)
    spec = AugmentSection(rotate=15, scale=0.1, shear=10, translate=2)
    out = random_distortion(IMAGES, spec)
    assert out.shape == IMAGES.shape and out.min() >= 0 and out.max() <= 1
    changed = (out - IMAGES).abs().flatten(1).max(1).values
    assert (changed > 0.2).all()  # every image was moved
    ratio = out.flatten(1).sum(1) / IMAGES.flatten(1).sum(1)
    assert ((ratio > 0.7) & (ratio < 1.4)).all()  # and none lost or gained much ink


def test_translations_stay_within_their_limit():
    torch.manual_seed(1)
    out = random_distortion(IMAGES, AugmentSection(translate=3))
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
    a = random_distortion(IMAGES, spec)
    torch.manual_seed(5)
    assert torch.equal(a, random_distortion(IMAGES, spec))


def test_elastic_fields_are_smooth_and_as_strong_as_asked():
    torch.manual_seed(2)
    alpha, sigma = 34.0, 4.0
    field = elastic_field(256, 28, 28, alpha, sigma, torch.device("cpu"))
    assert field.shape == (256, 28, 28, 2)
    pixels = field[:, 8:20, 8:20] * 14  # back to pixels, away from the zero-padded borders
    # uniform noise of std 1/sqrt(3), blurred by a normalised Gaussian (which keeps a fraction
    # 1/(2 sqrt(pi) sigma) of the std), times alpha: about 1.4 pixels here
    expected = alpha / math.sqrt(3) / (2 * math.sqrt(math.pi) * sigma)
    assert 0.8 * expected < pixels.std() < 1.2 * expected
    assert pixels.mean().abs() < 0.1 * expected
    # neighbours move together: the displacements of adjacent pixels are strongly correlated
    a, b = pixels[:, :, :-1].flatten(), pixels[:, :, 1:].flatten()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.9


def test_elastic_distortions_bend_strokes_but_keep_the_ink():
    torch.manual_seed(3)
    out = random_distortion(IMAGES, AugmentSection(elastic_alpha=34, elastic_sigma=4))
    assert out.shape == IMAGES.shape and out.min() >= 0 and out.max() <= 1
    changed = (out - IMAGES).abs().flatten(1).max(1).values
    assert (changed > 0.2).all()
    ratio = out.flatten(1).sum(1) / IMAGES.flatten(1).sum(1)
    assert ((ratio > 0.6) & (ratio < 1.5)).all()  # strokes stretch and squeeze locally
    torch.manual_seed(3)
    spec = AugmentSection(rotate=10, elastic_alpha=34, elastic_sigma=4)
    a = random_distortion(IMAGES, spec)
    torch.manual_seed(3)
    assert torch.equal(a, random_distortion(IMAGES, spec))
