"""Shared fixtures: the real files shipped in common/resources and small generated BSON files."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

from common.bson_format import BsonWriter  # noqa: E402
from common.bson_reader import iter_products  # noqa: E402
from common.images import encode_jpeg  # noqa: E402
from common.paths import CATEGORY_NAMES_CSV, TRAIN_EXAMPLE_BSON  # noqa: E402


@pytest.fixture(scope="session")
def sample_bson() -> Path:
    return TRAIN_EXAMPLE_BSON


@pytest.fixture(scope="session")
def category_csv() -> Path:
    return CATEGORY_NAMES_CSV


@pytest.fixture(scope="session")
def sample_products(sample_bson):
    return list(iter_products(sample_bson))


def solid_jpeg(value: int, size: int = 180) -> bytes:
    """A small distinct JPEG: a flat image whose grey level names it."""
    return encode_jpeg(np.full((size, size, 3), value % 256, np.uint8))


@pytest.fixture
def write_bson(tmp_path):
    """write_bson(name, [(id, [jpeg, ...], category_id or None), ...]) -> path."""

    def _write(name: str, products) -> Path:
        path = tmp_path / name
        with BsonWriter(path) as w:
            for pid, images, cat in products:
                w.write(pid, images, cat)
        return path

    return _write
