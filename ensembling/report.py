"""The leaderboard comparison report: every model, solution blend, team blend, side source and the
stack beside the leaderboard and the numbers the original teams recorded.

    python -m ensembling.report --work work [--scores work/scores.csv]

Writes work/report/index.html (self-contained: the plots are embedded PNGs), leaderboard.csv
(the table) and scores_template.csv (source,public,private: fill it in after submitting to Kaggle,
save it as work/scores.csv or pass --scores, rerun: the Kaggle columns fill in).

Everything is recomputed from the files of earlier stages (preds/<source>/{oof,test}.npz and
summary.json, submissions/, models/*/summary.csv, stats/), so the report never disagrees with
them. Each number says what data it was measured on: accuracy on the mini data (synthetic images,
a few dozen classes) is NOT comparable with the Kaggle leaderboard (real images, 5270 classes).
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from common.atomic import write_text  # noqa: E402
from common.blend import Labels  # noqa: E402
from common.categories import CategoryTree  # noqa: E402
from common.metrics import accuracy, product_report  # noqa: E402
from common.paths import WorkDir  # noqa: E402
from common.predictions import TopK, load_topk  # noqa: E402
from common.prepare import DatasetPaths  # noqa: E402
from common.submission import score_submission  # noqa: E402
from ensembling.stack import ABLATION_TAG, STACK, read_summary, source_kind  # noqa: E402

COMPETITION = "cdiscount-image-classification-challenge"
# Private leaderboard of each team's final submission (the solution this repository reproduces).
LEADERBOARD = {"bestfitting": (1, 0.79567), "convoluted": (2, 0.79352), "dylan": (3, 0.79046)}
KAGGLE_DATA = "Kaggle (real images, 5270 classes)"


@dataclass(frozen=True)
class Recorded:
    """A number a winning team recorded for the recipe a source reproduces, and what it measured."""

    value: float | None
    what: str
    measured_on: str


# First match wins: source-name pattern -> what the original team recorded for the same recipe.
RECORDED: list[tuple[str, Recorded]] = [
    (r"^dylan$", Recorded(0.78998, "3rd place, 14-model mean (1 model 0.76713, 4 models 0.78693); +MD5 0.79046", "Kaggle private LB")),
    (r"^dylan_", Recorded(0.7438, "single CNN, best DPN-107 (range 0.660-0.744); one model on the LB 0.76713", "Kaggle 5% product val, image-level")),
    (r"^bestfitting$", Recorded(0.79567, "1st place ensemble (DenseNet-161/169, DPN-92, ResNet-50, InceptionResNetV2 + OCR)", "Kaggle private LB")),
    (r"^bestfitting_.*(grid|single)", Recorded(0.759, "InceptionResNetV2 without concatenation (ResNet50 0.757)", "Kaggle LB")),
    (r"^bestfitting_", Recorded(0.772, "InceptionResNetV2 with the K images concatenated (ResNet50 0.769)", "Kaggle LB")),
    (r"^convoluted$", Recorded(0.79352, "2nd place, weighted sqrt blend of 3 members (53/23/23%)", "Kaggle private LB")),
    (r"^convoluted_.*fuse_gated", Recorded(0.7823, "fuse net FcNet3 (DPN92 + SE-ResNeXt101 features); 0.7817 public LB", "Kaggle 50k product val")),
    (r"^convoluted_.*fuse_max", Recorded(0.7795, "fuse net with max-pool over views", "Kaggle 50k product val")),
    (r"^convoluted_.*base", Recorded(0.7512, "base net DPN92 (SE-ResNeXt101 0.7228)", "Kaggle 50k val, image-level")),
    (r"^convoluted_.*rank", Recorded(None, "member C's rank/count specialists: no separate number published", "")),
    (r"^md5$", Recorded(None, "MD5 dictionary: +0.003..0.005 on dylan's ensemble (0.78998 -> 0.79046)", "Kaggle private LB")),
    (r"^ocr$", Recorded(None, "dylan: tesseract OCR not accurate enough alone; bestfitting fed OCR features (no number)", "")),
    (r"^stack$", Recorded(None, "no team stacked all three solutions: this repository's addition", "")),
]


def recorded_for(name: str) -> Recorded:
    for pattern, rec in RECORDED:
        if re.search(pattern, name):
            return rec
    return Recorded(None, "", "")


def report_kind(name: str, summary: dict) -> str:
    kind = source_kind(name, summary)
    return f"{kind} (ablation)" if ABLATION_TAG in name else kind


# ---------------------------------------------------------------------------------------------
# the numbers


@dataclass
class Context:
    work: WorkDir
    tree: CategoryTree
    labels: Labels
    test_ids: np.ndarray
    test_labels_csv: str | None
    data_label: str
    fallback: int


def load_context(work: WorkDir) -> Context:
    paths = DatasetPaths.load(work)
    tree = paths.tree()
    labels = Labels.load(work)
    test_ids = np.sort(np.asarray(paths.index(work, "test").ids, np.int64))
    mini = bool(paths.test_labels) or len(tree) < 5270
    data_label = f"mini (synthetic, {len(tree)} classes)" if mini else "Kaggle train OOF"
    fallback = int(np.bincount(labels.labels[labels.labels >= 0]).argmax())
    return Context(work, tree, labels, test_ids, paths.test_labels, data_label, fallback)


def report_sources(work: WorkDir) -> list[str]:
    """Every source with an OOF file (the stack last)."""
    root = work.root / "preds"
    names = sorted(p.name for p in root.iterdir() if (p / "oof.npz").exists()) if root.exists() else []
    return [n for n in names if n != STACK] + ([STACK] if STACK in names else [])


def mean_image_accuracy(summary: dict) -> float | None:
    vals = summary.get("val_image_accuracy_per_fold") or []
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None


def test_accuracy(ctx: Context, name: str, test: TopK | None) -> float | None:
    """The submission's accuracy on the mini test labels: the written file when there is one,
    else built in memory from test.npz (absent products get the most frequent train label)."""
    if not ctx.test_labels_csv:
        return None
    sub = ctx.work.submissions / f"{name}.csv.gz"
    if sub.exists():
        return score_submission(sub, ctx.test_labels_csv)
    if test is None:
        return None
    truth = pd.read_csv(ctx.test_labels_csv)
    pred = np.full(len(ctx.test_ids), ctx.fallback, np.int64)
    rows = np.clip(np.searchsorted(test.ids, ctx.test_ids), 0, max(len(test.ids) - 1, 0))
    have = test.ids[rows] == ctx.test_ids if len(test.ids) else np.zeros(len(ctx.test_ids), bool)
    pred[have] = test.top1[rows[have]]
    frame = pd.DataFrame({"_id": ctx.test_ids, "pred": ctx.tree.to_id(pred)})
    merged = truth.merge(frame, on="_id", how="left")
    return float((merged["category_id"] == merged["pred"]).mean())


@dataclass
class SourceResult:
    name: str
    kind: str
    summary: dict
    oof: TopK
    report: dict  # product_report on the source's own OOF products
    image_accuracy: float | None
    test_accuracy: float | None


def evaluate_source(ctx: Context, name: str) -> SourceResult:
    summary = read_summary(ctx.work, name)
    oof = load_topk(ctx.work.preds(name) / "oof.npz")
    test_path = ctx.work.preds(name) / "test.npz"
    test = load_topk(test_path) if test_path.exists() else None
    rows = ctx.labels.rows(oof.ids)
    known = ctx.labels.ids[rows] == oof.ids
    rep = product_report(oof.top1[known], ctx.labels.labels[rows[known]], ctx.labels.n_imgs[rows[known]], ctx.tree)
    return SourceResult(name, report_kind(name, summary), summary, oof, rep, mean_image_accuracy(summary), test_accuracy(ctx, name, test))


def read_scores(path: Path | None) -> pd.DataFrame:
    """source,public,private as the user pasted them from Kaggle (empty when no file)."""
    if path is None or not Path(path).exists():
        return pd.DataFrame(columns=["source", "public", "private"])
    frame = pd.read_csv(path)
    missing = {"source", "public", "private"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: needs the columns source,public,private (missing {sorted(missing)})")
    return frame


def leaderboard_table(ctx: Context, results: list[SourceResult], scores: pd.DataFrame) -> pd.DataFrame:
    scores = scores.set_index("source") if len(scores) else scores
    rows = []
    for r in results:
        rec = recorded_for(r.name)
        place, lb = LEADERBOARD.get(r.name, (None, None))
        rows.append({
            "source": r.name,
            "kind": r.kind,
            "measured_on": ctx.data_label,
            "oof_products": r.report["products"],
            "oof_image_accuracy": r.image_accuracy,
            "oof_product_accuracy": r.report["accuracy"],
            "mini_test_accuracy": r.test_accuracy,
            "team_recorded": rec.value,
            "team_recorded_what": rec.what,
            "team_recorded_on": rec.measured_on,
            "team_place": place,
            "team_private_lb": lb,
            "kaggle_public": float(scores.loc[r.name, "public"]) if r.name in getattr(scores, "index", []) else None,
            "kaggle_private": float(scores.loc[r.name, "private"]) if r.name in getattr(scores, "index", []) else None,
        })
    table = pd.DataFrame(rows)
    table["team_place"] = table["team_place"].astype("Int64")
    return table


# ---------------------------------------------------------------------------------------------
# plots (each returns a PNG as bytes)


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
        ax.plot([int(x) for x in xs], [by[x]["accuracy"] for x in xs], marker="o", lw=2.5 if r.name == STACK else 1, label=r.name)
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


def stack_gain_by_level1(ctx: Context, results: list[SourceResult]) -> pd.DataFrame | None:
    """Per level-1 group, on the stack's OOF products: stack accuracy minus the best single
    non-stack source's accuracy in that group (products in the group, all sources scored alike)."""
    by = {r.name: r for r in results}
    if STACK not in by:
        return None
    ids = by[STACK].oof.ids
    rows = ctx.labels.rows(ids)
    truth = ctx.labels.labels[rows]
    group = ctx.tree.level1_of[np.maximum(truth, 0)]
    singles = [r for r in full_coverage(results) if r.name != STACK]
    if not singles:
        return None

    def top1_on(r: SourceResult) -> np.ndarray:
        pos = np.clip(np.searchsorted(r.oof.ids, ids), 0, len(r.oof.ids) - 1)
        return np.where(r.oof.ids[pos] == ids, r.oof.top1[pos], ctx.fallback)

    preds = {r.name: top1_on(r) for r in [by[STACK], *singles]}
    out = []
    for g in np.unique(group):
        sel = group == g
        accs = {n: accuracy(p[sel], truth[sel]) for n, p in preds.items()}
        best = max((n for n in accs if n != STACK), key=lambda n: accs[n])
        out.append({"level1": ctx.tree.level1_groups[g], "products": int(sel.sum()), "stack": accs[STACK], "best_source": best,
                    "best_source_accuracy": accs[best], "gain": accs[STACK] - accs[best]})
    return pd.DataFrame(out).sort_values("gain")


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


# ---------------------------------------------------------------------------------------------
# HTML


def _img(png: bytes, alt: str) -> str:
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}"><figcaption>{html.escape(alt)}</figcaption></figure>'


FIVE_DECIMALS = ("team_recorded", "team_private_lb", "kaggle_public", "kaggle_private")  # leaderboard numbers as published


def _fmt(v, column: str = "") -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
        return ""
    if isinstance(v, (float, np.floating)):
        return f"{v:.5f}" if column in FIVE_DECIMALS else f"{v:.4f}"
    return html.escape(str(v))


def _table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v, c)}</td>" for v, c in zip(row, frame.columns)) + "</tr>" for row in frame.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def stack_section(work: WorkDir) -> str:
    s = read_summary(work, STACK)
    if not s:
        return "<p>No stack yet: run <code>python -m ensembling.stack --work WORK</code>.</p>"
    if s.get("cv") is None:
        return (f"<p>The stack predicted test with a model trained elsewhere ({html.escape(str(s['config'].get('model')))}): "
                "no CV in this run; see the run that trained it.</p>")
    base = pd.DataFrame([{"method": k, "oof_accuracy": v["oof_accuracy"], "mini_test_accuracy": v["test_accuracy"]} for k, v in s["baselines"].items()])
    base = pd.concat([base.sort_values("oof_accuracy"), pd.DataFrame([{"method": "STACK (XGBoost, own CV)", "oof_accuracy": s["oof_product_accuracy"],
                                                                        "mini_test_accuracy": s["test_accuracy"]}])], ignore_index=True)
    folds = pd.DataFrame([{"fold": k, **v} for k, v in s["cv"]["per_fold"].items()])
    verdict = "beats" if s["beats_every_baseline"] else "does <b>not</b> beat"
    imp = list(s.get("feature_importance_gain", {}).items())[:12]
    return (f"<p>Stacked sources: {html.escape(', '.join(s['sources']))}; left out: {html.escape(', '.join(s['left_out']) or 'none')}. "
            f"{len(s['features'])} features. Every number below is on the same {s['oof_products']} OOF products "
            f"(those with at least one source row), the stacker's by its own product-level CV over the folds of folds.csv.</p>"
            f"<p>The stack {verdict} every baseline: {s['gain_over_best_baseline']:+.4f} over the best ({html.escape(s['best_baseline']['name'])}). "
            f"Candidate recall (the ceiling: the true label is among the candidates): {s['candidate_recall']:.4f}.</p>"
            + _table(base) + "<h3>Per fold</h3>" + _table(folds)
            + "<h3>Most useful features (total gain)</h3>" + _table(pd.DataFrame(imp, columns=["feature", "total_gain"])))


KAGGLE_HELP = """
<p>On the real data the mini-test column is empty (Kaggle keeps the test labels). Submit the stack
(and, to fill the other rows, any <code>work/submissions/&lt;source&gt;.csv.gz</code>):</p>
<pre>pip install kaggle   # API token in ~/.kaggle/kaggle.json (kaggle.com > Account > Create New API Token)
kaggle competitions submit -c {comp} -f work/submissions/stack.csv.gz -m "stack: XGBoost over all OOF sources"
kaggle competitions submissions -c {comp}      # public and private scores once scored</pre>
<p>The competition is closed: late submissions are scored but not ranked; both the public and the
private score are shown. Paste them into <code>work/scores.csv</code> (start from
<code>work/report/scores_template.csv</code>: columns <code>source,public,private</code>, one row per
submitted source, e.g. <code>stack,0.79,0.79</code>) and rerun
<code>python -m ensembling.report --work work</code> (or pass <code>--scores FILE</code>): the
kaggle_public / kaggle_private columns of the table fill in beside the teams' 0.79567 / 0.79352 / 0.79046.</p>
"""

CSS = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}
th{background:#eee}figure{margin:1em 0}img{max-width:100%}.warn{background:#fff4d6;padding:.6em;border-left:4px solid #e0a000}
pre{background:#f4f4f4;padding:.6em;overflow-x:auto}"""


def render_html(ctx: Context, table: pd.DataFrame, figures: list[tuple[str, bytes]], stats: list[tuple[str, bytes]], gain: pd.DataFrame | None) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Cdiscount: leaderboard comparison</title><style>{CSS}</style></head><body>",
             "<h1>Cdiscount Image Classification: every model, solution and the stack beside the leaderboard</h1>",
             f"<p class='warn'><b>Measured on: {html.escape(ctx.data_label)}.</b> "
             + ("Accuracy on the mini data (synthetic images, a few dozen classes) is <b>not comparable</b> with the Kaggle "
                "leaderboard (real images, 5270 classes): the leaderboard and team columns are the real competition's numbers, "
                "shown beside ours for the same recipe, not a score of this run.</p>" if "mini" in ctx.data_label else
                "OOF accuracy is on the Kaggle train products (each fold predicted by a model that did not see it); "
                "leaderboard columns are Kaggle's.</p>"),
             "<h2>Leaderboard comparison</h2>",
             "<p>oof_image_accuracy: mean over folds of each fold model's image-level validation accuracy (last epoch, no TTA); "
             "oof_product_accuracy: product-level accuracy of the source's OOF predictions on the products it predicts "
             "(oof_products; side sources cover only some); mini_test_accuracy: its submission scored on the mini test labels "
             "(products a source does not predict get the most frequent category); team_recorded: what the original team "
             "recorded for the same recipe, on team_recorded_on; team_private_lb: the team's final private leaderboard score; "
             "kaggle_public / kaggle_private: our submission's scores, pasted from Kaggle (see the last section).</p>",
             _table(table), "<h2>Stacker against the baselines (same products)</h2>", stack_section(ctx.work), "<h2>Plots</h2>"]
    parts += [_img(png, title) for title, png in figures]
    if gain is not None:
        parts += ["<h3>Stacker gain per level-1 group</h3>", _table(gain)]
    parts += ["<h2>Dataset statistics</h2>"] + ([_img(png, title) for title, png in stats] or ["<p>No figures under work/stats/ yet (python -m common.stats).</p>"])
    parts += ["<h2>Submitting to Kaggle</h2>", KAGGLE_HELP.format(comp=COMPETITION), "</body></html>"]
    return "\n".join(parts)


def stats_figures(work: WorkDir) -> list[tuple[str, bytes]]:
    return [(f"{p.parent.name}: {p.stem}", p.read_bytes()) for p in sorted(work.stats.glob("*/*.png"))] if work.stats.exists() else []


def build_report(work: WorkDir, scores: Path | None = None) -> dict:
    ctx = load_context(work)
    names = report_sources(work)
    if not names:
        raise FileNotFoundError(f"no prediction source under {work.root / 'preds'}: nothing to report")
    results = [evaluate_source(ctx, n) for n in names]
    table = leaderboard_table(ctx, results, read_scores(scores))
    gain = stack_gain_by_level1(ctx, results)
    figures = [("Accuracy per source", plot_accuracy(table)), ("Accuracy by image count", plot_by_image_count(results)),
               ("Accuracy by level-1 group", plot_by_level1(results))]
    if gain is not None:
        figures.append(("Stacker gain over the best single source per level-1 group", plot_gain(gain)))
    curves = plot_training_curves(training_curves(work))
    if curves is not None:
        figures.append(("Training curves: validation accuracy per epoch, each fold", curves))
    out = work.report
    write_text(out / "leaderboard.csv", table.to_csv(index=False))
    write_text(out / "scores_template.csv", "source,public,private\n" + "".join(f"{s.stem.removesuffix('.csv')},,\n" for s in sorted(work.submissions.glob("*.csv.gz"))))
    write_text(out / "index.html", render_html(ctx, table, figures, stats_figures(work), gain))
    return {"html": str(out / "index.html"), "csv": str(out / "leaderboard.csv"), "rows": len(table), "figures": len(figures)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=None)
    p.add_argument("--scores", default=None, help="source,public,private from Kaggle (default: WORK/scores.csv when it exists)")
    args = p.parse_args(argv)
    work = WorkDir(args.work)
    scores = Path(args.scores) if args.scores else work.root / "scores.csv"
    if args.scores and not scores.exists():
        raise FileNotFoundError(f"--scores {scores}: no such file")
    out = build_report(work, scores)
    table = pd.read_csv(out["csv"])
    cols = ["source", "kind", "oof_image_accuracy", "oof_product_accuracy", "mini_test_accuracy", "team_recorded", "team_private_lb"]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table[cols].to_string(index=False, formatters={c: (lambda v, d=5 if c in FIVE_DECIMALS else 4: "" if pd.isna(v) else f"{v:.{d}f}")
                                                              for c in cols[2:]}))
    print(f"wrote {out['html']} ({out['figures']} plots) and {out['csv']} ({out['rows']} rows)")
    return out


if __name__ == "__main__":
    main()
