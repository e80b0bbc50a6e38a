"""Batch augmentations applied on the training device after normalisation (recipes name them).

Why on the device: the loader workers only read and decode; a random affine per sample is one
`grid_sample` call for the whole batch. Reflection padding makes each geometric op commute with
the per-channel normalisation, so applying it to normalised inputs equals applying it to pixels;
a colour op takes the recipe's `mean` / `std` (passed when its signature names them) and works on
the pixels. A recipe sets an augmentation's parameters with `augment_args: {name: {param: value}}`.
"""
from __future__ import annotations

import inspect
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
    """Rotate each (square) sample by a random multiple of 90 degrees (0 included: uniform)."""
    k = torch.randint(0, 4, (x.shape[0],), device=x.device)
    out = x.clone()
    for turns in range(1, 4):
        sel = k == turns
        if sel.any():
            out[sel] = torch.rot90(x[sel], turns, dims=(2, 3))
    return out


@register_augment("zoom_crop")
def zoom_crop(x: torch.Tensor, max_zoom: float = 203 / 171, flip: torch.Tensor | None = None) -> torch.Tensor:
    """The 2nd place's member C input (outrunner/data_gen_a.py r_crop): resize each sample to a
    random side in [S, max_zoom x S] and cut a random S x S window, as one zoom per sample at a
    random position (reflection padding never shows: the window stays inside). `flip` (bool[N])
    mirrors the chosen samples (its multi-crop TTA flips half of the crops)."""
    n = x.shape[0]
    g = dict(device=x.device, dtype=torch.float32)
    inv = 1 / torch.empty(n, **g).uniform_(1.0, max_zoom)  # the window's side as a share of the image
    t = (torch.rand(n, 2, **g) * 2 - 1) * (1 - inv)[:, None]  # its centre, in grid units, inside the image
    sx = inv if flip is None else torch.where(flip.to(x.device), -inv, inv)
    zero = torch.zeros(n, **g)
    theta = torch.stack([torch.stack([sx, zero, t[:, 0]], 1), torch.stack([zero, inv, t[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False).to(x.dtype)


@register_augment("transpose")
def random_transpose(x: torch.Tensor, p: float = 1 / 3) -> torch.Tensor:
    """Swap height and width of each (square) sample with probability p. The 2nd place's
    `random_rotate90(u=0.5)` (heng/code/solution-submit-1/dataset/transform.py) draws 90, 180 or
    270 degrees with p 0.5 but returns the transposed image for 90 and 270 and the input for 180:
    what it did is this op at p = 0.5 x 2/3."""
    sel = torch.rand(x.shape[0], device=x.device) < p
    return torch.where(sel[:, None, None, None], x.transpose(2, 3), x)


def _rgb_to_hls(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[N, 3, H, W] RGB in [0, 1] -> hue in [0, 1) (a turn), lightness, saturation (OpenCV's HLS)."""
    hi, lo = rgb.max(1).values, rgb.min(1).values
    light, span = (hi + lo) / 2, hi - lo
    sat = torch.where(light < 0.5, span / (hi + lo).clamp_min(1e-12), span / (2 - hi - lo).clamp_min(1e-12))
    r, g, b = rgb.unbind(1)
    safe = span.clamp_min(1e-12)
    hue = torch.where(hi == r, (g - b) / safe, torch.where(hi == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    hue = torch.where(span > 0, (hue / 6) % 1.0, torch.zeros_like(hue))
    return hue, light, torch.where(span > 0, sat, torch.zeros_like(sat))


def _hls_to_rgb(hue: torch.Tensor, light: torch.Tensor, sat: torch.Tensor) -> torch.Tensor:
    chroma = (1 - (2 * light - 1).abs()) * sat
    k = torch.stack([(n + hue * 12) % 12 for n in (0.0, 8.0, 4.0)], 1)
    a = chroma[:, None] / 2
    return light[:, None] - a * torch.clamp(torch.minimum(k - 3, 9 - k), -1, 1)


@register_augment("hsl_jitter")
def hsl_jitter(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], h: float = 20, s: float = 20, l: float = 20) -> torch.Tensor:  # noqa: E741
    """MXNet's `--max-random-h/s/l` (the 3rd place's M05 / M07 / M09 / M13 set 20 each): every sample
    gets uniform offsets in [-h, h] on OpenCV's 8-bit hue (0-180, clamped, not wrapped) and
    [-s, s], [-l, l] on saturation and lightness (0-255, clamped)."""
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    sd = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    rgb = (x.float() * sd + m).clamp(0, 1)
    hue, light, sat = _rgb_to_hls(rgb)
    off = (torch.rand(x.shape[0], 3, 1, 1, device=x.device) * 2 - 1) * torch.tensor([h / 180, l / 255, s / 255], device=x.device).view(1, 3, 1, 1)
    hue, light, sat = (hue + off[:, 0]).clamp(0, 1), (light + off[:, 1]).clamp(0, 1), (sat + off[:, 2]).clamp(0, 1)
    return ((_hls_to_rgb(hue, light, sat) - m) / sd).to(x.dtype)


def augment_params(name: str) -> set[str]:
    """The parameters a recipe may set for an augmentation (not the input, not mean / std)."""
    return set(inspect.signature(AUGMENTS[name]).parameters) - {"x", "mean", "std", "flip"}


def check_augments(names: list[str], args: dict[str, dict]) -> None:
    """An unknown augmentation or parameter is an error when the recipe is read."""
    unknown = [n for n in [*names, *args] if n not in AUGMENTS]
    if unknown:
        raise ValueError(f"unknown augmentations {unknown}; choose from {sorted(AUGMENTS)}")
    for name, params in args.items():
        if name not in names:
            raise ValueError(f"augment_args sets {name!r}, which the recipe's augment list does not name")
        bad = set(params) - augment_params(name)
        if bad:
            raise ValueError(f"augment_args {name}: unknown parameters {sorted(bad)}; choose from {sorted(augment_params(name))}")


def build_augment(names: list[str], args: dict[str, dict] | None = None, mean: tuple[float, ...] | None = None,
                  std: tuple[float, ...] | None = None) -> Augment | None:
    """Compose the named augmentations in order with the recipe's parameters (None when the recipe
    names none); `mean` / `std` (the network's normalisation) reach the ops that work on pixels."""
    args = args or {}
    check_augments(names, args)
    if not names:
        return None
    fns = []
    for name in names:
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in args.get(name, {}).items()}
        if {"mean", "std"} <= set(inspect.signature(AUGMENTS[name]).parameters):
            if mean is None or std is None:
                raise ValueError(f"augmentation {name} works on pixels: pass the network's mean and std")
            kwargs.update(mean=mean, std=std)
        fns.append(lambda x, fn=AUGMENTS[name], kw=kwargs: fn(x, **kw))

    def run(x: torch.Tensor) -> torch.Tensor:
        channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        for fn in fns:
            x = fn(x)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    return run
