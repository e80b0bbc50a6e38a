"""The recipes' batch augmentations: the recorded colour jitter and rot90 as the teams ran them."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from common.augment import _rgb_to_hls, build_augment, hsl_jitter, random_transpose
from common.config import TrainConfig
from common.errors import DataError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def normalised(rgb: torch.Tensor) -> torch.Tensor:
    return (rgb - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_hls_matches_opencv_on_8_bit_pixels():
    """MXNet jitters OpenCV's 8-bit HLS (hue 0-180): ours converts the same way, to rounding."""
    pixels = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    hls = cv2.cvtColor(pixels[:, :, ::-1].copy(), cv2.COLOR_BGR2HLS).astype(float)
    hue, light, sat = _rgb_to_hls(torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255)
    assert np.abs(hue[0].numpy() * 180 - hls[:, :, 0]).max() <= 0.51
    assert np.abs(light[0].numpy() * 255 - hls[:, :, 1]).max() <= 0.51
    assert np.abs(sat[0].numpy() * 255 - hls[:, :, 2]).max() <= 0.51


def test_hsl_jitter_keeps_zero_offsets_and_bounds_each_shift():
    torch.manual_seed(0)
    rgb = torch.rand(16, 3, 12, 12) * 0.6 + 0.2
    x = normalised(rgb)
    assert torch.allclose(hsl_jitter(x, MEAN, STD, h=0, s=0, l=0), x, atol=1e-5)
    out = hsl_jitter(x, MEAN, STD, h=0, s=0, l=20)  # lightness only: one offset per sample, |offset| <= 20/255
    _, light_in, _ = _rgb_to_hls(rgb)
    _, light_out, _ = _rgb_to_hls(out * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1))
    shift = (light_out - light_in).flatten(1)
    assert shift.abs().max() <= 20 / 255 + 1e-4
    assert torch.allclose(shift, shift[:, :1].expand_as(shift), atol=1e-4)  # the same offset over a sample
    assert shift[:, 0].std() > 0.01  # and another per sample


def test_transpose_does_what_the_teams_random_rotate90_did():
    x = torch.rand(64, 3, 8, 8)
    assert torch.equal(random_transpose(x, p=1.0), x.transpose(2, 3))
    assert torch.equal(random_transpose(x, p=0.0), x)
    torch.manual_seed(0)
    out = random_transpose(torch.rand(3000, 1, 2, 2), p=1 / 3)
    assert out.shape == (3000, 1, 2, 2)
    x = torch.arange(4.0).view(1, 1, 2, 2).expand(3000, 1, 2, 2)
    moved = (random_transpose(x, p=1 / 3) != x).flatten(1).any(1).float().mean()
    assert 0.30 < moved < 0.37


def test_augment_args_reach_the_op_and_are_checked_when_the_recipe_is_read():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 8, 8)
    assert torch.equal(build_augment(["transpose"], {"transpose": {"p": 1.0}})(x), x.transpose(2, 3))
    with pytest.raises(ValueError, match="pass the network's mean and std"):
        build_augment(["hsl_jitter"])
    cfg = TrainConfig(augment=["shift_scale_rotate", "transpose"], augment_args={"shift_scale_rotate": {"scale": [0.9, 1.2]}})
    assert build_augment(cfg.augment, cfg.augment_args, MEAN, STD)(x).shape == x.shape
    with pytest.raises(DataError, match="unknown parameters"):
        TrainConfig(augment=["transpose"], augment_args={"transpose": {"prob": 0.5}})
    with pytest.raises(DataError, match="does not name"):
        TrainConfig(augment=["transpose"], augment_args={"hsl_jitter": {"h": 5}})
