"""Classify new products with a trained work dir (the stack by default), or export one CNN to ONNX.

    python -m ensembling.predict --work W --folder DIR [--source NAME] [--topk K] [--out FILE]
    python -m ensembling.predict --work W --bson FILE          # products in the Kaggle layout
    python -m ensembling.predict --work W --images A.jpg B.jpg # one product, its images in order
    python -m ensembling.predict --work W --export-onnx MODEL --out model.onnx [--fold K]

DIR holds one subfolder per product (its name), its images taken in file-name order. The CSV (stdout
unless --out) has K rows per product (--topk K; --top, its old name, still works with a warning):
product,rank,category_id,score,category_level1,category_level2,category_level3. --source is any
source of the work dir (`python -m ensembling.predict --work W --list-sources` names them): a model,
a solution or team blend, or `stack`, which loads every stacked source, the MD5 dictionary, OCR's
text models and the trained stacker once and runs them on the new products in memory. The stages'
own messages go to stderr.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from common.atomic import atomic_path
from common.checks import at_least, check_fields, check_names
from common.cli import exit_on_signals, parse_stage, run
from common.errors import DataError

DEPRECATED_FLAGS = {"--top": "--topk"}  # old name -> flag: still accepted, with one warning line (train and stack say --topk)


@dataclass
class PredictOptions:
    folder: str = ""  # one subfolder of images per product
    bson: str = ""  # a BSON file in the Kaggle layout (products named by _id)
    images: list[str] = field(default_factory=list)  # the images of one product, in order
    source: str = ""  # default: stack (when the work dir has one)
    topk: Annotated[int, at_least(1)] = 5  # rows per product (the K best categories)
    out: str = ""  # the CSV (default: stdout); with --export-onnx the .onnx file
    export_onnx: str = ""  # a model source (e.g. dylan_mini_lite0) to export as ONNX instead of predicting
    fold: int = -1  # the fold model to export (-1: the source's first fold)
    keep: str = ""  # also write every source's predictions of the new products in this new folder (preds/<source>/test.npz, ids.csv)
    list_sources: bool = False  # name the work dir's sources and what predicting each one runs, then stop

    def __post_init__(self) -> None:
        check_fields(self, "predict options")
        check_names("predict options", source=self.source, export_onnx=self.export_onnx)


def check_outputs(opts: PredictOptions) -> None:
    """Before any work: --out can be written (its folder exists, it is no folder), --keep is a new
    folder, --bson is a file: a mistake there used to surface as a traceback after all the work."""
    if opts.out:
        out = Path(opts.out)
        if out.is_dir():
            raise DataError(f"--out {out}: is a folder (give the CSV's file name)")
        if not out.parent.is_dir():
            raise DataError(f"--out {out}: its folder {out.parent} does not exist")
        if not os.access(out.parent, os.W_OK):
            raise DataError(f"--out {out}: its folder {out.parent} is not writable")
    if opts.keep and Path(opts.keep).exists():
        raise DataError(f"--keep {opts.keep}: already exists (a new folder, so no earlier predictions mix in)")
    if opts.bson and not Path(opts.bson).is_file():
        raise DataError(f"--bson {opts.bson}: {'is a folder, not a BSON file' if Path(opts.bson).is_dir() else 'no such file'}")


def write_csv(frame, out: str) -> None:
    """The CSV at `out` whole or not at all (written beside it, renamed on success: a full disk leaves no truncated CSV)."""
    with atomic_path(out) as tmp:
        frame.to_csv(tmp, index=False)


def read_products(opts: PredictOptions) -> list:
    from .products import from_bson, from_folder, from_images

    given = [bool(opts.folder), bool(opts.bson), bool(opts.images)]
    if sum(given) != 1:
        raise DataError("give exactly one of --folder DIR, --bson FILE, --images A.jpg [B.jpg ...]")
    if opts.folder:
        return from_folder(opts.folder)
    if opts.bson:
        return from_bson(opts.bson)
    return [from_images(opts.images)]


def list_sources_of(work) -> None:
    from common.sources import list_sources

    from .predictor import describe

    for info in list_sources(work, finished=False):
        try:
            print(f"{info.name:45s} {describe(work, info.name)}")
        except (DataError, FileNotFoundError) as e:
            print(f"{info.name:45s} cannot predict: {e}")


def main(argv: list[str] | None = None) -> None:
    args = parse_stage(argv, __doc__, PredictOptions, aliases=DEPRECATED_FLAGS)
    opts, work = args.options, args.work
    if opts.list_sources:
        return list_sources_of(work)
    if opts.export_onnx:
        from .onnx_export import export_onnx

        if not opts.out:
            raise DataError("--export-onnx needs --out FILE.onnx")
        print(export_onnx(work, opts.export_onnx, opts.out, opts.fold), file=sys.stderr)
        return None
    from .predictor import Predictor

    check_outputs(opts)
    with exit_on_signals():  # a SIGTERM mid-prediction still removes the scratch folder of features (Context.close)
        products = read_products(opts)
        predictor = Predictor.from_work(work, opts.source or None)
        try:
            print(f"predicting {len(products)} products with {predictor.describe()}", file=sys.stderr)
            frame = predictor.predict_products(products, opts.topk, opts.keep or None)
        finally:
            predictor.close()
    if opts.out:
        write_csv(frame, opts.out)
        print(f"wrote {opts.out}: {frame['product'].nunique()} products, {len(frame)} rows", file=sys.stderr)
    else:
        frame.to_csv(sys.stdout, index=False)
    if frame.attrs.get("unpredicted"):
        print(f"{len(frame.attrs['unpredicted'])} products got no prediction: {frame.attrs['unpredicted'][:10]}", file=sys.stderr)


if __name__ == "__main__":
    run(main)
