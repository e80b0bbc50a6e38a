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

import base64
import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common.atomic import write_text
from common.categories import CategoryTree
from common.cli import parse_stage, run
from common.folds import read_protocol
from common.metrics import accuracy, product_report
from common.paths import WorkDir
from common.predictions import TopK
from common.prepare import DatasetPaths
from common.calibration import calibrate
from common.sources import KINDS, SourceInfo, SplitIds, list_sources, load_predictions
from common.submission import score_submission
from common.workdata import Labels, known_test_labels

from .ablations import html_section
from .plots import full_coverage, plot_accuracy, plot_by_image_count, plot_by_level1, plot_gain, plot_reliability, plot_training_curves, training_curves

COMPETITION = "cdiscount-image-classification-challenge"


# ---------------------------------------------------------------------------------------------
# the numbers


@dataclass
class Context:
    work: WorkDir
    tree: CategoryTree
    labels: Labels
    test_ids: np.ndarray
    test_truth: np.ndarray | None  # label per test_ids (-1 unknown); None on the real data
    test_labels_csv: str | None
    data_label: str
    protocol: dict  # folds.json: the protocol that made every OOF number
    splits: SplitIds  # what every prediction file must fit


def protocol_text(protocol: dict) -> str:
    """One sentence on how the OOF numbers were made (the report says it beside every number)."""
    if protocol.get("protocol") == "holdout":
        h = protocol.get("holdout", {})
        return (f"holdout protocol: each recipe trained once on every train product but the holdout ({h.get('products')} products: "
                f"{h.get('source')}) and predicted it; the stacker cross-validates over the holdout products")
    n = protocol.get("n_folds")
    return f"k-fold protocol: {n or 'the'} folds, each predicted by models that did not see it; the stacker's CV uses the same folds"


def load_context(work: WorkDir) -> Context:
    paths = DatasetPaths.load(work)
    tree = paths.tree()
    test_ids = np.sort(np.asarray(paths.index(work, "test").ids, np.int64))
    mini = bool(paths.test_labels) or len(tree) < 5270
    data_label = f"mini (synthetic, {len(tree)} classes)" if mini else "Kaggle train OOF"
    return Context(work, tree, Labels.load(work), test_ids, known_test_labels(paths, tree, test_ids), paths.test_labels, data_label,
                   read_protocol(work), SplitIds.load(work))


def report_sources(work: WorkDir) -> list[SourceInfo]:
    """Every finished source of every kind, ablations included (the stack last)."""
    infos = list_sources(work, KINDS)
    return [s for s in infos if s.kind != "stack"] + [s for s in infos if s.kind == "stack"]


def mean_image_accuracy(summary: dict) -> float | None:
    vals = summary.get("val_image_accuracy_per_fold") or []
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None


def test_accuracy(ctx: Context, name: str, test: TopK) -> float | None:
    """The submission's accuracy on the mini test labels: the written file when there is one,
    else built from test.npz (absent products get the most frequent train label)."""
    if ctx.test_truth is None:
        return None
    sub = ctx.work.submissions / f"{name}.csv.gz"
    if sub.exists():
        return score_submission(sub, ctx.test_labels_csv)
    return accuracy(test.top1_of(ctx.test_ids, ctx.labels.fallback), ctx.test_truth)


@dataclass
class SourceResult:
    name: str
    kind: str
    summary: dict
    oof: TopK
    report: dict  # product_report on the source's own OOF products
    image_accuracy: float | None
    test_accuracy: float | None
    calibration: dict  # common.calibration.calibrate on the OOF: ECE raw / calibrated (cross-fitted), reliability points

    @property
    def recorded(self) -> dict:
        """What the original team recorded for the same recipe (from the source's summary)."""
        return self.summary.get("recorded") or {}


def evaluate_source(ctx: Context, info: SourceInfo) -> SourceResult:
    oof, test = load_predictions(ctx.work, info.name, ctx.splits)
    known = np.isin(oof.ids, ctx.labels.ids)
    rep = product_report(oof.top1[known], ctx.labels.of(oof.ids[known]), ctx.labels.n_imgs[ctx.labels.rows(oof.ids[known])], ctx.tree)
    return SourceResult(info.name, info.kind, info.summary, oof, rep, mean_image_accuracy(info.summary), test_accuracy(ctx, info.name, test),
                        calibrate(oof.take(np.flatnonzero(known)), ctx.labels.of(oof.ids[known])))


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
        rec, board = r.recorded, r.summary.get("leaderboard") or {}
        rows.append({
            "source": r.name,
            "kind": r.kind,
            "measured_on": ctx.data_label,
            "protocol": r.summary.get("protocol", "kfold") + (" (FAST DEV RUN)" if is_fast_dev(r.summary) else ""),
            "oof_products": r.report["products"],
            "oof_image_accuracy": r.image_accuracy,
            "oof_product_accuracy": r.report["accuracy"],
            "mini_test_accuracy": r.test_accuracy,
            "ece_raw": r.calibration.get("ece_raw"),
            "ece_calibrated": r.calibration.get("ece"),
            "team_recorded": rec.get("value"),
            "team_recorded_what": rec.get("what", ""),
            "team_recorded_on": rec.get("measured_on", ""),
            "team_place": board.get("place"),
            "team_private_lb": board.get("private"),
            "kaggle_public": float(scores.loc[r.name, "public"]) if r.name in getattr(scores, "index", []) else None,
            "kaggle_private": float(scores.loc[r.name, "private"]) if r.name in getattr(scores, "index", []) else None,
        })
    table = pd.DataFrame(rows)
    table["team_place"] = table["team_place"].astype("Int64")
    return table


def is_fast_dev(summary: dict) -> bool:
    """A source made by --fast-dev-run (or stacked over one): its numbers check wiring, nothing else."""
    return bool((summary.get("recipe") or {}).get("fast_dev_run") or summary.get("fast_dev_run"))


def stack_gain_by_level1(ctx: Context, results: list[SourceResult]) -> pd.DataFrame | None:
    """Per level-1 group, on the stack's OOF products: stack accuracy minus the best single
    non-stack source's accuracy in that group (products in the group, all sources scored alike)."""
    stack = next((r for r in results if r.kind == "stack"), None)
    singles = [r for r in full_coverage(results) if r.kind != "stack"]
    if stack is None or not singles:
        return None
    ids = stack.oof.ids
    truth = ctx.labels.of(ids)
    group = ctx.tree.level1_of[np.maximum(truth, 0)]
    preds = {r.name: r.oof.top1_of(ids, ctx.labels.fallback) for r in [stack, *singles]}
    out = []
    for g in np.unique(group):
        sel = group == g
        accs = {n: accuracy(p[sel], truth[sel]) for n, p in preds.items()}
        best = max((n for n in accs if n != stack.name), key=lambda n: accs[n])
        out.append({"level1": ctx.tree.level1_groups[g], "products": int(sel.sum()), "stack": accs[stack.name], "best_source": best,
                    "best_source_accuracy": accs[best], "gain": accs[stack.name] - accs[best]})
    return pd.DataFrame(out).sort_values("gain")



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


def stack_section(work: WorkDir, protocol: dict) -> str:
    stacks = list_sources(work, ["stack"], finished=False)
    s = stacks[0].summary if stacks else None
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
            f"(those with at least one source row), the stacker's by its own product-level CV "
            + ("over inner folds of the holdout products" if protocol.get("protocol") == "holdout" else "over the folds of folds.csv") + ".</p>"
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
             f"<p><b>Protocol:</b> {html.escape(protocol_text(ctx.protocol))}.</p>",
             *(["<p class='warn'><b>FAST DEV RUN:</b> sources marked so were trained for a few steps at a small input, often from "
                "random weights: they check the wiring; their accuracy means nothing.</p>"] if table["protocol"].str.contains("FAST DEV").any() else []),
             "<h2>Leaderboard comparison</h2>",
             "<p>oof_image_accuracy: mean over folds of each fold model's image-level validation accuracy (last epoch, no TTA); "
             "oof_product_accuracy: product-level accuracy of the source's OOF predictions on the products it predicts "
             "(oof_products; side sources cover only some); mini_test_accuracy: its submission scored on the mini test labels "
             "(products a source does not predict get the most frequent category); ece_raw / ece_calibrated: expected calibration "
             "error of the top-1 score over 15 bins, as stored and through the isotonic map fitted on the other 4 of 5 splits of the "
             "OOF products (common/calibration.py; predicting new products applies the map of the blends and the stack); team_recorded: what the original team "
             "recorded for the same recipe, on team_recorded_on; team_private_lb: the team's final private leaderboard score; "
             "kaggle_public / kaggle_private: our submission's scores, pasted from Kaggle (see the last section).</p>",
             _table(table), "<h2>Stacker against the baselines (same products)</h2>", stack_section(ctx.work, ctx.protocol),
             "<h2>Ablations: each credited mechanism, with against without</h2>", html_section(ctx.work), "<h2>Plots</h2>"]
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
    infos = report_sources(work)
    if not infos:
        raise FileNotFoundError(f"no prediction source under {work.root / 'preds'}: nothing to report")
    results = [evaluate_source(ctx, info) for info in infos]
    table = leaderboard_table(ctx, results, read_scores(scores))
    gain = stack_gain_by_level1(ctx, results)
    figures = [("Accuracy per source", plot_accuracy(table)), ("Accuracy by image count", plot_by_image_count(results)),
               ("Accuracy by level-1 group", plot_by_level1(results))]
    if gain is not None:
        figures.append(("Stacker gain over the best single source per level-1 group", plot_gain(gain)))
    figures.append(("Reliability of the top-1 score (blends and the stack): stored and calibrated", plot_reliability(results)))
    curves = plot_training_curves(training_curves(work))
    if curves is not None:
        figures.append(("Training curves: validation accuracy per epoch, each fold", curves))
    out = work.report
    write_text(out / "leaderboard.csv", table.to_csv(index=False))
    write_text(out / "scores_template.csv", "source,public,private\n" + "".join(f"{s.stem.removesuffix('.csv')},,\n" for s in sorted(work.submissions.glob("*.csv.gz"))))
    write_text(out / "index.html", render_html(ctx, table, figures, stats_figures(work), gain))
    return {"html": str(out / "index.html"), "csv": str(out / "leaderboard.csv"), "rows": len(table), "figures": len(figures)}


@dataclass
class ReportOptions:
    scores: str = ""  # source,public,private from Kaggle (default: WORK/scores.csv when it exists)


def main(argv: list[str] | None = None) -> dict:
    args = parse_stage(argv, __doc__, ReportOptions)
    work = args.work
    scores = Path(args.options.scores) if args.options.scores else work.root / "scores.csv"
    if args.options.scores and not scores.exists():
        raise FileNotFoundError(f"--scores {scores}: no such file")
    out = build_report(work, scores)
    table = pd.read_csv(out["csv"])
    print(protocol_text(load_context(work).protocol))
    cols = ["source", "kind", "protocol", "oof_image_accuracy", "oof_product_accuracy", "mini_test_accuracy", "team_recorded", "team_private_lb"]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table[cols].to_string(index=False, formatters={c: (lambda v, d=5 if c in FIVE_DECIMALS else 4: "" if pd.isna(v) else f"{v:.{d}f}")
                                                              for c in cols[3:]}))
    print(f"wrote {out['html']} ({out['figures']} plots) and {out['csv']} ({out['rows']} rows)")
    return out


if __name__ == "__main__":
    run(main)
