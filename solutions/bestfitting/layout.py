"""How a product's K image tiles become one network input, on the device.

strip: K tiles side by side, S x (S*K): the winner's layout (1st place summaries).
grid:  K <= 2 as a strip; K = 3, 4 in a 2x2 grid (an empty 4th cell is zero), 2S x 2S.
Tiles keep the product's order (the first image is the most informative view), so augmentation
and TTA flip each tile in place (the dataset's per-tile flips; the inference driver's "hflip"
view flips the last axis of [B, K, C, S, S], i.e. each tile) and never mirror the whole strip, which would reverse the
order of the views. The network composes its input itself (ComposedNet), so everything before it
handles tiles [B, K, C, S, S].
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def strip(tiles: torch.Tensor) -> torch.Tensor:
    """[B, K, C, S, S] -> [B, C, S, K*S], tile k at columns k*S .. (k+1)*S."""
    return torch.cat(tiles.unbind(1), dim=3)


def grid(tiles: torch.Tensor) -> torch.Tensor:
    """[B, K, C, S, S] -> [B, C, 2S, 2S] for K = 3, 4 (row-major); a strip for K <= 2."""
    if tiles.shape[1] <= 2:
        return strip(tiles)
    if tiles.shape[1] == 3:
        tiles = torch.cat([tiles, torch.zeros_like(tiles[:, :1])], dim=1)
    return torch.cat([strip(tiles[:, :2]), strip(tiles[:, 2:4])], dim=2)


LAYOUTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"strip": strip, "grid": grid}


def input_shape(layout: str, k: int, size: int) -> tuple[int, int]:
    """(height, width) of the composed input of a K-image product."""
    if layout == "grid" and k >= 3:
        return 2 * size, 2 * size
    return size, k * size


class ComposedNet(nn.Module):
    """A backbone fed a product's K tiles composed by a layout: input [B, K, C, S, S] (normalised)."""

    def __init__(self, backbone: nn.Module, layout: str, channels_last: bool = False):
        super().__init__()
        self.backbone, self.layout, self.channels_last = backbone, layout, channels_last
        self.num_classes = backbone.num_classes
        self.pretrained_cfg = getattr(backbone, "pretrained_cfg", {})

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        x = LAYOUTS[self.layout](tiles)
        if self.channels_last and x.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone(x)


class ByCountNet(nn.Module):
    """One model per image count K: a batch (whose products share K) goes through the model of its K."""

    def __init__(self, models: dict[int, nn.Module]):
        super().__init__()
        self.models = nn.ModuleDict({str(k): m for k, m in models.items()})
        first = next(iter(models.values()))
        self.num_classes, self.pretrained_cfg = first.num_classes, first.pretrained_cfg

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        return self.models[str(tiles.shape[1])](tiles)
