"""Batch augmentations applied on the training device after normalisation (recipes name them).

Why on the device: the loader workers only read and decode; a random affine per sample is one
`grid_sample` call for the whole batch. Reflection padding makes each op commute with the
per-channel normalisation, so applying it to normalised inputs equals applying it to pixels.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

Augment = Callable[[torch.Tensor], torch.Tensor]
AUGMENTS: dict[str, Augment] = {}


def register_augment(name: str) -> Callable[[Augment], Augment]:
    def wrap(fn: Augment) -> Augment:
        AUGMENTS[name] = fn
        return fn

    return wrap


@register_augment("shift_scale_rotate")
def shift_scale_rotate(x: torch.Tensor, p: float = 0.5, shift: float = 0.07, scale: tuple[float, float] = (0.9, 1.3), degrees: float = 10.0) -> torch.Tensor:
    """The 2nd place's ShiftScaleRotate (p=0.5, shift 0.07, scale 0.9-1.3, rotation 10 degrees)."""
    n = x.shape[0]
    g = dict(device=x.device, dtype=torch.float32)
    apply = torch.rand(n, **g) < p
    s = torch.where(apply, torch.empty(n, **g).uniform_(*scale), torch.ones(n, **g))
    a = torch.where(apply, torch.empty(n, **g).uniform_(-degrees, degrees), torch.zeros(n, **g)) * math.pi / 180
    t = torch.where(apply[:, None], torch.empty(n, 2, **g).uniform_(-shift, shift) * 2, torch.zeros(n, 2, **g))  # grid units span 2
    cos, sin = torch.cos(a) / s, torch.sin(a) / s  # output->input map: zooming in by s samples a 1/s region
    theta = torch.stack([torch.stack([cos, -sin, t[:, 0]], 1), torch.stack([sin, cos, t[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False).to(x.dtype)
    return torch.where(apply[:, None, None, None], out, x)


@register_augment("rot90")
def random_rot90(x: torch.Tensor) -> torch.Tensor:
    """Rotate each (square) sample by a random multiple of 90 degrees."""
    k = torch.randint(0, 4, (x.shape[0],), device=x.device)
    out = x.clone()
    for turns in range(1, 4):
        sel = k == turns
        if sel.any():
            out[sel] = torch.rot90(x[sel], turns, dims=(2, 3))
    return out


def build_augment(names: list[str]) -> Augment | None:
    """Compose the named augmentations in order (None when the recipe names none)."""
    unknown = [n for n in names if n not in AUGMENTS]
    if unknown:
        raise ValueError(f"unknown augmentations {unknown}; choose from {sorted(AUGMENTS)}")
    if not names:
        return None
    fns = [AUGMENTS[n] for n in names]

    def run(x: torch.Tensor) -> torch.Tensor:
        channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        for fn in fns:
            x = fn(x)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    return run
