"""The stage: stacker CV over the folds, the final model, test predictions, the submission, the summary."""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import numpy as np
import xgboost as xgb

from common.atomic import atomic_path, write_json
from common.calibration import CALIBRATION, write_calibration
from common.cli import parse_stage
from common.metrics import accuracy, product_report
from common.paths import WorkDir
from common.predictions import TopK, concat_topk, save_topk
from common.prepare import DatasetPaths
from common.progress import track
from common.sources import write_summary
from common.workdata import Labels
from common.submission import score_submission, submission_from_topk

from .baselines import score_baselines
from .booster import Engine, importance, load_model, predict_products, resolve_device, sample, train_booster, xgb_params
from .config import StackConfig
from .engine import open_engine
from .features import Chunk, build_chunk, feature_names
from .inputs import Products, StackInputs, load_inputs

STACK = "stack"
RECORDED = {"value": None, "what": "no team stacked all three solutions: this repository's addition", "measured_on": ""}


def builder(inp: StackInputs, split: str, cfg: StackConfig, only_learnable: bool) -> Callable[..., Chunk]:
    def build(products: Products, qid_offset: int = 0) -> Chunk:
        return build_chunk(products, inp.stacked, split, inp.tree.level1_of, inp.prior, len(inp.tree), cfg.candidates_per_source,
                           only_learnable, qid_offset)

    return build


def cross_validate(inp: StackInputs, cfg: StackConfig, device: str, engine: Engine) -> tuple[TopK, dict]:
    """Stacker CV over the folds (inner folds of the holdout under that protocol): fold k's model
    never sees fold k's products."""
    tops, per_fold, hits = [], {}, np.zeros(len(inp.oof), bool)
    for k_pos, k in enumerate(track(inp.cv_folds, "stacker CV", unit="fold")):
        held = inp.oof.fold == k
        train = sample(inp.oof.take(np.flatnonzero(~held)), cfg.max_train_products, cfg.seed + k_pos)
        booster = train_booster(train, builder(inp, "oof", cfg, True), cfg, device, engine)
        top, hit = predict_products(booster, inp.oof.take(np.flatnonzero(held)), builder(inp, "oof", cfg, False), cfg, f"predict fold {k}", engine)
        hits[held] = hit
        pred = top.top1_of(inp.oof.ids[held], inp.fallback)
        per_fold[str(k)] = {"products": int(held.sum()), "train_products": len(train), "accuracy": accuracy(pred, inp.oof.y[held]),
                            "candidate_recall": float(hit.mean())}
        tops.append(top)
    return concat_topk(tops, cfg.topk), {"per_fold": per_fold, "candidate_recall": float(hits.mean())}


def export_features(inp: StackInputs, cfg: StackConfig, out: Path) -> int:
    """One npz per chunk (X, y, qid, ids, labels) + features.json: the input of a distributed run."""
    build = builder(inp, "oof", cfg, True)
    n, offset = 0, 0
    for part in track(list(inp.oof.chunks(cfg.chunk_products)), "export features", unit="chunk"):
        ch = build(part, offset)
        offset += len(part)
        with atomic_path(out / f"chunk_{n:05d}.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, X=ch.X, y=ch.y, qid=ch.qid, ids=ch.ids, labels=ch.labels)
        n += 1
    write_json(out / "features.json", {"features": feature_names(inp.stacked), "chunks": n})
    return n


def fit_final(inp: StackInputs, cfg: StackConfig, device: str, engine: Engine) -> xgb.Booster:
    """The submitted model: trained on every OOF product (or a sample), saved as UBJSON with its
    feature names and gains beside it (work/stack/), never pickled."""
    train = sample(inp.oof, cfg.max_train_products, cfg.seed + 1000)
    booster = train_booster(train, builder(inp, "oof", cfg, True), cfg, device, engine)
    with atomic_path(inp.work.root / STACK / "model.ubj") as tmp:
        tmp.write_bytes(bytes(booster.save_raw(raw_format="ubj")))
    return booster


def train_or_load(inp: StackInputs, cfg: StackConfig, device: str, n_features: int, engine: Engine) -> tuple[xgb.Booster, TopK | None, dict | None]:
    """(the model predicting test, the CV's OOF predictions, the CV figures). A model trained
    elsewhere on these products gets no OOF score here: in sample, it would flatter it."""
    if cfg.model:
        (inp.work.preds(STACK) / "oof.npz").unlink(missing_ok=True)
        return load_model(cfg.model, n_features), None, None
    oof_top, cv = cross_validate(inp, cfg, device, engine)
    return fit_final(inp, cfg, device, engine), oof_top, cv


def cv_figures(inp: StackInputs, oof_top: TopK | None, cv: dict | None, baselines: dict) -> dict:
    """The stack's OOF accuracy against every baseline on the same products (None without CV)."""
    best_name, best = max(((k, v["oof_accuracy"]) for k, v in baselines.items()), key=lambda kv: kv[1])
    out = {"oof_products": int(len(inp.oof)), "oof_product_accuracy": None, "cv": cv, "candidate_recall": None, "oof_report": None,
           "baselines": baselines, "best_baseline": {"name": best_name, "oof_accuracy": best}, "gain_over_best_baseline": None,
           "beats_every_baseline": None}
    if cv is not None:
        pred = oof_top.top1_of(inp.oof.ids, inp.fallback)
        acc = accuracy(pred, inp.oof.y)
        out.update(oof_product_accuracy=acc, candidate_recall=cv["candidate_recall"], gain_over_best_baseline=acc - best,
                   oof_report=product_report(pred, inp.oof.y, inp.oof.n_imgs.astype(np.int64), inp.tree),
                   beats_every_baseline=bool(all(acc > v["oof_accuracy"] for v in baselines.values())))
    return out


def run_stack(work: WorkDir, cfg: StackConfig) -> dict:
    """CV, baselines, final model, predictions, submission, summary.json; returns the summary."""
    t0, device = time.time(), resolve_device(cfg.device)
    inp = load_inputs(work, cfg)
    cfg = replace(cfg, chunk_products=cfg.products_per_chunk(len(inp.all_sources)))
    names = feature_names(inp.stacked)
    engine = open_engine(cfg.dask)
    try:
        print(f"stacking {len(inp.stacked)} sources: {', '.join(s.name for s in inp.stacked)}")
        print(f"  {len(names)} features, {len(inp.oof)} OOF products in {len(inp.cv_folds)} {'inner folds of the holdout' if inp.protocol == 'holdout' else 'folds'}, "
              f"{len(inp.test)} test products, chunks of {cfg.chunk_products:,} products, device {device}, engine {engine.name}")
        if cfg.export_features:
            print(f"  exported {export_features(inp, cfg, Path(cfg.export_features))} feature chunks to {cfg.export_features}")
        booster, oof_top, cv = train_or_load(inp, cfg, device, len(names), engine)
        test_top, _ = predict_products(booster, inp.test, builder(inp, "test", cfg, False), cfg, "predict test", engine)
    finally:
        engine.close()
    gains = importance(booster, names)
    write_json(work.root / STACK / "features.json", {"features": names, "total_gain": gains, "params": xgb_params(cfg, device), "rounds": cfg.rounds})
    calibration = None
    if oof_top is not None:
        save_topk(work.preds(STACK) / "oof.npz", oof_top)
        calibration = write_calibration(work.preds(STACK), oof_top, Labels.load(work).of(oof_top.ids))
    else:
        (work.preds(STACK) / CALIBRATION).unlink(missing_ok=True)  # a model trained elsewhere: no OOF to calibrate on
    save_topk(work.preds(STACK) / "test.npz", test_top)
    paths = DatasetPaths.load(work)
    sub, n_fallback = submission_from_topk(work.submissions / f"{STACK}.csv.gz", test_top, inp.test_ids, inp.tree, inp.fallback,
                                           cfg.max_fallback_share, paths.index(work, "test").lost_products, cfg.accept_lost_products)
    return write_summary(
        work, STACK, "stack", recorded=RECORDED, sources=[s.name for s in inp.stacked], sources_kinds={s.name: s.kind for s in inp.all_sources},
        left_out=[s.name for s in inp.all_sources if s not in inp.stacked], features=names, config=asdict(cfg), device=device, engine=engine.name,
        **cv_figures(inp, oof_top, cv, score_baselines(inp, cfg)), feature_importance_gain=gains, calibration=calibration, test_products=int(len(inp.test_ids)),
        test_rows_from_fallback=n_fallback, submission=str(sub),
        test_accuracy=score_submission(sub, paths.test_labels) if paths.test_labels else None, seconds=round(time.time() - t0, 1))


def print_summary(summary: dict) -> None:
    if summary["cv"] is None:
        print(f"  model from {summary['config']['model']}: no CV here (see the run that trained it)")
    for k, f in (summary["cv"] or {"per_fold": {}})["per_fold"].items():
        print(f"  fold {k}: stacker {f['accuracy']:.4f} on {f['products']} products (trained on {f['train_products']}), candidate recall {f['candidate_recall']:.4f}")
    if summary["cv"] is not None:
        print(f"  candidate recall (ceiling): {summary['candidate_recall']:.4f}")
    print(f"  {'baseline (same products)':48s} {'OOF':>7s} {'mini test':>9s}")
    for name, b in sorted(summary["baselines"].items(), key=lambda kv: kv[1]["oof_accuracy"]):
        t = "" if b["test_accuracy"] is None else f"{b['test_accuracy']:.4f}"
        print(f"  {name:48s} {b['oof_accuracy']:7.4f} {t:>9s}")
    t = "" if summary["test_accuracy"] is None else f"{summary['test_accuracy']:.4f}"
    oof = "" if summary["oof_product_accuracy"] is None else f"{summary['oof_product_accuracy']:.4f}"
    print(f"  {'STACK (XGBoost, CV)':48s} {oof:>7s} {t:>9s}")
    if summary["cv"] is not None:
        verdict = "beats" if summary["beats_every_baseline"] else "does NOT beat"
        print(f"  the stack {verdict} every baseline: {summary['gain_over_best_baseline']:+.4f} over the best ({summary['best_baseline']['name']})")
    print(f"  test rows from the fallback (no source predicts them): {summary['test_rows_from_fallback']}")
    print(f"  wrote {summary['submission']} ({summary['seconds']} s)")


def main(argv: list[str] | None = None) -> dict:
    args = parse_stage(argv, sys.modules[__package__].__doc__, StackConfig)
    summary = run_stack(args.work, args.options)
    print_summary(summary)
    return summary
