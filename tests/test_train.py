"""Training core: schedules, full recipes step once, exact resume, fold OOF/test coverage, submission."""
from __future__ import annotations

import importlib.util
import json
import re

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


def _fit(tmp, work, cfg, loaders=None):
    data = load_fold_data(WorkDir(work))
    torch.manual_seed(cfg.seed)
    model = create_model(ModelSpec(cfg.model, len(data.tree), None, cfg.drop_rate))  # dropout draws from the RNG a resume restores
    mean, std = normalization(model)
    train_rows, val_rows = data.rows(0)
    make = lambda rows, train: ImageDataset(data.train, image_table(data.train.index.n_imgs, rows), data.labels[rows], cfg.input_size, hflip=train)  # noqa: E731
    train, val = train_loader(make(train_rows, True), cfg, CPU, collate_images), eval_loader(make(val_rows, False), cfg, CPU, collate_images)
    if loaders is not None:
        loaders.append(train)
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


QUIET = dict(log_every_steps=0, log_every_seconds=0.0, log_epoch_parts=0)  # no progress line within an epoch
DATED = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
STEP_LINE = re.compile(DATED + r" test_tiny epoch (\d)/\d step (\d+)/(\d+) \(\d+ %\), epoch ETA \d+:\d\d:\d\d: [\d,]+ img/s, "
                       r"loss \d+\.\d{4} acc [01]\.\d{4}, lr \d\.\d\de-\d\d$")
EPOCH_LINE = re.compile(DATED + r" test_tiny epoch (\d)/\d done in \d+:\d\d:\d\d: train loss \d+\.\d{4} acc [01]\.\d{4}, "
                        r"val loss \d+\.\d{4} acc [01]\.\d{4}, lr \d\.\d\de-\d\d, [\d,]+ img/s$")


def _messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "cdiscount"]


def test_progress_lines_within_an_epoch_are_dated_with_rate_loss_lr_and_eta(tiny_work, tmp_path, caplog):
    """log_every_steps=2: a short dated line at steps 2, 4, ... of each epoch (not at its last step:
    the epoch line follows, dated too and no dict repr); with every cadence off, the epoch lines only."""
    caplog.set_level("INFO", logger="cdiscount")
    loaders = []
    _fit(tmp_path / "a", tiny_work, small_cfg(epochs=2, **{**QUIET, "log_every_steps": 2}), loaders)
    steps = len(loaders[0])  # accumulation 1: one optimizer step per batch
    assert steps >= 5
    lines = [m for m in _messages(caplog) if STEP_LINE.match(m)]
    assert [(int(STEP_LINE.match(m)[1]), int(STEP_LINE.match(m)[2]), int(STEP_LINE.match(m)[3])) for m in lines] == \
        [(e, k, steps) for e in (1, 2) for k in range(2, steps, 2)], _messages(caplog)
    epochs = [m for m in _messages(caplog) if " done in " in m]
    assert len(epochs) == 2 and all(EPOCH_LINE.match(m) for m in epochs) and not any("{" in m for m in epochs), epochs
    assert all(len(m) < 160 for m in lines + epochs)
    caplog.clear()
    _fit(tmp_path / "b", tiny_work, small_cfg(epochs=1, **{**QUIET, "log_epoch_parts": 2}), loaders)  # half-way: one line
    assert [int(STEP_LINE.match(m)[2]) for m in _messages(caplog) if STEP_LINE.match(m)] == [steps // 2 + steps % 2]
    caplog.clear()
    _fit(tmp_path / "c", tiny_work, small_cfg(epochs=1, **QUIET))
    assert not any(STEP_LINE.match(m) for m in _messages(caplog)) and sum(bool(EPOCH_LINE.match(m)) for m in _messages(caplog)) == 1


def test_a_progress_line_rates_and_eta_cover_the_steps_since_its_start_or_resume(caplog):
    """The ETA extrapolates the epoch's steps trained in this process (a resumed epoch: those since
    the resume); img/s and the loss cover the steps since the previous line, over every rank."""
    import time as clock
    from types import SimpleNamespace

    from common.progress import Watch

    class Figures(SimpleNamespace):
        def totals(self):
            return self.sums

    cfg = small_cfg(epochs=3, checkpoint_minutes=0.0)
    caplog.set_level("INFO", logger="cdiscount")
    watch = Watch(cfg, "dylan_x fold 1", is_main=True, world=2)
    figures = Figures(steps=20, fed=640, tiles=640, sums=(40.0, 320.0, 640))  # resumed at step 20 of 100
    watch.start_epoch(1, 100, figures, seconds=999.0)
    watch.t0 = watch.t_line = clock.monotonic() - 10.0  # 10 steps in 10 s since
    figures.steps, figures.fed, figures.tiles, figures.sums = 30, 960, 960, (40.0 + 320 * 0.5, 320.0 + 160, 960)
    watch.line(30, figures, 2.5e-4)
    (message,) = _messages(caplog)
    assert message.endswith("dylan_x fold 1 epoch 2/3 step 30/100 (30 %), epoch ETA 0:01:10: 64 img/s, loss 0.5000 acc 0.5000, lr 2.50e-04"), message
    assert re.match(DATED + " ", message)


def test_run_label_names_the_source_fold_and_part():
    from common.progress import run_label

    cfg = small_cfg(solution="bestfitting", name="strip")
    assert run_label(cfg, REPO / "work/models/bestfitting/strip/fold1/k2") == "bestfitting_strip fold 1 k2"
    assert run_label(cfg, REPO / "work/models/bestfitting/strip/fold0") == "bestfitting_strip fold 0"
    assert run_label(small_cfg(solution=""), REPO / "elsewhere") == "tiny"


def test_epochs_jsonl_holds_one_dated_object_per_epoch_matching_summary_csv(tiny_work, tmp_path):
    from datetime import datetime

    _fit(tmp_path, tiny_work, small_cfg(epochs=2, **QUIET))
    _fit(tmp_path, tiny_work, small_cfg(epochs=3, **QUIET))  # resumed: rewritten whole, no epoch twice
    records = [json.loads(line) for line in (tmp_path / "epochs.jsonl").read_text().splitlines()]
    csv_rows = pd.read_csv(tmp_path / "summary.csv")
    assert len(records) == 3 == len(csv_rows) and [r["epoch"] for r in records] == [0, 1, 2]
    dates = [datetime.fromisoformat(r["date"]) for r in records]
    assert all(d.tzinfo is not None for d in dates) and dates == sorted(dates)
    assert list(records[0]) == ["date", *csv_rows.columns]  # the CSV's columns, in its order, after the date
    pd.testing.assert_frame_equal(pd.DataFrame(records).drop(columns="date"), csv_rows, check_dtype=False)


class _Stop(Exception):
    """Stands in for a kill right after a mid-epoch checkpoint was written."""


def test_a_mid_epoch_checkpoint_resumes_at_its_step_and_ends_as_the_uninterrupted_run(tiny_work, tmp_path, monkeypatch, caplog):
    """checkpoint_minutes tiny: step.pt at every optimizer step. Stopped right after the one at
    epoch 1 step 2, the rerun starts there (only the remaining batches are trained) and ends with
    the uninterrupted run's weights, tensor for tensor, and its summary rows (dropout and flips: RNG
    and sample seeds as if never stopped; the epoch's running figures carried over)."""
    import common.train as train_mod
    from common.train import load_checkpoint

    cfg = dict(epochs=2, drop_rate=0.2, **QUIET)
    loaders = []
    straight = _fit(tmp_path / "a", tiny_work, small_cfg(**cfg, checkpoint_minutes=0.0), loaders)
    steps = len(loaders[0])
    assert not (tmp_path / "a" / "step.pt").exists()
    real_save, saved = train_mod.save_checkpoint, []

    def save_then_stop(path, state):
        real_save(path, state)
        if path.name == "step.pt":
            saved.append((state["epoch"], state["step"], state["batch"]))
            if (state["epoch"], state["step"]) == (1, 2):
                raise _Stop

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_stop)
    with pytest.raises(_Stop):
        _fit(tmp_path / "b", tiny_work, small_cfg(**cfg, checkpoint_minutes=1e-9))
    assert saved == [(0, k, k) for k in range(1, steps)] + [(1, 1, 1), (1, 2, 2)]  # every step but an epoch's last (last.pt then)
    state = load_checkpoint(tmp_path / "b" / "step.pt")  # weights_only
    assert (state["epoch"], state["step"], state["steps"], state["world"]) == (1, 2, steps, 1) and len(state["history"]) == 1
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 0
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    trained = []
    real_step = train_mod.micro_step
    monkeypatch.setattr(train_mod, "micro_step", lambda *a, **k: (trained.append(1), real_step(*a, **k))[1])
    caplog.set_level("INFO", logger="cdiscount")
    resumed = _fit(tmp_path / "b", tiny_work, small_cfg(**cfg, checkpoint_minutes=0.0))  # a cadence is not the recipe: resumes
    assert f"step.pt at epoch 1 step 2/{steps}" in "\n".join(_messages(caplog))
    assert len(trained) == steps - 2  # the rest of epoch 1, nothing more
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    a, b = (pd.read_csv(tmp_path / d / "summary.csv") for d in ("a", "b"))
    pd.testing.assert_frame_equal(b.drop(columns=["seconds", "samples_per_s"]), a.drop(columns=["seconds", "samples_per_s"]))
    assert not (tmp_path / "b" / "step.pt").exists()  # its epoch's last.pt is further on


def test_a_mid_epoch_checkpoint_of_another_batch_split_restarts_its_epoch(tiny_work, tmp_path, monkeypatch, caplog):
    """A step.pt taken with another micro-batch (a rerun on another GPU count) cannot place its step
    in this run's batches: the epoch restarts from last.pt, saying so; one of another recipe is refused."""
    import common.train as train_mod

    real_save = train_mod.save_checkpoint

    def stop_at_step_2(path, state):
        real_save(path, state)
        if path.name == "step.pt" and state["step"] == 2:
            raise _Stop

    monkeypatch.setattr(train_mod, "save_checkpoint", stop_at_step_2)
    with pytest.raises(_Stop):
        _fit(tmp_path, tiny_work, small_cfg(epochs=1, checkpoint_minutes=1e-9, **QUIET))
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    with pytest.raises(DataError, match=r"step.pt: a checkpoint of another recipe \(lr: 0.003 -> 0.01\)"):
        _fit(tmp_path, tiny_work, small_cfg(epochs=1, lr=1e-2, **QUIET))
    caplog.set_level("INFO", logger="cdiscount")
    _fit(tmp_path, tiny_work, small_cfg(epochs=1, batch_size=4, accum_steps=2, **QUIET))
    text = "\n".join(_messages(caplog))
    assert "micro-batch 8 x 1 accumulation steps, this run has 1 x 4 x 2" in text and "epoch 0 restarts from its beginning" in text
    assert not (tmp_path / "step.pt").exists() and len(pd.read_csv(tmp_path / "summary.csv")) == 1


def test_watch_fields_never_make_a_finished_fold_or_a_checkpoint_another_recipe(tiny_work, tmp_path):
    """A fold trained before the logging / checkpoint fields existed (its config.yaml and last.pt
    without them) is still this recipe's: skipped when finished, resumed when not."""
    import yaml

    from common.config import REUSE_IGNORES
    from common.train import load_checkpoint, save_checkpoint

    new = {"log_every_steps", "log_every_seconds", "log_epoch_parts", "checkpoint_minutes", "tensorboard"}
    assert new <= REUSE_IGNORES
    work = WorkDir(tiny_work)
    run_recipe(small_cfg(solution="dylan", name="watch", epochs=1, folds=[0]), work, IMAGE)
    fold = work.model_dir("dylan", "watch", 0)
    saved = yaml.safe_load((fold / "config.yaml").read_text())
    (fold / "config.yaml").write_text(yaml.safe_dump({k: v for k, v in saved.items() if k not in new}, sort_keys=False))
    stamp = (fold / "oof.npz").stat().st_mtime_ns
    changed = dict(log_every_steps=7, log_every_seconds=5.0, log_epoch_parts=0, checkpoint_minutes=1.0, tensorboard=True)
    run_recipe(small_cfg(solution="dylan", name="watch", epochs=1, folds=[0], **changed), work, IMAGE)
    assert (fold / "oof.npz").stat().st_mtime_ns == stamp  # skipped (with tensorboard asked for: nothing trained)
    _fit(tmp_path, tiny_work, small_cfg(epochs=1))
    state = load_checkpoint(tmp_path / "last.pt")
    save_checkpoint(tmp_path / "last.pt", {**state, "config": {k: v for k, v in state["config"].items() if k not in new}})
    _fit(tmp_path, tiny_work, small_cfg(epochs=2, **{**changed, "tensorboard": False}))  # resumed, not refused
    assert pd.read_csv(tmp_path / "summary.csv")["epoch"].tolist() == [0, 1]
    with pytest.raises(DataError, match=r"checkpoint_minutes: -1 \(must be >= 0\)"):
        small_cfg(checkpoint_minutes=-1)


def test_tensorboard_without_its_package_is_one_line_before_any_step(tiny_work, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as where tensorboard is not installed
    with pytest.raises(DataError, match=r"^--tensorboard needs the tensorboard package, which is not installed: pip install tensorboard$"):
        _fit(tmp_path, tiny_work, small_cfg(epochs=1, tensorboard=True))
    assert not (tmp_path / "last.pt").exists()


def test_tensorboard_gets_the_progress_lines_and_epochs_scalars(tiny_work, tmp_path, monkeypatch):
    """What the SummaryWriter is handed (a recording stand-in, so this runs without tensorboard)."""
    import common.train as train_mod

    writers = []

    class Recorder:
        def __init__(self, log_dir, purge_step=None):
            self.log_dir, self.purge_step, self.scalars, self.closed = log_dir, purge_step, [], False
            writers.append(self)

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, step))

        def flush(self):
            pass

        def close(self):
            self.closed = True

    monkeypatch.setattr(train_mod, "summary_writer_class", lambda: Recorder)  # fit's name for it
    loaders = []
    _fit(tmp_path, tiny_work, small_cfg(epochs=1, tensorboard=True, **{**QUIET, "log_every_steps": 2}), loaders)
    steps = len(loaders[0])
    (w,) = writers
    assert w.log_dir == str(tmp_path / "tensorboard") and w.purge_step is None and w.closed
    assert [s for t, s in w.scalars if t == "train/loss"] == list(range(2, steps, 2))
    assert {t for t, _ in w.scalars} == {"train/loss", "train/acc", "train/lr", "train/img_per_s", "epoch/train_loss", "epoch/train_acc",
                                          "epoch/val_loss", "epoch/val_acc", "epoch/lr", "epoch/samples_per_s"}
    assert {s for t, s in w.scalars if t.startswith("epoch/")} == {steps}
    _fit(tmp_path, tiny_work, small_cfg(epochs=2, tensorboard=True, **QUIET))  # resumed: the lost run's later events are dropped
    assert writers[-1].purge_step == steps


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed (not a requirement)")
def test_tensorboard_writes_event_files_in_the_fold_dir(tiny_work, tmp_path):
    _fit(tmp_path, tiny_work, small_cfg(epochs=1, tensorboard=True, **{**QUIET, "log_every_steps": 2}))
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_corrupt_checkpoint_is_named(tiny_work, tmp_path):
    _fit(tmp_path, tiny_work, small_cfg(epochs=1))
    last = tmp_path / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.raises(DataError, match="last.pt: unreadable checkpoint"):
        _fit(tmp_path, tiny_work, small_cfg(epochs=2))


def test_a_bit_flipped_checkpoint_is_refused_by_its_checksums(tiny_work, tmp_path):
    """torch.load reads a flipped bit in the weights without a word; the zip's CRC-32 of every member does not."""
    import torch

    from common.checkpoint import load_checkpoint

    _fit(tmp_path, tiny_work, small_cfg(epochs=1))
    last = tmp_path / "last.pt"
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0x10
    last.write_bytes(bytes(data))
    torch.load(last, map_location="cpu", weights_only=True)  # what loaded before: no complaint
    with pytest.raises(DataError, match=r"last.pt: unreadable checkpoint: its member .* fails its CRC-32 check"):
        load_checkpoint(last)


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


DDP_HOOK = """import os, sys
import common.train as t
t.LOG_EVERY = 1  # the loop's syncs at every micro-step: rank 0's clock is asked (broadcast) at each
stop, real = os.environ.get("STOP_AT"), t.save_checkpoint
def save(path, state):
    real(path, state)
    if path.name == "step.pt" and f"{state['epoch']}:{state['step']}" == stop:
        os._exit(3)  # rank 0 dies right after writing it; torchrun ends rank 1
t.save_checkpoint = save
from common.cli import run
from solutions.dylan.train import main
run(lambda: main(sys.argv[1:]))
"""


def test_ddp_mid_epoch_checkpoint_gathers_every_rank_and_resumes_to_the_same_weights(tiny_work, tmp_path):
    """Under torchrun (2 gloo processes): rank 0's clock decides for both, both ranks' running
    figures go into step.pt; killed after the one at epoch 1 step 2, the rerun goes on from there and
    ends with the weights and summary rows of a run never stopped (which checkpointed as often)."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from common.train import load_checkpoint

    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "ddp_watch.py").write_text(DDP_HOOK)
    recipe = tmp_path / "ddpw.yaml"
    recipe.write_text("solution: dylan\nname: ddpw\nmodel: resnet10t\ninput_size: 32\nepochs: 2\nbatch_size: 8\nnum_workers: 0\ndrop_rate: 0.2\n"
                      "lr: 3.0e-3\namp: none\ntopk: 5\neval_batch_size: 16\nfolds: [0]\ncheckpoint_minutes: 1.0e-9\nlog_every_steps: 1\n")
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{tmp_path / 'hook'}{os.pathsep}{REPO}"}

    def train(work, *flags, stop=""):
        return subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "ddp_watch", "--config", str(recipe), "--work", str(work),
                               *flags], cwd=REPO, env={**env, "STOP_AT": stop}, capture_output=True, text=True, timeout=300)

    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    shutil.copytree(tiny_work, straight)
    shutil.copytree(tiny_work, stopped)
    done = train(straight)
    assert done.returncode == 0, done.stderr[-3000:]
    assert train(stopped, stop="1:2").returncode != 0
    fold_a, fold_b = (WorkDir(w).model_dir("dylan", "ddpw", 0) for w in (straight, stopped))
    state = load_checkpoint(fold_b / "step.pt")
    assert (state["epoch"], state["step"], state["world"]) == (1, 2, 2) and state["figures"].shape[0] == 2  # a row per rank
    assert state["figures"][:, 5].tolist() == [2.0, 2.0]  # each rank's optimizer steps so far
    done = train(stopped, "--checkpoint-minutes", "0")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"step.pt at epoch 1 step 2/{state['steps']}" in done.stderr
    assert re.search(DATED + r" dylan_ddpw fold 0 epoch 2/2 step 3/", done.stderr)
    a, b = (load_checkpoint(f / "last.pt")["model"] for f in (fold_a, fold_b))
    assert all(torch.equal(a[k], b[k]) for k in a)
    ha, hb = (pd.read_csv(f / "summary.csv").drop(columns=["seconds", "samples_per_s"]) for f in (fold_a, fold_b))
    pd.testing.assert_frame_equal(ha, hb)
    assert not (fold_a / "step.pt").exists() and not (fold_b / "step.pt").exists()


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
