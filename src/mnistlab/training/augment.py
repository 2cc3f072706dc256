"""Random distortions of a whole batch at once, on the batch's own device.

Each image gets its own rotation, scale, shear and translation, and optionally its own elastic
distortion (Simard et al. 2003: a random displacement for every pixel, smoothed by a Gaussian,
so that neighbouring pixels move together and strokes bend rather than tear). One sampling grid
holds both, and one `grid_sample` call applies them all: augmentation costs a few kernels per
batch, not a Python loop per image. The draws come from torch's global generator, which
checkpoints save and restore, so a resumed run sees the same distortions as an uninterrupted
one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mnistlab.recipebook.recipe import AugmentSection


def random_distortion(x: torch.Tensor, spec: AugmentSection) -> torch.Tensor:
    """Distort a batch (N, C, H, W) of images in [0, 1]; pixels from outside the image are 0."""
    n, _, height, width = x.shape

    def uniform(limit: float) -> torch.Tensor:  # one draw per image in [-limit, limit]
        return (torch.rand(n, device=x.device) * 2 - 1) * limit

    angle = uniform(math.radians(spec.rotate))
    shear = torch.tan(uniform(math.radians(spec.shear)))
    scale = 1 + uniform(spec.scale)
    # translations in pixels, as fractions of the half-size that affine_grid's coordinates use
    tx, ty = uniform(2 * spec.translate / width), uniform(2 * spec.translate / height)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # affine_grid maps each output pixel back to where it samples the input: the inverse of
    # "rotate, shear, scale, shift"; scaling the sampling grid by 1/scale enlarges the digit.
    theta = torch.stack([
        torch.stack([cos / scale, (-sin + shear * cos) / scale, tx], 1),
        torch.stack([sin / scale, (cos + shear * sin) / scale, ty], 1),
    ], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    if spec.elastic_alpha:
        grid = grid + elastic_field(n, height, width, spec.elastic_alpha, spec.elastic_sigma,
                                    x.device).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def elastic_field(n: int, height: int, width: int, alpha: float, sigma: float,
                  device: torch.device) -> torch.Tensor:
    """(N, H, W, 2) displacements in `affine_grid`'s coordinates: uniform noise in [-1, 1] per
    pixel and direction, blurred by a Gaussian of width `sigma` pixels, times `alpha` pixels."""
    radius = math.ceil(3 * sigma)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    field = torch.rand(n, 2, height, width, device=device) * 2 - 1
    # the 2-D Gaussian is separable: blur along rows, then along columns; each of the two
    # displacement channels on its own (groups=2)
    field = F.conv2d(field, kernel.view(1, 1, 1, -1).expand(2, 1, 1, -1), padding=(0, radius), groups=2)
    field = F.conv2d(field, kernel.view(1, 1, -1, 1).expand(2, 1, -1, 1), padding=(radius, 0), groups=2)
    # pixels to affine_grid's units, in which the image spans 2 along each side; scaled by
    # Python numbers, not a tensor made from them: that would be a copy from the host, which
    # a CUDA graph cannot capture
    field = torch.cat([field[:, :1] * (2 * alpha / width), field[:, 1:] * (2 * alpha / height)], 1)
    return field.permute(0, 2, 3, 1)
