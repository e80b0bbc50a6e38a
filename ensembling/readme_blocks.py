"""The README blocks `python -m ensembling.report --readme` writes from a finished run: the result
tables of the front page, each solution README's table and ensembling/README.md's stack table,
between their `<!-- KEY:begin -->` / `<!-- KEY:end -->` markers (nothing else in the file changes)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from common.atomic import write_text
from common.machine import reproduction_text, stage_markdown
from common.metrics import accuracy

if TYPE_CHECKING:
    from .report import Context, SourceResult


def protocol_text(protocol: dict) -> str:
    """One sentence on how the OOF numbers were made (the report says it beside every number)."""
    if protocol.get("protocol") == "holdout":
        h = protocol.get("holdout", {})
        return (f"holdout protocol: each recipe trained once on every train product but the holdout ({h.get('products')} products: "
                f"{h.get('source')}) and predicted it; the stacker cross-validates over the holdout products")
    n = protocol.get("n_folds")
    return f"k-fold protocol: {n or 'the'} folds, each predicted by models that did not see it; the stacker's CV uses the same folds"


def _a(v, bold: bool = False) -> str:
    return "" if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)) else (f"**{v:.4f}**" if bold else f"{v:.4f}")


def _rows(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def readme_tables(ctx: Context, table: pd.DataFrame, side: pd.DataFrame, facts: dict, prior: tuple[float | None, float | None]) -> str:
    """The README's result tables (markdown): the ranked sources, the side sources on their products, the stage times, the machine."""
    ranked = table[table["rank"].notna()]
    n_oof, n_test = int(ranked["oof_products"].max()), len(ctx.test_ids)
    head = [f"{ctx.data_label}, work dir `{ctx.work.root}` ({protocol_text(ctx.protocol)}); {n_oof:,} OOF products, {n_test:,} test products. "
            f"Written by `python -m ensembling.report --work {ctx.work.root} --readme`.", ""]
    rows = [[str(r.rank), f"**{r.source}**" if r.kind == "stack" else f"`{r.source}`" + (f" (= `{r.same_as}`)" if r.same_as else ""), r.kind,
             _a(r.oof_product_accuracy, r.kind == "stack"), _a(r.mini_test_accuracy, r.kind == "stack")] for r in ranked.itertuples()]
    rows.append(["", "class prior (always the most frequent train category)", "baseline", _a(prior[0]), _a(prior[1])])
    lines = head + _rows(["rank", "source", "kind", f"OOF product accuracy ({n_oof:,} products)", "mini test"], rows)
    if len(side):
        lines += ["", "Side sources on the products they cover (not ranked above: their own accuracy is on those products only), "
                  f"beside the stack and the best CNN (`{side['best_cnn'].iloc[0]}`) on the same products:", ""]
        lines += _rows(["side source", "OOF products (share)", "its OOF accuracy", "stack", "best CNN", "test products (share)", "its test accuracy",
                        "stack", "best CNN"],
                       [[f"`{r.source}`", f"{r.oof_products:,} ({r.oof_coverage:.1%})", _a(r.accuracy), _a(r.stack_on_same_products),
                         _a(r.best_cnn_on_same_products), f"{r.test_products:,} ({r.test_coverage:.1%})" if r.test_coverage is not None else "",
                         _a(r.test_accuracy), _a(r.stack_test_on_same_products), _a(r.best_cnn_test_on_same_products)] for r in side.itertuples()])
    lines += stage_markdown(facts["stages"].to_dict("records")) + ["", f"Machine: {facts['machine_text']}.", "", reproduction_text(facts["machine"])]
    return "\n".join(lines) + "\n"


def class_prior(ctx: Context, results: list[SourceResult]) -> tuple[float | None, float | None]:
    """Always the most frequent train category: on the widest source's OOF products, and on the mini test."""
    ids = max(results, key=lambda r: r.report["products"]).oof.ids
    truth = ctx.labels.of(ids)
    oof = accuracy(np.full(len(ids), ctx.labels.fallback), truth[truth >= 0]) if (truth >= 0).any() else None
    known = ctx.test_truth[ctx.test_truth >= 0] if ctx.test_truth is not None else np.zeros(0)
    return oof, (accuracy(np.full(len(known), ctx.labels.fallback), known) if len(known) else None)


def solution_table(table: pd.DataFrame, results: list[SourceResult], solution: str) -> str:
    """One solution's sources (ranked) by image count, and the best CNN of the others: a solution README's table."""
    by = {r.name: r for r in results}
    ranked = table[table["rank"].notna()]
    of = lambda r: by[r.source].summary.get("solution") or r.source.split("_")[0]  # noqa: E731
    own = [r for r in ranked.itertuples() if of(r) == solution]
    other = next((r for r in ranked.itertuples() if (r.kind == "model" or r.same_as) and of(r) != solution), None)
    rows = []
    for r, ref in [(r, False) for r in own] + ([(other, True)] if other else []):
        k = by[r.source].report["by_image_count"]
        rows.append([f"`{r.source}`" + (f" (= `{r.same_as}`)" if r.same_as else "") + (" (best CNN of the other solutions)" if ref else ""), r.kind,
                     _a(r.oof_product_accuracy), *[f"{k[str(n)]['accuracy']:.3f}" if str(n) in k else "" for n in (1, 2, 3, 4)], _a(r.mini_test_accuracy)])
    return "\n".join(_rows(["source", "kind", "OOF product accuracy", "K=1", "K=2", "K=3", "K=4", "mini test"], rows)) + "\n"


def stack_readme_table(ctx: Context, results: list[SourceResult], gain: pd.DataFrame | None) -> str | None:
    """The stack beside the plain means it has to beat (from its summary), its candidate recall and
    calibration, and the level-1 groups it gains most on: ensembling/README.md's table."""
    stack = next((r for r in results if r.kind == "stack"), None)
    if stack is None:
        return None
    s = stack.summary
    folds = " / ".join(f"{f['accuracy']:.4f}" for f in s["cv"]["per_fold"].values())
    base = s.get("baselines", {})
    rows = [[f"**stack** (per fold {folds})", _a(s["oof_product_accuracy"], True), _a(s.get("test_accuracy"), True)]]
    rows += [[f"{name} of the {what}", _a(base[key]["oof_accuracy"]), _a(base[key].get("test_accuracy"))]
             for key, name, what in [("mean (stacked sources)", "arithmetic mean", "stacked sources"), ("geomean (stacked sources)", "geometric mean", "stacked sources"),
                                     ("mean (models)", "arithmetic mean", "CNN models"), ("geomean (models)", "geometric mean", "CNN models")] if key in base]
    rows.append(["candidate recall (the ceiling: true label among the candidates)", _a(s["candidate_recall"]), ""])
    lines = [f"{ctx.data_label}, work dir `{ctx.work.root}`:", ""] + _rows(["source", "OOF product accuracy", "test"], rows)
    cal = s.get("calibration") or {}
    if cal:
        lines += ["", f"Calibration of the top-1 score on {cal['products']:,} OOF products ({cal['method']}): ECE {cal['ece_raw']:.3f} stored, "
                  f"{cal['ece']:.3f} calibrated."]
    if gain is not None and len(gain):
        top = gain.sort_values("gain", ascending=False).head(4)
        lines += ["", "Largest gains over the best single source per level-1 group: "
                  + ", ".join(f"{r.level1} ({r.gain:+.2f} over `{r.best_source}`, {r.products} products)" for r in top.itertuples()) + "."]
    return "\n".join(lines) + "\n"


def replace_block(text: str, key: str, block: str) -> str:
    """`text` with what stands between <!-- KEY:begin ... --> and <!-- KEY:end --> replaced by `block` (markers kept)."""
    i, j = text.find(f"<!-- {key}:begin"), text.find(f"<!-- {key}:end -->")
    if i < 0 or j < i:
        raise ValueError(f"no <!-- {key}:begin --> ... <!-- {key}:end --> markers")
    return text[:text.index("-->", i) + 3] + "\n" + block + text[j:]


def write_readme(path: Path, blocks: dict[str, str]) -> list[str]:
    """Each block between its markers in the file at `path` (keys without markers there are skipped); the keys written."""
    text = path.read_text()
    done = [k for k in blocks if f"<!-- {k}:begin" in text]
    for k in done:
        text = replace_block(text, k, blocks[k])
    if done:
        write_text(path, text)
    return done
