"""1st place (bestfitting): composition geometry, routing by image count, recipes, fold run."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from common.config import load_yaml
from common.data import ProductDataset
from common.models import ModelSpec, create_model
from common.paths import REPO, WorkDir
from common.predictions import load_topk
from common.train import Runtime, masked_cross_entropy
from common.infer import VIEWS
from solutions.bestfitting.data import ByCountBatchSampler, collate_same_count, image_count, tiles_batch
from solutions.bestfitting.layout import LAYOUTS, ByCountNet, ComposedNet, input_shape
from solutions.bestfitting.train import BestfittingConfig, main

CPU = Runtime(torch.device("cpu"))
FULL = sorted(p for p in (REPO / "solutions/bestfitting/configs").glob("*.yaml") if not p.stem.startswith("mini"))


def numbered_tiles(b: int, k: int, s: int = 8) -> torch.Tensor:
    """Tile j of product i is filled with 10*i + j: positions are readable after composition."""
    values = torch.arange(b)[:, None] * 10 + torch.arange(k)[None]
    return values[:, :, None, None, None].expand(b, k, 3, s, s).clone().float()


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_strip_geometry_and_order(k):
    out = LAYOUTS["strip"](numbered_tiles(2, k))
    assert out.shape == (2, 3, 8, 8 * k) and input_shape("strip", k, 8) == (8, 8 * k)
    for i in range(2):
        assert [int(out[i, 0, 4, 8 * j + 4]) for j in range(k)] == [10 * i + j for j in range(k)]


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_grid_geometry_and_order(k):
    out = LAYOUTS["grid"](numbered_tiles(2, k))
    assert tuple(out.shape[2:]) == input_shape("grid", k, 8)
    if k >= 3:
        cells = [int(out[1, 0, 4 + 8 * r, 4 + 8 * c]) for r in (0, 1) for c in (0, 1)]
        assert cells == [10, 11, 12, 13 if k == 4 else 0]


def test_flip_keeps_tile_order():
    tiles = numbered_tiles(1, 3)
    tiles[0, :, :, :, 0] = -1  # mark each tile's left column
    flipped = LAYOUTS["strip"](VIEWS["hflip"](tiles))  # the driver's TTA view on tiles [B, K, C, S, S]
    assert [int(flipped[0, 0, 4, 8 * j + 4]) for j in range(3)] == [0, 1, 2]  # same order of views
    assert all(int(flipped[0, 0, 4, 8 * j + 7]) == -1 for j in range(3))  # each tile mirrored in place


def test_routing_and_batches_by_count():
    n_imgs = np.array([1, 2, 2, 3, 4, 4, 4, 6, 1, 1])
    counts = image_count(n_imgs)
    assert counts.tolist() == [1, 2, 2, 3, 4, 4, 4, 4, 1, 1]  # 6 images: routed to K=4, first 4 used
    inference = ByCountBatchSampler(counts, batch_images=4, shuffle=False)
    assert sorted(i for b in inference for i, _ in b) == list(range(10))  # every product predicted
    sampler = ByCountBatchSampler(counts, batch_images=8, seed=1)
    batches = list(sampler)
    assert all(len(b) > 1 for b in batches)  # training never sees a lone product (BatchNorm)
    assert sorted(i for b in batches for i, _ in b) == [i for i in range(10) if i != 3]  # the only K=3 product
    for b in batches:
        ks = {int(counts[i]) for i, _ in b}
        assert len(ks) == 1 and len(b) <= max(1, 8 // ks.pop())
    sampler.set_epoch(1)
    assert [i for b in sampler for i, _ in b] != [i for b in batches for i, _ in b]  # reshuffled per epoch
    capped = ByCountBatchSampler(counts, batch_images=4, seed=1, max_images=6)
    assert sum(len(b) * int(counts[b[0][0]]) for b in capped) <= 6 + 4


def test_products_compose_through_the_dataset(write_bson):
    from common.bson_index import build_index
    from common.bson_reader import BsonReader
    from tests.conftest import solid_jpeg

    path = write_bson("p.bson", [(1, [solid_jpeg(10), solid_jpeg(200), solid_jpeg(90)], None), (2, [solid_jpeg(50), solid_jpeg(250), solid_jpeg(130)], None)])
    reader = BsonReader(path, build_index(path, progress=False))
    batch = collate_same_count([ProductDataset(reader, np.arange(2), None, 16)[i] for i in range(2)])
    assert batch["pixels"].shape == (2, 3, 3, 16, 16) and batch["mask"].all()
    tiles = tiles_batch((0, 0, 0), (1 / 255, 1 / 255, 1 / 255))(batch, CPU).inputs  # identity normalisation
    x = LAYOUTS["strip"](tiles)
    assert x.shape == (2, 3, 16, 48)
    assert [round(float(x[0, 0, 8, 16 * j + 8])) for j in range(3)] == pytest.approx([10, 200, 90], abs=3)


@pytest.mark.parametrize("recipe", FULL, ids=lambda p: p.stem)
def test_full_recipe_builds_at_composed_sizes_and_steps(recipe):
    from common.train import build_optimizer

    cfg = BestfittingConfig(**{**load_yaml(recipe, BestfittingConfig), "pretrained": None})
    model = ComposedNet(create_model(ModelSpec(cfg.model, 5270, head=cfg.head)), cfg.layout)
    optimizer = build_optimizer(cfg, model)
    tile = 80  # tiny tiles (InceptionResNetV2 needs >= 75 px); the composed shapes are the recipe's
    for k in (1, 4):
        raw = {"pixels": torch.randint(0, 255, (2, k, 3, tile, tile), dtype=torch.uint8), "label": torch.tensor([0, 1]), "mask": torch.ones(2, k, dtype=torch.bool)}
        x = tiles_batch((0.5,) * 3, (0.5,) * 3)(raw, CPU).inputs
        assert tuple(LAYOUTS[cfg.layout](x).shape[2:]) == input_shape(cfg.layout, k, tile)
        logits = model(x)
        loss = masked_cross_entropy(logits, torch.tensor([0, 5269]), torch.ones(2, dtype=torch.bool), cfg.label_smoothing)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        assert logits.shape == (2, 5270) and torch.isfinite(loss)


def test_fold_run_routes_every_product_to_its_k_model(tiny_work, tmp_path):
    recipe = tmp_path / "bf.yaml"
    recipe.write_text("name: tiny\nmodel: resnet10t\ninput_size: 32\nepochs: 1\nbatch_size: 8\nnum_workers: 0\nlr: 3.0e-3\n"
                      "amp: none\ntopk: 5\neval_batch_size: 16\nlayout: grid\nfinetune_epochs: 1\n")
    summary = main(["--config", str(recipe), "--work", str(tiny_work)])
    work = WorkDir(tiny_work)
    oof = load_topk(work.preds("bestfitting_tiny") / "oof.npz")
    assert oof.ids.tolist() == sorted(pd.read_csv(work.folds)["_id"].tolist())
    fold0 = work.model_dir("bestfitting", "tiny", 0)
    present = {p.name for p in fold0.iterdir()}
    assert {"shared", "oof.npz", "test.npz"} <= present and any(name.startswith("k") for name in present)
    assert set(summary["oof_by_image_count"]) <= {"1", "2", "3"} and summary["oof_product_accuracy"] > 0.4


def test_by_count_net_routes_each_batch_to_its_k_model():
    class Says(torch.nn.Module):  # a "model" that always answers its own K
        def __init__(self, k):
            super().__init__()
            self.k, self.num_classes, self.pretrained_cfg = k, 5, {}

        def forward(self, tiles):
            return torch.nn.functional.one_hot(torch.full((tiles.shape[0],), self.k), 5).float()

    net = ByCountNet({k: Says(k) for k in range(1, 5)})
    for k in range(1, 5):
        assert net(torch.zeros(3, k, 3, 4, 4)).argmax(1).tolist() == [k] * 3
