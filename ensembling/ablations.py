"""The mechanisms the winners credited, each measured as a pair of runs that differ in it alone.

    python -m ensembling.ablations --work W      # the table (markdown), also a section of the report

Each row compares a source WITH the mechanism against one WITHOUT it, on the same OOF products:
two sources (their product accuracy, overall and by image count, and the image tiles each pushed
through the network in training, from the folds' summary.csv: the compute held equal), or two
figures of one summary (`source:dotted.key`, e.g. the MD5 rules' overrides). A row appears when
both sides exist in the work dir; `command` says how to make the missing side; `mini_caveat` says
what the mini data lacks for the effect the winners saw on the real data.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass

import pandas as pd

from common.cli import parse_stage, run
from common.paths import WorkDir
from common.sources import SourceInfo, list_sources


@dataclass(frozen=True)
class Ablation:
    mechanism: str
    with_: str  # a source, or source:dotted.key of its summary.json (a figure)
    without: str
    command: str  # what makes the sides that run_all.sh does not
    recorded: str = ""  # what the team measured for the same mechanism, with its source
    mini_caveat: str = ""  # the property of the real data the mini data lacks, if any


TRAIN = "python -m solutions.{s}.train --config solutions/{s}/configs/{n}.yaml --work W"
MINI_RUN = "./run_all.sh --work W"

ABLATIONS = [
    Ablation("concatenation by K (bestfitting), equal image tiles", "bestfitting_mini_lite0_strip", "dylan_ablation_mini_lite0_equal_tiles",
             f"{MINI_RUN}; {TRAIN.format(s='dylan', n='ablation_mini_lite0_equal_tiles')}",
             "+0.012 ResNet50 (0.757 -> 0.769), +0.013 InceptionResNetV2 (0.759 -> 0.772), Kaggle LB (second-hand)",
             "every mini view shows its category's rendered look on its own (partial views and zooms of one object), at 48 px tiles: no "
             "product whose category only the views together tell (a real back cover or label does)"),
    Ablation("concatenation by K, full profile (ResNet50)", "bestfitting_resnet50", "bestfitting_single_resnet50", "./run_all.sh --profile full --work W",
             "+0.012 (0.757 -> 0.769, Kaggle LB, second-hand)"),
    Ablation("concatenation by K, full profile (InceptionResNetV2)", "bestfitting_inceptionresnetv2", "bestfitting_single_inceptionresnetv2",
             "./run_all.sh --profile full --work W", "+0.013 (0.759 -> 0.772, Kaggle LB, second-hand)"),
    Ablation("gated fusion head vs max over views (same features, 8 epochs each)", "convoluted_mini_fuse_gated", "convoluted_mini_fuse_max", MINI_RUN,
             "+0.0028 (FcNet3 0.7823 vs FcNet1 0.7795, 50k product val; heng/training_log/fuse_nets)"),
    Ablation("FcNet3 as recorded (7168 / 4096, gate C/2, flips side by side, SGD) vs the mini gated head (512, C/16, Adam)",
             "convoluted_ablation_mini_fuse_fcnet3", "convoluted_mini_fuse_gated",
             f"{MINI_RUN}; {TRAIN.format(s='convoluted', n='ablation_mini_fuse_fcnet3')}", "the mini head is ours: no team number",
             "4,000 training products per fold: the recorded head's 54M parameters (over the mini net's 2 x 1280 features) see 0.1 % of the real data"),
    Ablation("gated fusion head vs the mean of the base net's image probabilities", "convoluted_mini_fuse_gated", "convoluted_mini_base_lite0", MINI_RUN,
             "+0.031 (FcNet3 0.7823 product-level vs DPN92 0.7512 image-level: not the same measure)"),
    Ablation("rank + count specialists vs the base classifier alone", "convoluted_mini_rankcount_lite0:oof_variants.rank_count",
             "convoluted_mini_rankcount_lite0:oof_variants.base", MINI_RUN, "not published separately"),
    Ablation("rank specialists only", "convoluted_mini_rankcount_lite0:oof_variants.rank", "convoluted_mini_rankcount_lite0:oof_variants.base", MINI_RUN),
    Ablation("label smoothing 0.1 vs 0", "dylan_mini_lite0", "dylan_ablation_mini_lite0_no_smoothing",
             f"{MINI_RUN}; {TRAIN.format(s='dylan', n='ablation_mini_lite0_no_smoothing')}",
             "+0.0021 (ResNet-34, 0.6919 -> 0.6940 image-level; mwbyeon/kaggle-cdiscount train/experiments/label_smoothing)",
             "the mini data's 10 % label noise is there; its classes are far fewer (smoothing spreads 0.1 over 5270 classes on the real data)"),
    Ablation("flip TTA (original + flip) vs the original only, same trained model", "dylan_mini_lite0", "dylan_ablation_mini_lite0_no_flip_tta",
             f"{MINI_RUN}; {TRAIN.format(s='dylan', n='ablation_mini_lite0_no_flip_tta')}",
             "+0.0020 (0.7789 -> 0.7809; mwbyeon/kaggle-cdiscount predict/predict.py comments)"),
    Ablation("MD5 override, image-level rule vs none (dylan)", "md5:override_by_rule.image.dylan.oof_accuracy_with_override",
             "md5:override_by_rule.image.dylan.oof_accuracy", MINI_RUN,
             "+0.0032 (image dict 'unique', arithmetic mean: 0.7585 -> 0.7617; train/experiments/md5_hash)",
             "a mini copy draws its written label independently of its donor's (10 % noise each), so the copied label is wrong about 1 time in 5 "
             "where the CNN is right; real duplicates mostly agree (114,209 conflicting of 7.77M distinct hashes, 3rd place's count)"),
    Ablation("MD5 override, product-level rule vs none (dylan)", "md5:override_by_rule.product.dylan.oof_accuracy_with_override",
             "md5:override_by_rule.product.dylan.oof_accuracy", f"{MINI_RUN} (python -m md5.run --work W --override-rule product for the submission)",
             "the 3rd place's postprocess rule (predict/md5_predict.py); no number published",
             "as for the image-level rule: a mini copy's written label is drawn independently of its donor's"),
    Ablation("OCR x the best CNN (product of probabilities) vs that CNN, media products with text", "ocr:media_accuracy_oof.best_cnn_plus_ocr_product_on_products_with_ocr",
             "ocr:media_accuracy_oof.best_cnn_on_products_with_ocr", MINI_RUN, "dylan: tesseract alone not accurate enough; bestfitting fed OCR features (no number)",
             "mini covers carry their category's words in clean print; real covers are photos with varied fonts"),
]


def _figure(summary: dict, key: str) -> float | None:
    value = summary
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return float(value) if isinstance(value, (int, float)) else None


def training_tiles(work: WorkDir, info: SourceInfo) -> int | None:
    """Image tiles through the network per fold (training), summed over every stage's summary.csv
    (a composed recipe's shared model and per-K fine-tunes); None when the logs do not count them."""
    recipe = info.summary.get("recipe") or {}
    folds = info.summary.get("folds") or []
    if not recipe or not folds:
        return None
    total, logs = 0, 0
    for fold in folds:
        root = work.model_dir(recipe.get("solution", ""), recipe.get("name", ""), fold)
        for path in [root / "summary.csv", *root.glob("*/summary.csv")]:
            if path.exists():
                rows = list(csv.DictReader(path.open()))
                if rows and "image_tiles" not in rows[0]:
                    return None
                total, logs = total + sum(int(float(r["image_tiles"])) for r in rows), logs + 1
    return round(total / len(folds)) if logs and total else None  # 0: a head on stored features (no images)


def _side(work: WorkDir, infos: dict[str, SourceInfo], spec: str) -> dict | None:
    name, _, key = spec.partition(":")
    if name not in infos:
        return None
    summary = infos[name].summary
    if key:
        value = _figure(summary, key)
        return None if value is None else {"accuracy": value, "by_k": {}, "tiles": None}
    by_k = {k: v.get("accuracy") for k, v in (summary.get("oof_by_image_count") or {}).items()}
    return {"accuracy": summary.get("oof_product_accuracy"), "by_k": by_k, "tiles": training_tiles(work, infos[name])}


def ablation_table(work: WorkDir) -> pd.DataFrame:
    """One row per ablation whose two sides exist in the work dir."""
    infos = {s.name: s for s in list_sources(work, None)}
    infos.update({s.name: s for s in list_sources(work, ["ablation"])})
    rows = []
    for a in ABLATIONS:
        with_, without = _side(work, infos, a.with_), _side(work, infos, a.without)
        if with_ is None or without is None or with_["accuracy"] is None or without["accuracy"] is None:
            continue
        row = {"mechanism": a.mechanism, "with": a.with_, "without": a.without, "with_acc": with_["accuracy"], "without_acc": without["accuracy"],
               "gain": with_["accuracy"] - without["accuracy"]}
        for k in ("1", "2", "3", "4"):
            w, wo = with_["by_k"].get(k), without["by_k"].get(k)
            row[f"gain_k{k}"] = None if w is None or wo is None else w - wo
        row.update(train_tiles_with=with_["tiles"], train_tiles_without=without["tiles"], recorded=a.recorded, mini_caveat=a.mini_caveat,
                   command=a.command)
        rows.append(row)
    return pd.DataFrame(rows)


def _acc(v, signed: bool = False) -> str:
    return "" if v is None or pd.isna(v) else (f"{v:+.4f}" if signed else f"{v:.4f}")


def _count(v) -> str:
    return "" if v is None or pd.isna(v) else f"{int(v):,}"


COLUMNS = ["mechanism", "with", "without", "gain", "K=1", "K=2", "K=3", "K=4", "train tiles per fold, with / without", "team recorded", "command"]


def display_rows(table: pd.DataFrame) -> list[list[str]]:
    """The table as text cells (the README's markdown and the report's HTML show the same)."""
    out = []
    for r in table.to_dict("records"):
        counted = [v for v in (r["train_tiles_with"], r["train_tiles_without"]) if v is not None and pd.notna(v)]
        tiles = f"{_count(r['train_tiles_with'])} / {_count(r['train_tiles_without'])}" if counted else ""
        out.append([r["mechanism"], _acc(r["with_acc"]), _acc(r["without_acc"]), _acc(r["gain"], True),
                    *(_acc(r[f"gain_k{k}"], True) for k in "1234"), tiles, r["recorded"], r["command"]])
    return out


def markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return "(no ablation has both sides in this work dir)"
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join([*cells[:3], f"**{cells[3]}**", *cells[4:-1], f"`{cells[-1]}`"]) + " |" for cells in display_rows(table)]
    caveats = [f"- {r['mechanism']}: {r['mini_caveat']}" for r in table.to_dict("records") if r["mini_caveat"]]
    return "\n".join(lines + (["", "What the mini data lacks for the real-data effect:", *caveats] if caveats else []))


def html_section(work: WorkDir) -> str:
    """The report's section: the same rows, or what makes them."""
    import html

    table = ablation_table(work)
    intro = ("<p>Each row: a source WITH the mechanism against one WITHOUT it, same OOF products, product accuracy (gain by "
             "image count K); train tiles: image-sized inputs each pushed through the network per fold (the compute held equal). "
             "Rows appear when both sides exist; <code>python -m ensembling.ablations --work W</code> prints them.</p>")
    if table.empty:
        return intro + "<p>No ablation has both sides in this work dir.</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in [*COLUMNS, "what the mini data lacks"])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in [*cells, r["mini_caveat"]]) + "</tr>"
                   for cells, r in zip(display_rows(table), table.to_dict("records")))
    return intro + f"<table><tr>{head}</tr>{body}</table>"


@dataclass
class AblationOptions:
    pass


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = parse_stage(argv, __doc__, AblationOptions)
    table = ablation_table(args.work)
    print(markdown(table))
    return table


if __name__ == "__main__":
    run(main)
