"""The report's plots, each returned as PNG bytes (embedded in index.html)."""
from __future__ import annotations

import io
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from common.paths import WorkDir  # noqa: E402

if TYPE_CHECKING:
    from .report import SourceResult


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def plot_accuracy(table: pd.DataFrame) -> bytes:
    t = table.sort_values("oof_product_accuracy")
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(t) + 1.5))
    y = np.arange(len(t))
    ax.barh(y - 0.2, t["oof_product_accuracy"], 0.4, label="OOF product accuracy (own products)")
    if t["mini_test_accuracy"].notna().any():
        ax.barh(y + 0.2, t["mini_test_accuracy"].fillna(0), 0.4, label="mini test accuracy of its submission")
    ax.set_yticks(y, t["source"])
    ax.set_xlabel("accuracy")
    ax.set_xlim(0, 1)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Accuracy per source")
    return _png(fig)


def full_coverage(results: list[SourceResult]) -> list[SourceResult]:
    """Sources predicting (nearly) every product: side sources cover a few, their curves mislead."""
    most = max(r.report["products"] for r in results)
    return [r for r in results if r.report["products"] >= 0.9 * most]


def plot_by_image_count(results: list[SourceResult]) -> bytes:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in full_coverage(results):
        by = r.report["by_image_count"]
        xs = sorted(by, key=int)
        ax.plot([int(x) for x in xs], [by[x]["accuracy"] for x in xs], marker="o", lw=2.5 if r.kind == "stack" else 1, label=r.name)
    ax.set_xlabel("images per product")
    ax.set_ylabel("OOF product accuracy")
    ax.set_xticks([1, 2, 3, 4])
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Accuracy by image count")
    return _png(fig)


def plot_by_level1(results: list[SourceResult]) -> bytes:
    rs = full_coverage(results)
    groups = sorted({g for r in rs for g in r.report["by_level1"]})
    grid = np.array([[r.report["by_level1"].get(g, {}).get("accuracy", np.nan) for g in groups] for r in rs])
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(groups) + 3), 0.45 * len(rs) + 2.5))
    im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=np.nanmin(grid), vmax=np.nanmax(grid))
    ax.set_xticks(range(len(groups)), [g[:22] for g in groups], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(rs)), [r.name for r in rs], fontsize=8)
    if grid.size <= 400:
        for (i, j), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w" if v < np.nanmean(grid) else "k")
    fig.colorbar(im, ax=ax, label="OOF product accuracy")
    ax.set_title("Accuracy by level-1 group (true label's group)")
    return _png(fig)


def plot_reliability(results: list[SourceResult]) -> bytes:
    """Accuracy against mean top-1 score per bin, stored (dashed) and calibrated (solid), for the blends and the stack."""
    shown = [r for r in results if r.kind in ("solution blend", "team blend", "stack") and r.calibration.get("reliability")]
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
    for i, r in enumerate(shown):
        c, colour = r.calibration, f"C{i}"
        for key, style, label in (("reliability_raw", "--", f"ECE {c['ece_raw']:.3f} stored"), ("reliability", "-", f"ECE {c['ece']:.3f} calibrated")):
            pts = c[key]
            ax.plot([p["confidence"] for p in pts], [p["accuracy"] for p in pts], style, marker="o", ms=3, color=colour, label=f"{r.name}: {label}")
    ax.set_xlabel("top-1 score (bin mean)")
    ax.set_ylabel("top-1 accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left")
    return _png(fig)


def plot_gain(gain: pd.DataFrame) -> bytes:
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(gain) + 1.5))
    colors = ["tab:green" if g >= 0 else "tab:red" for g in gain["gain"]]
    ax.barh(range(len(gain)), gain["gain"], color=colors)
    ax.set_yticks(range(len(gain)), [f"{l[:28]} ({n}, vs {b})" for l, n, b in zip(gain["level1"], gain["products"], gain["best_source"])], fontsize=7)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("stack accuracy - best single source's accuracy in the group")
    ax.set_title("Stacker gain over the best single source, per level-1 group")
    return _png(fig)


def training_curves(work: WorkDir) -> dict[str, list[tuple[str, pd.DataFrame]]]:
    """{solution/model: [(fold[/part], summary.csv frame)]} for every training log with val_acc.
    A part trained after a fold's `shared` run (bestfitting's per-K fine-tuning) continues its
    epochs, so its points are drawn after the shared run's last epoch."""
    out: dict[str, list] = {}
    root = work.root / "models"
    for path in sorted(root.glob("*/*/fold*/**/summary.csv")) if root.exists() else []:
        rel = path.relative_to(root).parts
        frame = pd.read_csv(path)
        if not ({"epoch", "val_acc"} <= set(frame.columns) and len(frame)):
            continue
        shared = path.parent.parent / "shared" / "summary.csv"
        if path.parent.name != "shared" and shared.exists():
            frame = frame.assign(epoch=frame["epoch"] + len(pd.read_csv(shared)))
        out.setdefault(f"{rel[0]}/{rel[1]}", []).append(("/".join(rel[2:-1]), frame))
    return out


def plot_training_curves(curves: dict[str, list[tuple[str, pd.DataFrame]]]) -> bytes | None:
    if not curves:
        return None
    from matplotlib.ticker import MaxNLocator

    n = len(curves)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (model, runs) in zip(axes.flat, curves.items()):
        for label, frame in runs:
            ax.plot(frame["epoch"] + 1, frame["val_acc"], marker="o", ms=3, label=label)
        ax.set_title(model, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("val accuracy")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=5, ncol=2 if len(runs) > 6 else 1)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)
