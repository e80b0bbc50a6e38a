"""How a product's K image tiles become one network input, on the device.

strip: K tiles side by side, S x (S*K): the winner's layout (1st place summaries).
grid:  K <= 2 as a strip; K = 3, 4 in a 2x2 grid (an empty 4th cell is zero), 2S x 2S.
Tiles keep the product's order (the first image is the most informative view), so augmentation
and TTA flip each tile in place (flip_tiles) and never mirror the whole strip, which would
reverse the order of the views.
"""
from __future__ import annotations

from typing import Callable

import torch


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


def flip_tiles(tiles: torch.Tensor) -> torch.Tensor:
    """Mirror every tile in place, keeping the tile order."""
    return torch.flip(tiles, dims=[4])


TILE_TTA: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"orig": lambda t: t, "hflip": flip_tiles}
