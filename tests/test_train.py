"""Training core: schedules, full recipes step once, exact resume, fold OOF/test coverage, submission."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from common.config import TrainConfig, load_yaml
from common.data import ImageDataset, collate_images, image_table
from common.errors import DataError
from common.models import ModelSpec, create_model, normalization
from common.paths import REPO, WorkDir
from common.predictions import load_topk
from common.recipe import IMAGE, run_recipe
from common.train import Runtime, eval_loader, fit, image_batch, lr_factor, masked_cross_entropy, train_loader
from common.workdata import load_fold_data

DYLAN_FULL = sorted(p for p in (REPO / "solutions/dylan/configs").glob("*.yaml") if not p.stem.startswith("mini"))
CPU = Runtime(torch.device("cpu"))


def small_cfg(**kw) -> TrainConfig:
    base = dict(solution="test", name="tiny", model="resnet10t", input_size=32, epochs=2, batch_size=8, num_workers=0,
                optimizer="nadam", lr=3e-3, schedule="step", lr_milestones=[1], label_smoothing=0.1, amp="none",
                eval_batch_size=16, topk=5, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def test_lr_schedules():
    step = TrainConfig(lr=1e-4, schedule="step", lr_milestones=[9, 13], lr_gamma=0.2, epochs=15)
    assert [round(lr_factor(step, e) * step.lr, 12) for e in (0, 8.99, 9, 12.5, 13, 14.9)] == [1e-4, 1e-4, 2e-5, 2e-5, 4e-6, 4e-6]
    cos = TrainConfig(schedule="cosine", epochs=10)
    assert lr_factor(cos, 0) == pytest.approx(1) and lr_factor(cos, 5) == pytest.approx(0.5) and lr_factor(cos, 10) == pytest.approx(0)
    warm = TrainConfig(schedule="constant", warmup_epochs=2)
    assert lr_factor(warm, 1) == pytest.approx(0.5) and lr_factor(warm, 3) == 1
    with pytest.raises(DataError, match="schedule"):
        TrainConfig(schedule="exotic")
    piece = TrainConfig(lr=1e-3, schedule="piecewise", lr_milestones=[4, 7], lr_values=[5e-4, 2.5e-5], epochs=9)  # member B's hand-set LRs
    assert [round(lr_factor(piece, e) * piece.lr, 12) for e in (0, 3.9, 4, 6.9, 7, 8.9)] == [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-5, 2.5e-5]
    assert TrainConfig(schedule="piecewise", lr_milestones=[2], lr_values=["4e-05"]).lr_values == [4e-05]  # YAML's 4e-05 is a string
    with pytest.raises(DataError, match="one lr_values entry per lr_milestones"):
        TrainConfig(schedule="piecewise", lr_milestones=[4, 7], lr_values=[5e-4])


@pytest.mark.parametrize("recipe", DYLAN_FULL, ids=lambda p: p.stem)
def test_full_recipe_builds_with_5270_classes_and_steps(recipe):
    """The GPU recipes themselves, on a 2-image batch at 64 px (pretrained weights off)."""
    from common.augment import build_augment
    from common.train import build_optimizer

    cfg = TrainConfig(**{**load_yaml(recipe), "pretrained": None})
    model = create_model(ModelSpec(cfg.model, 5270, None, cfg.drop_rate))
    optimizer = build_optimizer(cfg, model)
    augment = build_augment(cfg.augment, cfg.augment_args, *normalization(model)) or (lambda t: t)
    x, y = augment(torch.randn(2, 3, 64, 64)), torch.tensor([0, 5269])
    before = [p.detach().clone() for p in model.parameters()][-1]
    logits = model(x)
    loss = masked_cross_entropy(logits, y, torch.ones(2, dtype=torch.bool), cfg.label_smoothing)
    loss.backward()
    optimizer.step()
    assert logits.shape == (2, 5270) and torch.isfinite(loss)
    assert not torch.equal(before, list(model.parameters())[-1])


def test_masked_loss_ignores_invalid():
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [9.0, -9.0]])
    target = torch.tensor([0, 1, 1])
    valid = torch.tensor([True, True, False])
    assert masked_cross_entropy(logits, target, valid, 0.0) == pytest.approx(masked_cross_entropy(logits[:2], target[:2], valid[:2], 0.0))


def _fit(tmp, work, cfg):
    data = load_fold_data(WorkDir(work))
    torch.manual_seed(cfg.seed)
    model = create_model(ModelSpec(cfg.model, len(data.tree)))
    mean, std = normalization(model)
    train_rows, val_rows = data.rows(0)
    make = lambda rows, train: ImageDataset(data.train, image_table(data.train.index.n_imgs, rows), data.labels[rows], cfg.input_size, hflip=train)  # noqa: E731
    train, val = train_loader(make(train_rows, True), cfg, CPU, collate_images), eval_loader(make(val_rows, False), cfg, CPU, collate_images)
    trained = fit(cfg, model, train, val, image_batch(mean, std, False), tmp, CPU)
    assert trained is model  # the model in memory is the trained one: nothing reloads last.pt
    return model


def test_resume_continues_exactly(tiny_work, tmp_path):
    """2 epochs straight == 1 epoch, stop, resume for the 2nd (optimizer, schedule, RNG restored)."""
    straight = _fit(tmp_path / "a", tiny_work, small_cfg(epochs=2, drop_rate=0.2))
    _fit(tmp_path / "b", tiny_work, small_cfg(epochs=1, drop_rate=0.2))
    resumed = _fit(tmp_path / "b", tiny_work, small_cfg(epochs=2, drop_rate=0.2))
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    history = pd.read_csv(tmp_path / "b" / "summary.csv")
    assert history["epoch"].tolist() == [0, 1] and history.equals(pd.read_csv(tmp_path / "a" / "summary.csv").assign(seconds=history["seconds"], samples_per_s=history["samples_per_s"]))


def test_corrupt_checkpoint_is_named(tiny_work, tmp_path):
    _fit(tmp_path, tiny_work, small_cfg(epochs=1))
    last = tmp_path / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.raises(RuntimeError, match="last.pt: unreadable checkpoint"):
        _fit(tmp_path, tiny_work, small_cfg(epochs=2))


def test_recipe_oof_covers_every_product_once_and_dylan_submits(tiny_work, capsys):
    from solutions.dylan.submit import main as submit_main

    work = WorkDir(tiny_work)
    cfg = small_cfg(solution="dylan", name="tiny_a", epochs=2)
    summary = run_recipe(cfg, work, IMAGE)
    folds = pd.read_csv(work.folds)
    oof = load_topk(work.preds("dylan_tiny_a") / "oof.npz")
    assert oof.ids.tolist() == sorted(folds["_id"].tolist())  # every product of folds.csv, once
    test = load_topk(work.preds("dylan_tiny_a") / "test.npz")
    data = load_fold_data(work)
    assert test.ids.tolist() == sorted(np.asarray(data.test.index.ids).tolist())
    assert np.allclose(test.probs.astype(np.float32).sum(1), 1, atol=0.02)  # 6 classes, K=5: nearly all the mass
    assert summary["oof_product_accuracy"] > 0.5  # colours are easy: far above the 1/6 prior
    for k in (0, 1):
        fold_dir = work.model_dir("dylan", "tiny_a", k)
        assert {"last.pt", "summary.csv", "config.yaml", "oof.npz", "test.npz"} <= {p.name for p in fold_dir.iterdir()}
    assert summary["kind"] == "model" and summary["solution"] == "dylan" and summary["recipe"]["name"] == "tiny_a"
    run_recipe(small_cfg(solution="dylan", name="tiny_b", epochs=1, model="mobilenetv3_small_050", seed=5), work, IMAGE)
    run_recipe(small_cfg(solution="dylan", name="tiny_c", epochs=1, ablation=True), work, IMAGE)  # reported, never blended
    run_recipe(small_cfg(solution="dylan", name="tiny_d", epochs=1, folds=[0], baseline=True), work, IMAGE)  # a profile's control: the same
    assert json.loads((work.preds("dylan_tiny_d") / "summary.json").read_text())["kind"] == "ablation"
    report = submit_main(["--work", str(tiny_work)])
    assert report["members"] == ["dylan_tiny_a", "dylan_tiny_b"] and report["kind"] == "solution blend"
    sub = pd.read_csv(work.submissions / "dylan.csv.gz")
    assert len(sub) == len(data.test.index) and report["test_accuracy"] is not None
    assert "OOF product accuracy" in capsys.readouterr().out


def test_finished_folds_are_skipped(tiny_work):
    work = WorkDir(tiny_work)
    cfg = small_cfg(solution="dylan", name="skip", epochs=1, folds=[0])
    run_recipe(cfg, work, IMAGE)
    stamp = (work.model_dir("dylan", "skip", 0) / "oof.npz").stat().st_mtime_ns
    run_recipe(cfg, work, IMAGE)
    assert (work.model_dir("dylan", "skip", 0) / "oof.npz").stat().st_mtime_ns == stamp


def test_a_changed_recipe_or_data_never_reuses_a_finished_fold(tiny_work):
    """The recipe changed (another model) or the folds changed: the finished fold used to be served
    under the new recipe's name; now the run stops naming the difference, and --force retrains."""
    work = WorkDir(tiny_work)
    cfg = small_cfg(solution="dylan", name="stale", epochs=1, folds=[0])
    run_recipe(cfg, work, IMAGE)
    fold = work.model_dir("dylan", "stale", 0)
    stamp = (fold / "oof.npz").stat().st_mtime_ns
    run_recipe(small_cfg(solution="dylan", name="stale", epochs=1, folds=[0], num_workers=1), work, IMAGE)  # loader only: reused
    assert (fold / "oof.npz").stat().st_mtime_ns == stamp
    other = small_cfg(solution="dylan", name="stale", epochs=1, folds=[0], model="mobilenetv3_small_050")
    with pytest.raises(DataError, match=r"model: 'resnet10t' -> 'mobilenetv3_small_050'.*--force"):
        run_recipe(other, work, IMAGE)
    summary = run_recipe(other, work, IMAGE, force=True)
    assert summary["model"] == "mobilenetv3_small_050" and (fold / "oof.npz").stat().st_mtime_ns != stamp
    original = work.folds.read_bytes()
    folds = pd.read_csv(work.folds)
    folds.loc[:3, "fold"] = 1 - folds.loc[:3, "fold"]
    folds.to_csv(work.folds, index=False)
    try:
        with pytest.raises(DataError, match=r"folds \(.*folds.csv\) changed"):
            run_recipe(other, work, IMAGE)
    finally:
        work.folds.write_bytes(original)  # the fixture's folds, for the tests after this one


def test_resume_refuses_a_checkpoint_of_another_recipe(tiny_work, tmp_path):
    _fit(tmp_path, tiny_work, small_cfg(epochs=1, lr=1e-3))
    _fit(tmp_path, tiny_work, small_cfg(epochs=2, lr=1e-3))  # a longer run of the same recipe: resumes
    with pytest.raises(DataError, match=r"last.pt: a checkpoint of another recipe \(lr: 0.001 -> 0.01\)"):
        _fit(tmp_path, tiny_work, small_cfg(epochs=3, lr=1e-2))


def test_corrupt_images_are_masked_not_fatal(write_bson):
    from common.bson_index import build_index
    from common.bson_reader import BsonReader
    from common.infer import predict_images
    from tests.conftest import solid_jpeg

    path = write_bson("bad.bson", [(1, [b"\xff\xd8 broken", solid_jpeg(1)], None), (2, [b""], None), (3, [solid_jpeg(3)], None)])
    reader = BsonReader(path, build_index(path, progress=False))
    table = image_table(reader.index.n_imgs, np.arange(3))
    ds = ImageDataset(reader, table, None, 32)
    assert [ds[i][3] for i in range(len(ds))] == [False, True, False, True]
    cfg = small_cfg(topk=3)
    model = create_model(ModelSpec(cfg.model, 4))
    preds = predict_images(model, reader, np.arange(3), cfg, CPU, *normalization(model))
    assert preds.ids.tolist() == [1, 3]  # product 2 has no decodable image: left to the fallback
    batch = collate_images([ds[i] for i in range(4)])
    valid = image_batch(*normalization(model), False)({**batch, "label": torch.tensor([0, 0, 1, 2])}, CPU).valid
    assert valid.tolist() == [False, True, False, True]


def test_ddp_under_torchrun_two_cpu_processes(tiny_work, tmp_path):
    """DistributedDataParallel (gloo) over 2 processes: folds train, OOF still covers each product once."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    recipe = tmp_path / "ddp.yaml"
    recipe.write_text("solution: dylan\nname: ddp\nmodel: resnet10t\ninput_size: 32\nepochs: 1\nbatch_size: 8\nnum_workers: 0\n"
                      "lr: 3.0e-3\namp: none\ntopk: 5\neval_batch_size: 16\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "solutions.dylan.train", "--config", str(recipe),
                           "--work", str(tiny_work)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    work = WorkDir(tiny_work)
    oof = load_topk(work.preds("dylan_ddp") / "oof.npz")
    assert oof.ids.tolist() == sorted(pd.read_csv(work.folds)["_id"].tolist())
    history = pd.read_csv(work.model_dir("dylan", "ddp", 0) / "summary.csv")
    train_rows, _ = load_fold_data(work).rows(0)
    n_images = int(load_fold_data(work).train.index.n_imgs[train_rows].sum())
    assert history["samples"].iloc[0] == (n_images // 2 // 8) * 8 * 2  # both ranks' samples, equal shards of whole batches


def test_device_decode_path_matches_worker_path(write_bson):
    """decode_on=device (torchvision.io.decode_jpeg; nvjpeg on CUDA) checked here on the CPU."""
    from common.bson_index import build_index
    from common.bson_reader import BsonReader, iter_products
    from common.data import batch_pixels
    from common.paths import TRAIN_EXAMPLE_BSON

    import cv2

    from common.images import decode_jpeg

    real = [p.images[0] for p in list(iter_products(TRAIN_EXAMPLE_BSON))[:6]]
    png = cv2.imencode(".png", cv2.cvtColor(decode_jpeg(real[1]), cv2.COLOR_RGB2BGR))[1].tobytes()  # the device path used to drop it
    odd = [b"\xff\xd8 broken", b"", real[0][: len(real[0]) // 2], png]  # a JPEG cut in half: OpenCV alone decoded it (grey fill)
    path = write_bson("mix.bson", [(i, [img], None) for i, img in enumerate(real + odd)])
    reader = BsonReader(path, build_index(path, progress=False))
    n = len(real) + len(odd)
    table = image_table(reader.index.n_imgs, np.arange(n))
    workers = collate_images([ImageDataset(reader, table, None, 64)[i] for i in range(n)])
    device = collate_images([ImageDataset(reader, table, None, 64, device_decode=True)[i] for i in range(n)])
    a, ok_a = batch_pixels(workers, 64, torch.device("cpu"))
    b, ok_b = batch_pixels(device, 64, torch.device("cpu"))
    assert ok_a.tolist() == ok_b.tolist() == [True] * 6 + [False, False, False, True]
    good = [*range(6), 9]
    diff = (a[good].float() - b[good].float()).abs().mean()
    assert a.shape == b.shape == (n, 3, 64, 64) and diff < 4  # OpenCV area vs antialiased bilinear resize
    flipped = dict(device, flip=torch.ones(n, dtype=torch.bool))
    c, _ = batch_pixels(flipped, 64, torch.device("cpu"))
    assert torch.equal(c[:6], torch.flip(b[:6], dims=[3]))


def test_fit_and_predict_with_device_decode(tiny_work):
    work = WorkDir(tiny_work)
    summary = run_recipe(small_cfg(solution="dylan", name="devdec", epochs=1, decode_on="device", folds=[0]), work, IMAGE)
    assert summary["oof_products"] == int((pd.read_csv(work.folds)["fold"] == 0).sum())


def test_validation_sample_is_a_fixed_subset_of_the_fold():
    from common.recipe import validation_sample

    rows = np.arange(100, 300)
    assert validation_sample(rows, TrainConfig()) is rows  # 0 = every product
    a, b = validation_sample(rows, TrainConfig(val_products=50)), validation_sample(rows, TrainConfig(val_products=50))
    assert len(a) == 50 and np.array_equal(a, b) and np.isin(a, rows).all() and (np.diff(a) > 0).all()
    assert validation_sample(rows[:10], TrainConfig(val_products=50)).tolist() == rows[:10].tolist()


def test_init_from_starts_a_recipe_from_another_recipes_fold_and_keeps_the_new_blocks(tiny_work):
    """The 3rd place's SE-ResNeXt: its own fine-tuned ResNeXt plus new SE blocks (init_from)."""
    from types import SimpleNamespace

    from common.recipe import start_from_recipe
    from common.train import load_checkpoint

    work = WorkDir(tiny_work)
    se = small_cfg(solution="dylan", name="se18", model="seresnet18", epochs=1, folds=[0], init_from="plain18")
    assert se.requires() == ["plain18"]
    with pytest.raises(DataError, match="needs plain18 fold 0 first"):
        run_recipe(se, work, IMAGE)
    run_recipe(small_cfg(solution="dylan", name="plain18", model="resnet18", epochs=1, folds=[0]), work, IMAGE)
    trained = load_checkpoint(work.model_dir("dylan", "plain18", 0) / "last.pt")["model"]
    classes = trained["fc.weight"].shape[0]
    model = create_model(ModelSpec("seresnet18", classes))
    fresh_se = {k: v.clone() for k, v in model.state_dict().items() if ".se." in k}
    job = SimpleNamespace(work=work, cfg=se, fold=0, runtime=CPU)
    start_from_recipe(model, job)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in trained.items())  # every trained tensor carried over
    assert fresh_se and all(torch.equal(state[k], v) for k, v in fresh_se.items())  # the SE blocks as initialised
    with pytest.raises(DataError, match="do not fit"):
        start_from_recipe(create_model(ModelSpec("resnet10t", classes)), job)
    summary = run_recipe(se, work, IMAGE)  # and through the fold runner
    assert summary["oof_products"] > 0


def test_image_tiles_count_the_compute_an_ablation_holds_equal():
    from common.train import image_tiles

    assert image_tiles(torch.zeros(8, 3, 48, 48), 48) == 8  # single images
    assert image_tiles(torch.zeros(8, 3, 48, 3 * 48), 48) == 24  # strips of K=3 tiles
    assert image_tiles(torch.zeros(8, 3, 96, 96), 48) == 32  # 2x2 grids
    assert image_tiles(torch.zeros(8, 3, 3, 48, 48), 48) == 24  # bestfitting's [B, K, C, S, S] batches of K=3 products
    assert image_tiles((torch.zeros(8, 4, 2048), torch.ones(8, 4)), 48) == 0  # stored features are not images


def test_compile_trains_the_same_losses_and_its_checkpoint_loads_without_compile(tiny_work, tmp_path):
    """`compile: true` (torch.compile, inductor on the CPU): the losses of a few steps equal eager's
    within float tolerance, and last.pt holds the plain module's weights (no `_orig_mod.` keys)."""
    cfg = small_cfg(model="test_resnet", epochs=2, lr=1e-3)
    _fit(tmp_path / "eager", tiny_work, cfg)
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    _fit(tmp_path / "compiled", tiny_work, small_cfg(model="test_resnet", epochs=2, lr=1e-3, compile=True))
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo traced the training net (not an eager run in disguise)
    eager, compiled = (pd.read_csv(tmp_path / d / "summary.csv") for d in ("eager", "compiled"))
    assert np.allclose(compiled["train_loss"], eager["train_loss"], rtol=2e-3), (eager["train_loss"].tolist(), compiled["train_loss"].tolist())
    assert np.allclose(compiled["val_loss"], eager["val_loss"], rtol=2e-3)
    state = torch.load(tmp_path / "compiled" / "last.pt", weights_only=True)
    plain = create_model(ModelSpec("test_resnet", len(load_fold_data(WorkDir(tiny_work)).tree)))
    plain.load_state_dict(state["model"])  # strict: every key the uncompiled module's
    assert not any(k.startswith("_orig_mod") for k in state["model"])


def test_a_batch_crosses_from_its_workers_as_one_tensor(tiny_work):
    """The worker path's tiles collate HWC into one channels_last uint8 tensor; the device path's JPEGs
    into one packed tensor + offsets. Through 2 worker processes both equal the in-process batches."""
    from torch.utils.data import DataLoader

    from common.data import batch_pixels, unpack_jpegs

    data = load_fold_data(WorkDir(tiny_work))
    table = image_table(data.train.index.n_imgs, np.arange(12))
    for device_decode in (False, True):
        ds = ImageDataset(data.train, table, None, 32, hflip=True, device_decode=device_decode)
        local = [collate_images([ds[(i, i)] for i in range(b, min(b + 8, len(ds)))]) for b in range(0, len(ds), 8)]
        sampler = [[(i, i) for i in range(b, min(b + 8, len(ds)))] for b in range(0, len(ds), 8)]
        remote = list(DataLoader(ds, batch_sampler=sampler, collate_fn=collate_images, num_workers=2))
        for a, b in zip(local, remote):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        if device_decode:
            jpegs = unpack_jpegs(local[0]["jpeg"], local[0]["jpeg_offsets"])
            assert [bytes(j.numpy()) for j in jpegs] == [bytes(ds[i][0]) for i in range(8)]
        else:
            assert local[0]["pixels"].shape == (8, 3, 32, 32) and local[0]["pixels"].is_contiguous(memory_format=torch.channels_last)
        pixels, _ = batch_pixels(remote[0], 32, torch.device("cpu"))
        assert pixels.shape == (8, 3, 32, 32)
