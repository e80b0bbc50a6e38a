"""The report's plots, each returned as PNG bytes (embedded in index.html).

Readable at any number of sources: every legend sits outside its data (right of the axes), a
panel holds at most MAX_LINES lines (more sources: more panels), names are never cut. Each plot
has a `figure_*` function returning the matplotlib Figure (what the tests inspect) and a `plot_*`
one returning its PNG.
"""
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

MAX_LINES = 10  # lines (legend entries) per panel: matplotlib's 10 default colours, each line its own
BLENDS = ("solution blend", "team blend", "stack")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def legend_outside(ax, **kw) -> None:
    """The legend right of the axes, never over the data."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=kw.pop("fontsize", 7), frameon=False, **kw)


def chunks(items: list, size: int = MAX_LINES) -> list[list]:
    """`items` in panels of at most `size`, as even as possible (11 -> 6 + 5, not 10 + 1)."""
    if not items:
        return []
    n = -(-len(items) // size)
    step = -(-len(items) // n)
    return [items[i:i + step] for i in range(0, len(items), step)]


def _grid(n: int, cols: int, width: float, height: float):
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, layout="constrained")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return fig, list(axes.flat)[:n]


def full_coverage(results: list[SourceResult]) -> list[SourceResult]:
    """Sources predicting (nearly) every product: side sources cover a few, their curves mislead."""
    most = max(r.report["products"] for r in results)
    return [r for r in results if r.kind != "side source" and r.report["products"] >= 0.9 * most]


# ----------------------------------------------------------------------------- accuracy per source


def figure_accuracy(table: pd.DataFrame):
    """Bars per row of the ranked table (best at the top); a side source's label says its coverage."""
    t = table.iloc[::-1]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(t) + 1.5), layout="constrained")
    y = np.arange(len(t))
    ax.barh(y - 0.2, t["oof_product_accuracy"], 0.4, label="OOF product accuracy (on the products it predicts)")
    if t["mini_test_accuracy"].notna().any():
        ax.barh(y + 0.2, t["mini_test_accuracy"].fillna(0), 0.4, label="mini test accuracy of its submission")
    names = [s if pd.isna(c) or c >= 0.9 else f"{s} ({p} products, {c:.0%}: side source)"
             for s, p, c in zip(t["source"], t["oof_products"], t.get("oof_coverage", pd.Series(np.nan, index=t.index)))]
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlabel("accuracy")
    ax.set_xlim(0, 1)
    legend_outside(ax)
    ax.set_title("Accuracy per source (ranked)")
    return fig


def plot_accuracy(table: pd.DataFrame) -> bytes:
    return _png(figure_accuracy(table))


# ----------------------------------------------------------------------------- by image count


def line_groups(results: list[SourceResult]) -> list[tuple[str, list[SourceResult]]]:
    """(panel title, sources) with at most MAX_LINES sources each: the stack and the blends first, then
    each solution's models and ablations."""
    rs = full_coverage(results)
    groups: dict[str, list] = {"stack and blends": [r for r in rs if r.kind in BLENDS]}
    for r in rs:
        if r.kind not in BLENDS:
            groups.setdefault(f"{r.summary.get('solution') or 'other'}: models", []).append(r)
    out = []
    for title, members in groups.items():
        parts = chunks(members)
        out += [(title if len(parts) == 1 else f"{title} ({i + 1}/{len(parts)})", p) for i, p in enumerate(parts)]
    return out


def figure_by_image_count(results: list[SourceResult]):
    groups = line_groups(results)
    fig, axes = _grid(len(groups), 2, 6.5, 3.6)
    for ax, (title, members) in zip(axes, groups):
        for i, r in enumerate(members):
            by = r.report["by_image_count"]
            xs = sorted(by, key=int)
            ax.plot([int(x) for x in xs], [by[x]["accuracy"] for x in xs], marker="o", color=f"C{i}", lw=2.5 if r.kind == "stack" else 1.2,
                    label=r.name)
        ax.set_xlabel("images per product")
        ax.set_ylabel("OOF product accuracy")
        ax.set_xticks([1, 2, 3, 4])
        ax.set_title(title, fontsize=9)
        legend_outside(ax)
    fig.suptitle("Accuracy by image count")
    return fig


def plot_by_image_count(results: list[SourceResult]) -> bytes:
    return _png(figure_by_image_count(results))


# ----------------------------------------------------------------------------- by level-1 group


def figure_by_level1(results: list[SourceResult]):
    rs = full_coverage(results)
    groups = sorted({g for r in rs for g in r.report["by_level1"]})
    grid = np.array([[r.report["by_level1"].get(g, {}).get("accuracy", np.nan) for g in groups] for r in rs])
    longest = max((len(g) for g in groups), default=10)
    fig, ax = plt.subplots(figsize=(max(8, 0.5 * len(groups) + 3), 0.45 * len(rs) + 1.5 + 0.07 * longest), layout="constrained")
    im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=np.nanmin(grid), vmax=np.nanmax(grid))
    ax.set_xticks(range(len(groups)), groups, rotation=60, ha="right", rotation_mode="anchor", fontsize=7)  # full names
    ax.set_yticks(range(len(rs)), [r.name for r in rs], fontsize=8)
    if grid.size <= 400:
        for (i, j), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w" if v < np.nanmean(grid) else "k")
    fig.colorbar(im, ax=ax, label="OOF product accuracy")
    ax.set_title("Accuracy by level-1 group (true label's group)")
    return fig


def plot_by_level1(results: list[SourceResult]) -> bytes:
    return _png(figure_by_level1(results))


# ----------------------------------------------------------------------------- reliability


def figure_reliability(results: list[SourceResult]):
    """Accuracy against mean top-1 score per bin, stored (dashed) and calibrated (solid), for the blends
    and the stack: two lines per source, so at most MAX_LINES // 2 sources per panel."""
    shown = [r for r in results if r.kind in BLENDS and r.calibration.get("reliability")]
    panels = chunks(shown, MAX_LINES // 2) or [[]]
    fig, axes = _grid(len(panels), 2, 7.5, 4.8)
    for ax, members in zip(axes, panels):
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8)  # no label: not a legend entry
        for i, r in enumerate(members):
            c, colour = r.calibration, f"C{i}"
            for key, style, label in (("reliability_raw", "--", f"ECE {c['ece_raw']:.3f} stored"), ("reliability", "-", f"ECE {c['ece']:.3f} calibrated")):
                pts = c[key]
                ax.plot([p["confidence"] for p in pts], [p["accuracy"] for p in pts], style, marker="o", ms=3, color=colour, label=f"{r.name}: {label}")
        ax.set_xlabel("top-1 score (bin mean)")
        ax.set_ylabel("top-1 accuracy")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        legend_outside(ax)
    return fig


def plot_reliability(results: list[SourceResult]) -> bytes:
    return _png(figure_reliability(results))


# ----------------------------------------------------------------------------- stacker gain


def figure_gain(gain: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(9, 0.3 * len(gain) + 1.5), layout="constrained")
    colors = ["tab:green" if g >= 0 else "tab:red" for g in gain["gain"]]
    ax.barh(range(len(gain)), gain["gain"], color=colors)
    ax.set_yticks(range(len(gain)), [f"{lv} ({n} products, vs {b})" for lv, n, b in zip(gain["level1"], gain["products"], gain["best_source"])], fontsize=7)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("stack accuracy - best single source's accuracy in the group")
    ax.set_title("Stacker gain over the best single source, per level-1 group")
    return fig


def plot_gain(gain: pd.DataFrame) -> bytes:
    return _png(figure_gain(gain))


# ----------------------------------------------------------------------------- training curves


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


def curve_lines(runs: list[tuple[str, pd.DataFrame]]) -> list[tuple[str, pd.DataFrame]]:
    """One line per part, over the folds (epoch, val_acc mean, min, max), when a model's folds have
    parts (fold0/k1, fold0/shared, ...); else one line per fold (min = max = its value)."""
    parts: dict[str, list[pd.DataFrame]] = {}
    for label, frame in runs:
        fold, _, part = label.partition("/")
        parts.setdefault(part or fold, []).append(frame[["epoch", "val_acc"]])
    return [(part, pd.concat(frames).groupby("epoch")["val_acc"].agg(["mean", "min", "max"]).reset_index()) for part, frames in parts.items()]


def figure_training_curves(curves: dict[str, list[tuple[str, pd.DataFrame]]]):
    from matplotlib.ticker import MaxNLocator

    panels = []
    for model, runs in curves.items():
        parts = chunks(curve_lines(runs))
        folds = len({label.partition("/")[0] for label, _ in runs})
        what = f"{model}: each part, mean of {folds} folds (band: min-max)" if any("/" in label for label, _ in runs) else model
        panels += [(what if len(parts) == 1 else f"{what} ({i + 1}/{len(parts)})", p) for i, p in enumerate(parts)]
    fig, axes = _grid(len(panels), 2, 6.5, 3.4)
    for ax, (title, lines) in zip(axes, panels):
        for i, (label, s) in enumerate(lines):
            ax.plot(s["epoch"] + 1, s["mean"], marker="o", ms=3, color=f"C{i}", label=label)
            if (s["max"] > s["min"]).any():
                ax.fill_between(s["epoch"] + 1, s["min"], s["max"], color=f"C{i}", alpha=0.15, lw=0)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("val accuracy")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        legend_outside(ax, fontsize=6)
    return fig


def plot_training_curves(curves: dict[str, list[tuple[str, pd.DataFrame]]]) -> bytes | None:
    return _png(figure_training_curves(curves)) if curves else None
