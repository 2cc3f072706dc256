"""Random affine distortions of a whole batch at once, on the batch's own device.

Each image gets its own rotation, scale, shear and translation; one `affine_grid` and one
`grid_sample` call apply them all, so augmentation costs two kernels per batch, not a Python
loop per image. The draws come from torch's global generator, which checkpoints save and
restore, so a resumed run sees the same distortions as an uninterrupted one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mnistlab.recipes.recipe import AugmentSection


def random_affine(x: torch.Tensor, spec: AugmentSection) -> torch.Tensor:
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
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
