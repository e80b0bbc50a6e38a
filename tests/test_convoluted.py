"""2nd place (convoluted): feature store, fusion heads, rank/count routing, full recipes, a tiny run."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from common.bson_index import load_index
from common.bson_reader import iter_products
from common.config import load_yaml
from common.errors import DataError
from common.models import ModelSpec, create_model, normalization
from common.paths import REPO, WorkDir
from common.predictions import TopK, load_topk, validate_topk
from common.train import build_optimizer, masked_cross_entropy
from solutions.convoluted.base import BaseConfig, classifier_as_linear, ranks_in_batch
from solutions.convoluted.feature_store import FeatureStore, FeatureWriter, dequantise
from solutions.convoluted.fuse import FuseConfig, head_for
from solutions.convoluted.heads import create_head
from solutions.convoluted.rank_count import (
    COUNT_MODELS,
    RANK_MODELS,
    probs_by_route,
    route,
)

CONFIGS = REPO / "solutions" / "convoluted" / "configs"


# ----------------------------------------------------------------------------- feature store


def _write_store(directory: Path, n_imgs: np.ndarray, rows: np.ndarray, dim: int = 6, flips: int = 2, clip: float = 3.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    writer = FeatureWriter(directory, "train", n_imgs, dim, ["orig", "hflip"][:flips], clip, "toy")
    truth = {}
    for row in rows[::-1]:  # any order
        feats = rng.uniform(-1, 4, (n_imgs[row], flips, dim)).astype(np.float32)
        ok = np.ones(n_imgs[row], bool)
        ok[-1] = n_imgs[row] < 3  # the last image of a 3+ image product is "corrupt"
        writer.write(np.full(n_imgs[row], row), np.arange(n_imgs[row]), feats, ok)
        truth[row] = (feats, ok)
    return writer.commit(rows), truth


def test_feature_store_round_trip_by_product_padded_to_four_views(tmp_path):
    n_imgs = np.array([1, 3, 0, 4, 2, 5])
    rows = np.array([0, 1, 3, 4, 5])
    store, truth = _write_store(tmp_path, n_imgs, rows)
    reopened = FeatureStore(tmp_path, "train")
    offsets = reopened.check_index(n_imgs)
    feats, mask = reopened.views(offsets, n_imgs, np.array([3, 0, 5]))
    assert feats.shape == (3, 4, 2, 6) and feats.dtype == np.uint8
    assert mask.tolist() == [[True, True, True, False], [True, False, False, False], [True, True, True, True]]
    real, ok = truth[3]
    assert np.abs(dequantise(feats[0], 3.0) - np.clip(real, 0, 3)).max() <= 3.0 / 255 / 2 + 1e-6  # half a quantisation step
    assert not feats[1, 1:].any()  # padding views are zeros
    assert np.array_equal(feats[2], reopened.views(offsets, n_imgs, np.array([5]))[0][0])  # 5 images: cut to 4 views
    assert reopened.rows.tolist() == rows.tolist()


def test_feature_store_refuses_incomplete_or_mismatched_files(tmp_path):
    n_imgs = np.array([2, 1])
    writer = FeatureWriter(tmp_path, "train", n_imgs, 4, ["orig"], 3.0, "toy")
    writer.write(np.array([0, 0]), np.array([0, 1]), np.ones((2, 1, 4)), np.ones(2, bool))
    with pytest.raises(DataError, match="no feature store"):  # crashed before commit
        FeatureStore(tmp_path, "train")
    writer.commit(np.array([0, 1]))
    with pytest.raises(DataError, match="index has"):
        FeatureStore(tmp_path, "train").check_index(np.array([2, 2]))
    path = tmp_path / "train.u8"
    path.write_bytes(path.read_bytes()[:5])  # cut in half
    with pytest.raises(DataError, match="truncated"):
        FeatureStore(tmp_path, "train")


def test_ranks_in_batch_of_whole_products():
    assert ranks_in_batch(np.array([0, 0, 0, 1, 2, 2])).tolist() == [0, 1, 2, 0, 0, 1]


# ----------------------------------------------------------------------------- heads


@pytest.mark.parametrize("name", ["fusion_gated", "fusion_max"])
def test_fusion_heads_ignore_masked_views(name):
    torch.manual_seed(0)
    head = create_head(name, 16, 7, hidden=32).eval()
    x = torch.randn(3, 4, 16).abs()
    mask = torch.tensor([[True, True, False, False], [True, False, False, False], [True, True, True, True]])
    out = head(x, mask)
    assert out.shape == (3, 7) and torch.isfinite(out).all()
    garbage = x.clone()
    garbage[~mask] = 100.0  # whatever sits in a missing view must not matter
    assert torch.allclose(head(garbage, mask), out, atol=1e-5)
    changed = x.clone()
    changed[0, 1] += 1.0  # a real view does matter
    assert not torch.allclose(head(changed, mask)[0], out[0])
    assert torch.isfinite(head(x, torch.zeros(3, 4, dtype=torch.bool))).all()  # no view at all


def test_gated_head_learns_from_views():
    torch.manual_seed(0)
    head = create_head("fusion_gated", 8, 2, hidden=16, drop_rate=0.0)
    x = torch.rand(64, 4, 8)
    y = (x[:, 0, 0] > 0.5).long()
    mask = torch.ones(64, 4, dtype=torch.bool)
    opt = torch.optim.Adam(head.parameters(), 1e-2)
    for _ in range(200):
        loss = torch.nn.functional.cross_entropy(head(x, mask), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (head(x, mask).argmax(1) == y).float().mean() > 0.9


# ----------------------------------------------------------------------------- rank / count


def test_rank_and_count_routing():
    rank_i, count_i = route(np.array([0, 1, 2, 3, 0, 0, 4]), np.array([4, 4, 4, 4, 1, 2, 5]))
    assert [RANK_MODELS[i] for i in rank_i] == ["rank1", "rank2_4", "rank2_4", "rank2_4", "rank1", "rank1", "rank2_4"]
    assert [COUNT_MODELS[i] for i in count_i] == ["count4"] * 4 + ["count1", "count2", "count4"]


def test_each_image_goes_through_its_routed_model():
    models = []
    for i in range(4):  # model i always says class i
        m = torch.nn.Linear(3, 4)
        torch.nn.init.zeros_(m.weight)
        with torch.no_grad():
            m.bias.copy_(torch.nn.functional.one_hot(torch.tensor(i), 4) * 10.0)
        models.append(m)
    which = np.array([2, 0, 3, 3, 1])
    probs = probs_by_route(torch.nn.ModuleList(models), torch.from_numpy(which), torch.randn(5, 3))
    assert probs.argmax(1).tolist() == which.tolist()


# ----------------------------------------------------------------------------- full recipes


BASES = sorted(CONFIGS.glob("base_*.yaml"))


@pytest.mark.parametrize("recipe", BASES, ids=lambda p: p.stem)
def test_full_base_net_builds_and_steps(recipe):
    from common.augment import build_augment

    cfg = BaseConfig(**{**load_yaml(recipe, BaseConfig), "pretrained": None})
    model = create_model(ModelSpec(cfg.model, 5270))
    optimizer = build_optimizer(cfg, model)
    augment = build_augment(cfg.augment, cfg.augment_args, *normalization(model)) or (lambda t: t)
    x = augment(torch.randn(2, 3, 80, 80))  # tiny input (InceptionV3 needs >= 75 px)
    logits = model(x)
    loss = masked_cross_entropy(logits, torch.tensor([0, 5269]), torch.ones(2, dtype=torch.bool), cfg.label_smoothing)
    loss.backward()
    optimizer.step()
    assert logits.shape == (2, 5270) and torch.isfinite(loss)
    assert classifier_as_linear(model)(model.forward_head(model.forward_features(x), pre_logits=True)).shape == (2, 5270)


@pytest.mark.parametrize("recipe", sorted(CONFIGS.glob("fuse_*.yaml")), ids=lambda p: p.stem)
def test_full_fusion_head_builds_and_steps(recipe):
    cfg = FuseConfig(**load_yaml(recipe, FuseConfig))
    dims = {"base_dpn92": 2688, "base_seresnext101": 2048, "base_b_inception_resnet_v2": 1536, "base_b_xception": 2048, "base_b_inception_v3": 2048}
    copies = 2  # the base nets store the original and the flip
    head = head_for(cfg, sum(dims[b] for b in cfg.bases), copies, 5270)
    optimizer = build_optimizer(cfg, head)
    in_dim = sum(dims[b] for b in cfg.bases) * (copies if cfg.flips == "concat" else 1)
    logits = head(torch.rand(2, 4, in_dim) * 3, torch.tensor([[True, False, False, False], [True] * 4]))
    torch.nn.functional.cross_entropy(logits, torch.tensor([1, 5000])).backward()
    optimizer.step()
    assert logits.shape == (2, 5270)


def test_member_b_head_is_selu_from_lecun_normal_without_input_dropout():
    """miha/layer2_models: Dense(10000, selu, lecun_normal) per view, max, Dropout(0.3), classes."""
    cfg = FuseConfig(**load_yaml(CONFIGS / "fuse_b_inception_resnet_v2.yaml", FuseConfig))
    head = head_for(cfg, 1536, 2, 5270)
    dense = head.per_view[1]
    assert isinstance(head.per_view[2], torch.nn.SELU) and head.per_view[0].p == 0.0 and head.classifier[0].p == 0.3
    assert dense.out_features == 10000 and abs(dense.weight.std().item() - 1536**-0.5) < 2e-3 and not dense.bias.any()
    mini = head_for(FuseConfig(model="fusion_max", hidden=64, drop_rate=0.5), 32, 2, 10)  # the mini head as before
    assert isinstance(mini.per_view[2], torch.nn.ReLU) and mini.per_view[0].p == 0.5
    with pytest.raises(ValueError, match="unknown activation"):
        head_for(FuseConfig(model="fusion_max", activation="gelu"), 32, 2, 10)


def test_member_b_base_nets_see_random_crops_in_training_and_the_centre_one_when_predicting(write_bson):
    from common.bson_index import build_index
    from common.bson_reader import BsonReader
    from common.data import ImageDataset, crop_window, image_table

    rgb = np.arange(18 * 18 * 3, dtype=np.uint8).reshape(18, 18, 3)
    assert np.array_equal(crop_window(rgb, 16, None), rgb[1:17, 1:17])  # x[10:170] of 180 at 1/10 scale
    corners = {crop_window(rgb, 16, np.random.default_rng(s))[0, 0, 0] for s in range(50)}
    assert len(corners) > 3  # random windows
    import cv2

    noise = np.random.default_rng(0).integers(0, 256, (36, 36, 3), dtype=np.uint8)
    path = write_bson("crop.bson", [(1, [cv2.imencode(".jpg", noise)[1].tobytes()], None)])
    reader = BsonReader(path, build_index(path, progress=False))
    table = image_table(reader.index.n_imgs, np.arange(len(reader.index)))
    train = ImageDataset(reader, table, None, 36, crop=32, random_crop=True)
    test = ImageDataset(reader, table, None, 36, crop=32)
    assert train[0][0].shape == test[0][0].shape == (32, 32, 3)
    assert np.array_equal(test[(0, 1)][0], test[(0, 2)][0]) and not all(np.array_equal(train[(0, 1)][0], train[(0, s)][0]) for s in range(2, 8))
    with pytest.raises(DataError, match="crop 200 needs"):
        BaseConfig(crop=200)
    with pytest.raises(DataError, match="decode_on: workers"):
        BaseConfig(crop=160, decode_on="device")


# ----------------------------------------------------------------------------- the sqrt blend


def test_sqrt_blend_lets_agreeing_members_outvote_a_confident_one():
    from common.predictions import power_mean

    ids = np.array([7])
    a = TopK(ids, np.array([[0, 1, -1]], np.int16), np.array([[0.9, 0.1, 0.0]], np.float16))
    b = TopK(ids, np.array([[1, 2, -1]], np.int16), np.array([[0.6, 0.4, 0.0]], np.float16))
    assert power_mean([a, b], 3).labels[0, 0] == 0  # plain mean: 0.45 vs 0.35
    sqrt = power_mean([a, b], 3, power=0.5)
    assert sqrt.labels[0, 0] == 1  # sqrt: (0.95 + 0) / 2 < (0.32 + 0.77) / 2
    assert float(sqrt.probs[0, 0]) == pytest.approx(((0.1**0.5 + 0.6**0.5) / 2) ** 2, abs=2e-3)


# ----------------------------------------------------------------------------- a tiny end-to-end run


def test_tiny_run_base_heads_rank_count_and_team_blend(tiny_work, tmp_path, monkeypatch):
    import solutions.convoluted.fuse as fuse
    from solutions.convoluted.submit import main as submit
    from solutions.convoluted.train import main

    work = WorkDir(tiny_work)
    folds = pd.read_csv(work.folds).set_index("_id")["fold"]
    seen_by_fold = {}
    real_fit = fuse.fit

    def recording_fit(cfg, model, train_set, *args, **kwargs):  # which products each head trains on
        seen_by_fold.setdefault(cfg.name, []).append(train_set.dataset.rows.copy())
        return real_fit(cfg, model, train_set, *args, **kwargs)

    monkeypatch.setattr(fuse, "fit", recording_fit)
    common = "solution: convoluted\ninput_size: 32\nepochs: 2\nbatch_size: 8\nnum_workers: 0\namp: none\ntopk: 5\neval_batch_size: 16\n"
    recipes = {
        "base": "stage: base\nname: tb\nmodel: resnet10t\nlr: 0.01\naugment: [shift_scale_rotate, rot90]\n",
        # the recorded FcNet3 input (each view's stored copies side by side), its second hidden layer and dropout
        "gated": "stage: fuse\nname: tg\nmodel: fusion_gated\nbases: [tb]\nhidden: 32\nhidden2: 16\nhidden_drop: 0.1\nflips: concat\ntta: [orig]\n"
                 "lr: 3.0e-3\nteam_weight: 0.53\n",
        "max": "stage: fuse\nname: tm\nmodel: fusion_max\nbases: [tb]\nhidden: 32\nlr: 3.0e-3\nteam_weight: 0.23\n",
        "rc": "stage: rank_count\nname: trc\nmodel: linear\nbase: tb\nlr: 1.0e-3\nteam_weight: 0.23\n",
    }
    summaries = {}
    for key, text in recipes.items():
        path = tmp_path / f"{key}.yaml"
        path.write_text(common + text)
        summaries[key] = main(["--config", str(path), "--work", str(tiny_work)])

    ids = load_index(work.index("train")).ids
    for k in (0, 1):  # honesty: fold k's head learnt only from products outside fold k
        assert (folds.loc[ids[seen_by_fold["tg"][k]]] != k).all()
        store = FeatureStore(work.features("convoluted", "tb", k), "train")
        assert set(ids[store.rows]) == set(folds.index)  # heads' training rows + fold k's own
    for key, source in (("base", "convoluted_tb"), ("gated", "convoluted_tg"), ("max", "convoluted_tm"), ("rc", "convoluted_trc")):
        oof = load_topk(work.preds(source) / "oof.npz")
        validate_topk(oof, source)
        assert oof.ids.tolist() == sorted(folds.index.tolist())
        assert len(load_topk(work.preds(source) / "test.npz")) == 16
    assert summaries["base"]["oof_product_accuracy"] > 0.5
    assert summaries["gated"]["oof_product_accuracy"] > 0.5
    assert set(summaries["rc"]["oof_variants"]) == {"base", "rank", "count", "rank_count"}
    assert summaries["rc"]["oof_variants"]["rank_count"] == pytest.approx(summaries["rc"]["oof_product_accuracy"], abs=1e-4)
    report = submit(["--work", str(tiny_work)])
    assert report["weights"] == [0.53, 0.23, 0.23] and report["power"] == 0.5 and report["kind"] == "team blend"
    sub = pd.read_csv(work.submissions / "convoluted.csv.gz")
    assert len(sub) == 16 and report["oof_product_accuracy"] > 0.5
    # the base net retrained (another LR, --force): its heads are stale, never "up to date" over the old features
    (tmp_path / "base.yaml").write_text(common + recipes["base"].replace("lr: 0.01", "lr: 0.02"))
    main(["--config", str(tmp_path / "base.yaml"), "--work", str(tiny_work), "--force"])
    with pytest.raises(DataError, match=r"tb fold 0 config \(.*\) changed"):
        main(["--config", str(tmp_path / "gated.yaml"), "--work", str(tiny_work)])


# ----------------------------------------------------------------------------- augmentations


def test_augmentations_keep_shape_and_content():
    from common.augment import build_augment, random_rot90, shift_scale_rotate

    torch.manual_seed(0)
    x = torch.rand(8, 3, 16, 16)
    assert torch.equal(shift_scale_rotate(x, p=0.0), x)  # p=0: untouched
    moved = shift_scale_rotate(x, p=1.0)
    assert moved.shape == x.shape and not torch.allclose(moved, x)
    turned = random_rot90(x)
    for a, b in zip(x, turned):  # each sample is one of its four rotations
        assert any(torch.equal(torch.rot90(a, k, dims=(1, 2)), b) for k in range(4))
    cl = x.contiguous(memory_format=torch.channels_last)
    assert build_augment(["shift_scale_rotate", "rot90"])(cl).is_contiguous(memory_format=torch.channels_last)
    assert build_augment([]) is None
    with pytest.raises(ValueError, match="unknown augmentations"):
        build_augment(["mixup"])
    with pytest.raises(DataError, match="augment"):
        BaseConfig(augment=["mixup"])


def test_flips_concat_puts_every_stored_copy_of_a_view_side_by_side():
    """The team's FcNet3 input: per view [f, flip(f)] (2 x D), one pass at prediction, no TTA mean."""
    from solutions.convoluted.fuse import FusionDataset

    class Views:  # two products, 4 padded views, 2 stored copies (orig, hflip), 3 features
        def read(self, rows):
            feats = np.arange(len(rows) * 4 * 2 * 3, dtype=np.uint8).reshape(len(rows), 4, 2, 3) + 10 * rows[:, None, None, None]
            return feats.astype(np.uint8), np.ones((len(rows), 4), bool)

    x, mask, _, _ = FusionDataset(Views(), np.array([0, 1]), None, "concat")[1]
    raw = Views().read(np.array([1]))[0][0]
    assert x.shape == (4, 6) and torch.equal(x[2], torch.from_numpy(np.concatenate([raw[2, 0], raw[2, 1]])))
    assert head_for(FuseConfig(name="c", bases=["b"], flips="concat", tta=["orig"], hidden=8), 3, 2, 5).gate[0].in_features == 6
    with pytest.raises(DataError, match="tta must be"):
        FuseConfig(name="c", bases=["b"], flips="concat", tta=["orig", "hflip"])
    with pytest.raises(DataError, match="flips"):
        FuseConfig(name="c", bases=["b"], flips="stack")


# ----------------------------------------------------------------------------- member C, whole nets


class _Constant(torch.nn.Module):
    """A 'net' whose softmax is a fixed distribution over 3 classes, whatever the image."""

    def __init__(self, probs):
        super().__init__()
        self.num_classes, self.logits = 3, torch.tensor(probs).log()

    def forward(self, x):
        return self.logits.expand(x.shape[0], 3)


def test_member_c_combines_rank_count_and_base_as_the_team_did():
    """1 image: rank1 + count1 + 1.0 x base; 2-4 images: rank + count + 0.1 x base; mean over crops."""
    from solutions.convoluted.rank_count_net import MemberC, RankCountNetConfig

    cfg = RankCountNetConfig(init_from="b", tta_crops=[3, 2, 1, 1], tta=["orig"])
    spec = {"rank1": [0.8, 0.1, 0.1], "rank2_4": [0.1, 0.8, 0.1], **{f"count{k}": [0.1, 0.1, 0.8] for k in range(1, 5)}}
    net = MemberC({k: _Constant(v) for k, v in spec.items()}, _Constant([1 / 3, 1 / 3, 1 / 3]), cfg)
    x = torch.rand(3, 3, 16, 16)
    p = net(x, torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1])).exp()
    base = torch.full((3,), 1 / 3)
    assert torch.allclose(p[0], (torch.tensor(spec["rank1"]) + torch.tensor(spec["count1"]) + base) / 3, atol=1e-5)
    assert torch.allclose(p[1], (torch.tensor(spec["rank1"]) + torch.tensor(spec["count2"]) + 0.1 * base) / 2.1, atol=1e-5)
    assert torch.allclose(p[2], (torch.tensor(spec["rank2_4"]) + torch.tensor(spec["count2"]) + 0.1 * base) / 2.1, atol=1e-5)
    with pytest.raises(DataError, match="init_from"):
        RankCountNetConfig(tta_crops=[12, 8, 6, 6])


def test_tiny_run_of_member_c_as_whole_nets(tiny_work, tmp_path):
    """The member's own base (an image recipe), six whole-net specialists from it, multi-crop TTA."""
    from solutions.convoluted.train import main

    common = "solution: convoluted\ninput_size: 32\nbatch_size: 8\nnum_workers: 0\namp: none\ntopk: 5\neval_batch_size: 16\nfolds: [0]\n"
    (tmp_path / "b.yaml").write_text(common + "stage: image\nname: tcb\nmodel: resnet10t\nepochs: 1\noptimizer: sgd\nlr: 0.05\naugment: [zoom_crop]\n")
    (tmp_path / "c.yaml").write_text(common + "stage: rank_count_net\nname: tcn\nmodel: resnet10t\ninit_from: tcb\nepochs: 1\nlr: 0.01\n"
                                      "schedule: piecewise\nlr_milestones: [1]\nlr_values: [0.001]\ntta: [orig]\ntta_crops: [3, 2, 1, 1]\n"
                                      "augment: [zoom_crop]\nteam_weight: 0.23\n")
    main(["--config", str(tmp_path / "b.yaml"), "--work", str(tiny_work)])
    summary = main(["--config", str(tmp_path / "c.yaml"), "--work", str(tiny_work)])
    work = WorkDir(tiny_work)
    fold = work.model_dir("convoluted", "tcn", 0)
    assert {"rank1", "rank2_4", "count1", "count2"} <= {p.name for p in fold.iterdir() if p.is_dir()}  # each specialist's own fit
    oof = load_topk(work.preds("convoluted_tcn") / "oof.npz")
    folds = pd.read_csv(work.folds)
    assert sorted(oof.ids) == sorted(folds.loc[folds["fold"] == 0, "_id"]) and summary["oof_product_accuracy"] > 0.3
    validate_topk(oof, "member C oof")  # probabilities in [0, 1], non-increasing along K
    assert (oof.probs.astype(np.float32).sum(1) <= 1.01).all()  # the geometric mean, renormalised
    # new products (here the test file again) through the trained folds: the same predictions, crops included
    from ensembling.predict import Predictor
    from ensembling.predict.products import NewProduct

    test_bson = json.loads((work.root / "dataset.json").read_text())["test"]
    products = [NewProduct(str(p.product_id), p.images) for p in iter_products(test_bson) if p.images]
    predictor = Predictor(work, "convoluted_tcn")  # and, loaded first, the image recipe it starts from
    preds, names = predictor.predict_sources(products)
    predictor.close()
    for source in ("convoluted_tcb", "convoluted_tcn"):
        ran, new = load_topk(work.preds(source) / "test.npz"), preds[source]
        order = np.argsort([int(names[i]) for i in new.ids], kind="stable")
        again = new.take(order)
        assert (ran.ids == np.array([int(names[i]) for i in again.ids])).all() and (ran.top1 == again.top1).all(), source
        assert np.abs(ran.probs.astype(np.float32) - again.probs.astype(np.float32)).max() < 2e-3, source
