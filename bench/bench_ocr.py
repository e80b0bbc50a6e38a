"""OCR preprocessing benchmark on the mini data's covers: read rate and speed per variant, one run.

    python bench/bench_ocr.py [--work work] [--products 100] [--skip 0] [--variants plain pad@psm11 ...]

Takes --products train products (after the first --skip) whose label is a media group (every image of each, in
the seller's order), reads them with tesseract (fra+eng, one thread, one process) under each
preprocessing variant, and prints per variant:
  keyword read rate  share of products where some image yields a word of the category's title
                     vocabulary (the mini generator's cover keywords, lowercase, accents as printed)
  any-word rate      share of images where tesseract returns at least one 2+ letter token
  images/s           images read per second on one core (decode + preprocess + tesseract, --batch
                     images per tesseract process as in the stage; --batch 1 shows the per-call cost)
The plain variant (no preprocessing) is the baseline, measured in the same run on the same images.
A variant is `step+step` of ocr.reader.PREPROCESS; `@psmN` sets the page segmentation mode.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python bench/bench_ocr.py` from anywhere

from mini import MEDIA_GROUPS  # noqa: E402
from mini.generate import category_looks  # noqa: E402
from common.paths import WorkDir  # noqa: E402
from common.workdata import load_fold_data  # noqa: E402
from ocr.reader import ReadSettings, check_steps, read_jpegs  # noqa: E402
from ocr.text_model import has_words  # noqa: E402

DEFAULT_VARIANTS = ["plain", "@psm11", "pad@psm11", "pad+otsu@psm11"]


def parse_variant(name: str) -> ReadSettings:
    steps, _, psm = name.partition("@psm")
    steps = tuple(s for s in steps.split("+") if s and s != "plain")
    check_steps(steps)
    return ReadSettings(steps, "fra+eng", int(psm) if psm else 3)


def sample(work: WorkDir, n: int, skip: int = 0) -> tuple[list[list[bytes]], list[set[str]]]:
    """(images of each sampled media product, its category's keywords)."""
    data = load_fold_data(work)
    looks, _ = category_looks(data.tree, 0)
    media = np.isin(data.tree.level1_names, MEDIA_GROUPS)
    rows = np.flatnonzero((data.labels >= 0) & media[np.clip(data.labels, 0, None)])[skip : skip + n]
    return [data.train[int(r)].images for r in rows], [set(looks[data.labels[r]].keywords) for r in rows]


def measure(products: list[list[bytes]], keywords: list[set[str]], settings: ReadSettings, batch: int) -> dict:
    jpegs = [jpeg for images_of in products for jpeg in images_of]
    t0 = time.perf_counter()
    texts = [t or "" for k in range(0, len(jpegs), batch) for t in read_jpegs(jpegs[k : k + batch], settings)]
    seconds = time.perf_counter() - t0
    ends = np.cumsum([len(p) for p in products])
    hits = [bool(words & set(re.findall(r"\w+", " ".join(texts[end - len(p) : end]).lower())))
            for p, words, end in zip(products, keywords, ends)]
    return {"keyword_read_rate": float(np.mean(hits)), "any_word_rate": float(np.mean([has_words(t) for t in texts])),
            "images": len(texts), "images_per_s": len(texts) / seconds, "seconds": seconds}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=None)
    p.add_argument("--products", type=int, default=100)
    p.add_argument("--skip", type=int, default=0, help="start after this many media products (another sample)")
    p.add_argument("--variants", nargs="*", default=DEFAULT_VARIANTS)
    p.add_argument("--batch", type=int, default=64, help="images per tesseract process, as in the stage (1 = one call per image)")
    args = p.parse_args(argv)
    products, keywords = sample(WorkDir(args.work), args.products, args.skip)
    print(f"{len(products)} media products, {sum(map(len, products))} images, one core, {args.batch} images per tesseract call")
    results = {}
    for name in args.variants:
        results[name] = r = measure(products, keywords, parse_variant(name), args.batch)
        print(f"  {name:14s} keyword read rate {r['keyword_read_rate']:.3f}  any-word rate {r['any_word_rate']:.3f}  "
              f"{r['images_per_s']:.2f} images/s")
    return results


if __name__ == "__main__":
    main()
