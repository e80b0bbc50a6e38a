"""The leaderboard comparison report: every model, solution blend, team blend, side source and the
stack beside the leaderboard and the numbers the original teams recorded.

    python -m ensembling.report --work work [--scores work/scores.csv] [--readme [--readme-path README.md]]

Writes work/report/index.html (self-contained: the plots are embedded PNGs), leaderboard.csv (ranked,
rounded), side_sources.csv (MD5, OCR on the products they cover, beside the stack and the best CNN there)
and scores_template.csv (source,public,private: fill it in after submitting to Kaggle, save it as
work/scores.csv or pass --scores, rerun: the Kaggle columns fill in). `--readme` also writes the README's
result tables between its `<!-- results:begin -->` / `<!-- results:end -->` markers (and each solution
README's `<!-- results:NAME:begin -->` block): the same file for the same work dir.

Everything is recomputed from the files of earlier stages (preds/<source>/{oof,test}.npz and summary.json,
submissions/, models/*/summary.csv, stats/, the machine.json the runner writes, logs/), so the report never
disagrees with them. Accuracy on the mini data (synthetic images, a few dozen classes) is NOT comparable
with the Kaggle leaderboard (real images, 5270 classes).
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
from common.machine import STAGE_COLUMNS, STAGES_HELP, run_machine, stage_rows
from common.paths import REPO, WorkDir
from common.predictions import TopK
from common.prepare import DatasetPaths
from common.calibration import calibrate
from common.sources import KINDS, SourceInfo, SplitIds, list_sources, load_predictions
from common.submission import score_submission
from common.workdata import Labels, known_test_labels

from .ablations import html_section
from .readme_blocks import class_prior, protocol_text, readme_tables, solution_table, stack_readme_table, write_readme
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


def load_context(work: WorkDir) -> Context:
    paths = DatasetPaths.load(work)
    tree = paths.tree()
    test_ids = np.sort(np.asarray(paths.index(work, "test").ids, np.int64))
    data_label = f"mini (synthetic, {len(tree)} classes)" if bool(paths.test_labels) or len(tree) < 5270 else "Kaggle train OOF"
    return Context(work, tree, Labels.load(work), test_ids, known_test_labels(paths, tree, test_ids), paths.test_labels, data_label,
                   read_protocol(work), SplitIds.load(work))


def report_sources(work: WorkDir) -> list[SourceInfo]:
    """Every finished source of every kind, ablations included (the stack last)."""
    infos = list_sources(work, KINDS)
    return [s for s in infos if s.kind != "stack"] + [s for s in infos if s.kind == "stack"]


def mean_image_accuracy(summary: dict) -> float | None:
    vals = [v for v in summary.get("val_image_accuracy_per_fold") or [] if v is not None]
    return float(np.mean(vals)) if vals else None


def test_accuracy(ctx: Context, name: str, test: TopK) -> float | None:
    """The submission's accuracy on the mini test labels: the written file when there is one, else built from test.npz
    (absent products get the most frequent train label)."""
    sub = ctx.work.submissions / f"{name}.csv.gz"
    if ctx.test_truth is None:
        return None
    return score_submission(sub, ctx.test_labels_csv) if sub.exists() else accuracy(test.top1_of(ctx.test_ids, ctx.labels.fallback), ctx.test_truth)


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
    test: TopK | None = None
    same_as: str = ""  # a one-member blend: the model it equals (whose own row is then dropped)
    note: str = ""

    @property
    def recorded(self) -> dict:
        """What the original team recorded for the same recipe (from the source's summary)."""
        return self.summary.get("recorded") or {}


def evaluate_source(ctx: Context, info: SourceInfo) -> SourceResult:
    oof, test = load_predictions(ctx.work, info.name, ctx.splits)
    known = np.isin(oof.ids, ctx.labels.ids)
    rep = product_report(oof.top1[known], ctx.labels.of(oof.ids[known]), ctx.labels.n_imgs[ctx.labels.rows(oof.ids[known])], ctx.tree)
    return SourceResult(info.name, info.kind, info.summary, oof, rep, mean_image_accuracy(info.summary), test_accuracy(ctx, info.name, test),
                        calibrate(oof.take(np.flatnonzero(known)), ctx.labels.of(oof.ids[known])), test)


def merge_one_member_blends(results: list[SourceResult]) -> list[SourceResult]:
    """A blend of one model predicts what the model does: one row, the blend's (its team's place), naming the model (same_as)."""
    by_name = {r.name: r for r in results}
    dropped = set()
    for r in results:
        members = r.summary.get("members") or []
        m = by_name.get(members[0]) if r.kind in ("solution blend", "team blend") and len(members) == 1 else None
        pairs = [] if m is None else [(r.oof, m.oof)] + ([(r.test, m.test)] if r.test is not None and m.test is not None else [])
        if m is None or not all(np.array_equal(x.ids, y.ids) and np.array_equal(x.top1, y.top1) for x, y in pairs):
            continue
        r.same_as, dropped = m.name, dropped | {m.name}
        r.image_accuracy = r.image_accuracy if r.image_accuracy is not None else m.image_accuracy
        if m.recorded.get("value") is not None:
            r.note = f"its one model {m.name}: the team recorded {m.recorded['value']:.5f} ({m.recorded.get('what', '')}, {m.recorded.get('measured_on', '')})"
    return [r for r in results if r.name not in dropped]


def read_scores(path: Path | None) -> pd.DataFrame:
    """source,public,private as the user pasted them from Kaggle (empty when no file)."""
    if path is None or not Path(path).exists():
        return pd.DataFrame(columns=["source", "public", "private"])
    frame = pd.read_csv(path)
    missing = {"source", "public", "private"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: needs the columns source,public,private (missing {sorted(missing)})")
    return frame


def is_side(r: SourceResult, most: int) -> bool:
    """A side source (MD5, OCR) or anything predicting under 90 % of the products: not ranked with the others."""
    return r.kind == "side source" or r.report["products"] < 0.9 * most


def on_products(ctx: Context, source: SourceResult | None, ids: np.ndarray, split: str = "oof") -> float | None:
    """`source`'s accuracy on the products `ids` (the most frequent label where it has none)."""
    if source is None or not len(ids) or (split == "test" and (source.test is None or ctx.test_truth is None)):
        return None
    if split == "oof":
        return accuracy(source.oof.top1_of(ids, ctx.labels.fallback), ctx.labels.of(ids))
    return accuracy(source.test.top1_of(ids, ctx.labels.fallback), ctx.test_truth[np.searchsorted(ctx.test_ids, ids)])


def best_cnn(results: list[SourceResult]) -> SourceResult | None:
    """The best single network (a model, full coverage) by OOF product accuracy."""
    most = max(max(r.report["products"] for r in results), 1)
    models = [r for r in results if (r.kind == "model" or r.same_as) and not is_side(r, most)]  # a one-member blend is its model
    return max(models, key=lambda r: (r.report["accuracy"], r.name), default=None)


def side_table(ctx: Context, results: list[SourceResult]) -> pd.DataFrame:
    """Each side source on the products it covers (OOF, mini test), beside the stack and the best CNN on the same products."""
    most = max(max(r.report["products"] for r in results), 1)
    stack, cnn = next((r for r in results if r.kind == "stack"), None), best_cnn(results)
    rows = []
    for r in (r for r in results if is_side(r, most)):
        ids = r.oof.ids[np.isin(r.oof.ids, ctx.labels.ids)]
        test_ids = (r.test.ids[np.isin(r.test.ids, ctx.test_ids)] if r.test is not None and ctx.test_truth is not None else np.zeros(0, np.int64))
        rows.append({"source": r.name, "kind": r.kind, "oof_products": len(ids), "oof_coverage": len(ids) / most, "accuracy": on_products(ctx, r, ids),
                     "stack_on_same_products": on_products(ctx, stack, ids), "best_cnn": (cnn.same_as or cnn.name) if cnn else "", "best_cnn_on_same_products":
                     on_products(ctx, cnn, ids), "test_products": len(test_ids), "test_coverage": len(test_ids) / max(len(ctx.test_ids), 1),
                     "test_accuracy": on_products(ctx, r, test_ids, "test"), "stack_test_on_same_products": on_products(ctx, stack, test_ids, "test"),
                     "best_cnn_test_on_same_products": on_products(ctx, cnn, test_ids, "test")})
    return pd.DataFrame(rows)


SIDE_COLUMNS = ("stack_on_same_products", "best_cnn", "best_cnn_on_same_products")  # filled for side sources only


def leaderboard_table(ctx: Context, results: list[SourceResult], scores: pd.DataFrame, side: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per source, ranked: those predicting every product by OOF product accuracy (then mini test), then the side
    sources, with their coverage and the stack's and the best CNN's accuracy on the same products."""
    scores = scores.set_index("source") if len(scores) else scores
    most = max(max(r.report["products"] for r in results), 1)
    side = side_table(ctx, results) if side is None else side
    side = side.set_index("source") if len(side) else side
    rows = []
    for r in results:
        rec, board = r.recorded, r.summary.get("leaderboard") or {}
        s = side.loc[r.name] if r.name in getattr(side, "index", []) else {}
        kaggle = {k: float(scores.loc[r.name, k]) if r.name in getattr(scores, "index", []) else None for k in ("public", "private")}
        rows.append({
            "rank": None, "source": r.name, "kind": r.kind, "same_as": r.same_as, "measured_on": ctx.data_label,
            "protocol": r.summary.get("protocol", "kfold") + (" (FAST DEV RUN)" if is_fast_dev(r.summary) else ""),
            "oof_products": r.report["products"], "oof_coverage": r.report["products"] / most, "oof_image_accuracy": r.image_accuracy,
            "oof_product_accuracy": r.report["accuracy"], "mini_test_accuracy": r.test_accuracy, **{c: s.get(c) for c in SIDE_COLUMNS},
            "ece_raw": r.calibration.get("ece_raw"), "ece_calibrated": r.calibration.get("ece"),
            "team_recorded": rec.get("value"), "team_recorded_what": "; ".join(x for x in (rec.get("what", ""), r.note) if x),
            "team_recorded_on": rec.get("measured_on", ""), "team_place": board.get("place"), "team_private_lb": board.get("private"),
            "kaggle_public": kaggle["public"], "kaggle_private": kaggle["private"], "_side": is_side(r, most)})
    table = pd.DataFrame(rows)
    table = table.sort_values(["_side", "oof_product_accuracy", "mini_test_accuracy", "source"], ascending=[True, False, False, True],
                              na_position="last", kind="stable").reset_index(drop=True)
    table["rank"] = pd.array([i + 1 if not sd else None for i, sd in enumerate(table["_side"])], dtype="Int64")
    table["team_place"] = table["team_place"].astype("Int64")
    return table.drop(columns="_side")


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


FIVE_DECIMALS = ("team_recorded", "team_private_lb", "kaggle_public", "kaggle_private")  # leaderboard numbers as published


def rounded(frame: pd.DataFrame) -> pd.DataFrame:
    """Accuracies and shares to 4 decimals, leaderboard numbers to 5 (as published): the CSV's floats."""
    floats = frame.select_dtypes("float").columns
    return frame.round({c: 5 if c in FIVE_DECIMALS else 4 for c in floats})


# ---------------------------------------------------------------------------------------------
# HTML


def _img(png: bytes, alt: str) -> str:
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}"><figcaption>{html.escape(alt)}</figcaption></figure>'


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
        return f"<p>No stack yet: run <code>python -m ensembling.stack --work {html.escape(str(work.root))}</code>.</p>"
    if s.get("cv") is None:
        return (f"<p>The stack predicted test with a model trained elsewhere ({html.escape(str(s['config'].get('model')))}): "
                "no CV in this run; see the run that trained it.</p>")
    rows = [{"method": k, "oof_accuracy": v["oof_accuracy"], "mini_test_accuracy": v["test_accuracy"]} for k, v in s["baselines"].items()]
    base = pd.DataFrame([{"method": "STACK (XGBoost, own CV)", "oof_accuracy": s["oof_product_accuracy"], "mini_test_accuracy": s["test_accuracy"]}]
                        + sorted(rows, key=lambda r: r["oof_accuracy"], reverse=True))
    folds = pd.DataFrame([{"fold": k, **v} for k, v in s["cv"]["per_fold"].items()])
    verdict = "beats" if s["beats_every_baseline"] else "does <b>not</b> beat"
    imp = list(s.get("feature_importance_gain", {}).items())[:12]
    return (f"<p>Stacked sources: {html.escape(', '.join(s['sources']))}; left out: {html.escape(', '.join(s['left_out']) or 'none')}. "
            f"{len(s['features'])} features. Every number below is on the same {s['oof_products']} OOF products (those with at least one source "
            "row), the stacker's by its own product-level CV "
            + ("over inner folds of the holdout products" if protocol.get("protocol") == "holdout" else "over the folds of folds.csv") + ".</p>"
            f"<p>The stack {verdict} every baseline: {s['gain_over_best_baseline']:+.4f} over the best ({html.escape(s['best_baseline']['name'])}). "
            f"Candidate recall (the ceiling: the true label is among the candidates): {s['candidate_recall']:.4f}.</p>" + _table(base) + "<h3>Per fold</h3>"
            + _table(folds) + "<h3>Most useful features (total gain)</h3>" + _table(pd.DataFrame(imp, columns=["feature", "total_gain"])))


KAGGLE_HELP = """
<p>On the real data the mini-test column is empty (Kaggle keeps the test labels). Submit the stack (and, to fill the other rows, any
<code>{work}/submissions/&lt;source&gt;.csv.gz</code>):</p>
<pre>pip install kaggle   # API token in ~/.kaggle/kaggle.json (kaggle.com > Account > Create New API Token)
kaggle competitions submit -c {comp} -f {work}/submissions/stack.csv.gz -m "stack: XGBoost over all OOF sources"
kaggle competitions submissions -c {comp}      # public and private scores once scored</pre>
<p>The competition is closed: late submissions are scored but not ranked; both the public and the private score are shown. Paste them into
<code>{work}/scores.csv</code> (start from <code>{work}/report/scores_template.csv</code>: columns <code>source,public,private</code>, one row per
submitted source, e.g. <code>stack,0.79,0.79</code>) and rerun <code>python -m ensembling.report --work {work}</code> (or pass <code>--scores FILE</code>):
the kaggle_public / kaggle_private columns of the table fill in beside the teams' 0.79567 / 0.79352 / 0.79046.</p>
"""

CSS = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}table{border-collapse:collapse;font-size:12px;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}th{background:#eee}figure{margin:1em 0}img{max-width:100%}
.warn{background:#fff4d6;padding:.6em;border-left:4px solid #e0a000}pre{background:#f4f4f4;padding:.6em;overflow-x:auto}"""

COLUMNS_HELP = ("<p>Ranked by oof_product_accuracy (then mini test) among the sources that predict every product; a one-member blend is one row with its "
                "model (same_as). oof_image_accuracy: mean over folds of each fold model's image-level validation accuracy (last epoch, no TTA); "
                "oof_product_accuracy: product-level accuracy of the source's OOF predictions on the products it predicts (oof_products, oof_coverage); "
                "mini_test_accuracy: its submission scored on the mini test labels (products a source does not predict get the most frequent category); "
                "ece_raw / ece_calibrated: expected calibration error of the top-1 score over 15 bins, as stored and through the isotonic map fitted on the "
                "other 4 of 5 splits of the OOF products (common/calibration.py); team_recorded: what the original team recorded for the same recipe, on "
                "team_recorded_on; team_private_lb: the team's final private leaderboard score; kaggle_public / kaggle_private: our submission's scores, "
                "pasted from Kaggle (the last section). Side sources are below, on the products they cover.</p>")


def render_html(ctx: Context, tables: dict[str, pd.DataFrame], figures: list, stats: list, gain: pd.DataFrame | None, facts: dict) -> str:
    table, side, root = tables["leaderboard"], tables["side"], html.escape(str(ctx.work.root))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Cdiscount: leaderboard comparison</title><style>{CSS}</style></head><body>",
             "<h1>Cdiscount Image Classification: every model, solution and the stack beside the leaderboard</h1>",
             f"<p class='warn'><b>Measured on: {html.escape(ctx.data_label)}.</b> "
             + ("Accuracy on the mini data (synthetic images, a few dozen classes) is <b>not comparable</b> with the Kaggle leaderboard (real images, "
                "5270 classes): the leaderboard and team columns are the real competition's numbers, shown beside ours for the same recipe, not a score "
                "of this run.</p>" if "mini" in ctx.data_label else
                "OOF accuracy is on the Kaggle train products (each fold predicted by a model that did not see it); leaderboard columns are Kaggle's.</p>"),
             f"<p><b>Protocol:</b> {html.escape(protocol_text(ctx.protocol))}.</p>",
             f"<p><b>Machine:</b> {html.escape(facts['machine_text'])}</p>",
             *(["<p class='warn'><b>FAST DEV RUN:</b> sources marked so were trained for a few steps at a small input, often from "
                "random weights: they check the wiring; their accuracy means nothing.</p>"] if table["protocol"].str.contains("FAST DEV").any() else []),
             "<h2>Leaderboard comparison</h2>", COLUMNS_HELP, _table(table[table["rank"].notna()]),
             "<h2>Side sources, on the products they cover</h2>",
             "<p>Each side source predicts only some products (oof_coverage of the OOF products): its accuracy there is set beside the "
             "stack's and the best CNN's on the same products, OOF and mini test.</p>" + (_table(side) if len(side) else "<p>None.</p>"),
             "<h2>Stacker against the baselines (same products)</h2>", stack_section(ctx.work, ctx.protocol),
             "<h2>Ablations: each credited mechanism, with against without</h2>", html_section(ctx.work).replace("--work W", f"--work {root}"),
             "<h2>Plots</h2>", *[_img(png, title) for title, png in figures]]
    parts += (["<h3>Stacker gain per level-1 group</h3>", _table(gain)] if gain is not None else []) + [
        "<h2>Stage times</h2>", f"<p>{html.escape(STAGES_HELP)}</p>", _table(facts["stages"]), "<h2>Dataset statistics</h2>",
        *([_img(png, title) for title, png in stats] or ["<p>No figures under work/stats/ yet (python -m common.stats).</p>"]),
        "<h2>Submitting to Kaggle</h2>", KAGGLE_HELP.format(comp=COMPETITION, work=root), "</body></html>"]
    return "\n".join(parts)


def stats_figures(work: WorkDir) -> list[tuple[str, bytes]]:
    return [(f"{p.parent.name}: {p.stem}", p.read_bytes()) for p in sorted(work.stats.glob("*/*.png"))] if work.stats.exists() else []


# ---------------------------------------------------------------------------------------------
# the run's machine and stage times, the README's tables


def run_facts(ctx: Context) -> dict:
    """The run's machine (common.machine.run_machine: machine.json, else this machine, said so) and its stage times from the logs."""
    m, text = run_machine(ctx.work.root)
    return {"machine": m, "machine_text": text, "stages": pd.DataFrame(stage_rows(ctx.work.root), columns=STAGE_COLUMNS)}


def build_report(work: WorkDir, scores: Path | None = None, readme: Path | None = None) -> dict:
    ctx = load_context(work)
    infos = report_sources(work)
    if not infos:
        raise FileNotFoundError(f"no prediction source under {work.root / 'preds'}: nothing to report")
    results = merge_one_member_blends([evaluate_source(ctx, info) for info in infos])
    side = side_table(ctx, results)
    table = leaderboard_table(ctx, results, read_scores(scores), side)
    gain = stack_gain_by_level1(ctx, results)
    figures = [("Accuracy per source (ranked)", plot_accuracy(table)), ("Accuracy by image count", plot_by_image_count(results)),
               ("Accuracy by level-1 group", plot_by_level1(results)),
               *([("Stacker gain over the best single source per level-1 group", plot_gain(gain))] if gain is not None else []),
               ("Reliability of the top-1 score (blends and the stack): stored and calibrated", plot_reliability(results)),
               ("Training curves: validation accuracy per epoch (parts: the mean over folds, band min-max)", plot_training_curves(training_curves(work)))]
    figures, facts, out = [(t, png) for t, png in figures if png is not None], run_facts(ctx), work.report
    write_text(out / "leaderboard.csv", rounded(table).to_csv(index=False))
    write_text(out / "side_sources.csv", rounded(side).to_csv(index=False))
    write_text(out / "scores_template.csv", "source,public,private\n" + "".join(f"{s.stem.removesuffix('.csv')},,\n" for s in sorted(work.submissions.glob("*.csv.gz"))))
    write_text(out / "index.html", render_html(ctx, {"leaderboard": table, "side": side}, figures, stats_figures(work), gain, facts))
    result = {"html": str(out / "index.html"), "csv": str(out / "leaderboard.csv"), "rows": len(table), "figures": len(figures), "readme": []}
    if readme is not None:  # the README's block, and each solutions/NAME/README.md beside it holding a results:NAME block
        if not write_readme(readme, {"results": readme_tables(ctx, table, side, facts, class_prior(ctx, results))}):
            raise ValueError(f"{readme}: no <!-- results:begin --> ... <!-- results:end --> markers to write the tables between")
        blocks = {p: {f"results:{p.parent.name}": solution_table(table, results, p.parent.name)} for p in sorted((readme.parent / "solutions").glob("*/README.md"))}
        stack = stack_readme_table(ctx, results, gain)
        if stack is not None:
            blocks[readme.parent / "ensembling" / "README.md"] = {"results:stack": stack}
        result["readme"] = [str(readme)] + [str(p) for p, b in blocks.items() if p.exists() and write_readme(p, b)]
    return result


@dataclass
class ReportOptions:
    scores: str = ""  # source,public,private from Kaggle (default: WORK/scores.csv when it exists)
    readme: bool = False  # also write the README's result tables (between <!-- results:begin --> and <!-- results:end -->) from this work dir
    readme_path: str = ""  # the README --readme writes ("": the repository's README.md; solutions/*/README.md beside it with results:NAME markers too)


def main(argv: list[str] | None = None) -> dict:
    args = parse_stage(argv, __doc__, ReportOptions)
    work = args.work
    scores = Path(args.options.scores) if args.options.scores else work.root / "scores.csv"
    if args.options.scores and not scores.exists():
        raise FileNotFoundError(f"--scores {scores}: no such file")
    readme = (Path(args.options.readme_path) if args.options.readme_path else REPO / "README.md") if args.options.readme else None
    out = build_report(work, scores, readme)
    cols = ["rank", "source", "kind", "oof_coverage", "oof_product_accuracy", "mini_test_accuracy", "stack_on_same_products", "team_private_lb"]
    print(protocol_text(load_context(work).protocol) + "\n" + pd.read_csv(out["csv"], dtype={"rank": "Int64"})[cols].to_string(index=False, na_rep=""))
    print(f"wrote {out['html']} ({out['figures']} plots) and {out['csv']} ({out['rows']} rows)" + "".join(f"; tables in {p}" for p in out["readme"]))
    return out


if __name__ == "__main__":
    run(main)
