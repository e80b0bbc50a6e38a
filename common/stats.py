"""The dataset paper's tables and figures from one streaming pass over a BSON file.

    python -m common.stats --work W                  # both splits of a prepared work dir -> W/stats/{train,test}
    python -m common.stats --bson FILE --out DIR     # any file in the official layout

Writes OUT/stats.json, OUT/stats.md and the figures: Table 2 (categories per level), Table 3
(products with 1/2/3/4 images), Figure 2 (products per category, log-width bins, three levels),
Figure 3 (cumulative share of products against level-3 categories sorted by size) and Figure 4
(images by number of MD5 duplicates), plus unique MD5s, the most repeated image and the MD5s
whose images carry conflicting labels.

Memory: the file is read sequentially one chunk at a time (iter_raw_documents) and never held.
Per product only two counters grow, bounded by the distinct values (image counts, category ids).
Per image we keep 16 bytes: the first 8 bytes of its MD5 (uint64) and its product's category_id
(int64), in compact `array` buffers. At full scale (12.4M train images) that is ~200 MB; the
final sort (np.lexsort: an int64 order, then sorted copies) adds ~550 MB for ~10 s (measured on
12.4M synthetic keys): the full train set stays under 1 GB, the rest is flat. 64 bits of MD5 are
plenty: the chance of any collision among 12.4M images is n^2 / 2^65 ~ 4e-6.
"""
from __future__ import annotations

import hashlib
import math
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg via savefig

from .atomic import atomic_path, write_json, write_text
from .bson_format import decode_document, iter_raw_documents
from .bson_reader import Product, product_from_document
from .categories import CategoryTree
from .errors import BsonDocumentError, DataError, SkipLog, log
from .cli import parse_stage, run
from .paths import CATEGORY_NAMES_CSV, WorkDir
from .prepare import DatasetPaths
from .progress import bar

LEVELS = ("level1", "level2", "level3")
# the paper's figures on the full train set, shown beside ours in stats.md
PAPER_TABLE2 = {"level1": 49, "level2": 483, "level3": 5270}
PAPER_TABLE3 = {"1": 4_369_441, "2": 1_128_588, "3": 542_792, "4": 1_029_075}
PAPER_MD5 = {"unique_md5": 7_772_910, "images_with_unique_md5": "~6.85M", "max_md5_repeat": 16_643}
FIGURES = {
    "figure2": "fig2_products_per_category.png",
    "figure3": "fig3_cumulative_share.png",
    "figure4": "fig4_md5_duplicates.png",
}


@dataclass
class Scan:
    """What the single pass collects; every table and figure is derived from it afterwards."""

    path: Path
    skips: SkipLog
    products: int = 0
    image_counts: Counter = field(default_factory=Counter)  # number of images -> products
    category_counts: Counter = field(default_factory=Counter)  # category_id (-1: none) -> products
    md5: array = field(default_factory=lambda: array("Q"))  # first 8 bytes of each image's MD5
    md5_category: array = field(default_factory=lambda: array("q"))  # its product's category_id

    def add(self, product: Product) -> None:
        category = -1 if product.category_id is None else product.category_id
        self.products += 1
        self.image_counts[len(product.images)] += 1
        self.category_counts[category] += 1
        where = f"product _id={product.product_id}"
        if not product.images:
            self.skips.add("no_images", f"{where} has no images", product.product_id)
        empty = sum(not jpeg for jpeg in product.images)
        if empty:  # entries without picture bytes: no image to hash (their MD5s would all "match")
            self.skips.add("empty_image", f"{where}: {empty} of its {len(product.images)} image entries hold no picture bytes", product.product_id)
        for jpeg in product.images:
            if jpeg:
                self.md5.append(int.from_bytes(hashlib.md5(jpeg).digest()[:8], "little"))
                self.md5_category.append(category)

    @property
    def images(self) -> int:
        return len(self.md5)


def collect(path: str | Path, progress: bool = True) -> Scan:
    """One sequential pass: a malformed document is counted in the SkipLog and the pass goes on."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path} is empty (0 bytes)")
    scan = Scan(path, SkipLog(str(path)))
    with bar(size, f"stats {path.name}", "B", enabled=progress, unit_scale=True) as progress_bar:
        for offset, raw in iter_raw_documents(path, scan.skips):
            progress_bar.update(offset + len(raw) - progress_bar.n)
            try:
                scan.add(product_from_document(decode_document(raw, path, offset), path, offset))
            except BsonDocumentError as e:
                scan.skips.add("malformed_document", str(e))
        progress_bar.update(size - progress_bar.n)
    return scan


# -------------------------------------------------------------------------------------------
# tables


def image_count_table(scan: Scan) -> dict[str, int]:
    """Table 3: products with exactly k images; "0" appears only when some product has none."""
    present = {k for k, n in scan.image_counts.items() if n}
    return {str(k): scan.image_counts[k] for k in sorted(present | {1, 2, 3, 4})}


@dataclass
class CategoryCounts:
    """Products per category at each level (None where unknowable), and the unknown ids."""

    per_level: dict[str, np.ndarray | None]
    unknown_products: int = 0
    unknown_ids: list[int] = field(default_factory=list)
    level3_ids: np.ndarray | None = None  # the category_id of each level3 entry

    @property
    def known(self) -> bool:
        """False when every labelled product has an id missing from the tree: nothing to plot."""
        return bool(self.per_level["level3"].sum())


def category_counts(scan: Scan, tree: CategoryTree | None) -> CategoryCounts | None:
    """Bincount the products over the tree's labels; None for a file without labels.

    Without a tree only level 3 is known (one entry per distinct category_id). Ids missing from
    the tree are counted apart, never a crash: the paper's tree and a file can disagree.
    """
    ids = np.array(sorted(c for c in scan.category_counts if c >= 0), np.int64)
    if not len(ids):
        return None
    n = np.array([scan.category_counts[c] for c in ids], np.int64)
    if tree is None:
        return CategoryCounts({"level1": None, "level2": None, "level3": n}, level3_ids=ids)
    labels = tree.to_index(ids, strict=False)
    known = labels >= 0
    level3 = np.bincount(labels[known], weights=n[known], minlength=len(tree)).astype(np.int64)
    per_level = {
        "level1": np.bincount(tree.level1_of, weights=level3, minlength=tree.n_level1).astype(np.int64),
        "level2": np.bincount(tree.level2_of, weights=level3, minlength=tree.n_level2).astype(np.int64),
        "level3": level3,
    }
    return CategoryCounts(per_level, int(n[~known].sum()), ids[~known].tolist(), tree.ids)


def categories_per_level(counts: CategoryCounts | None) -> dict[str, int | None]:
    """Table 2: categories that hold at least one product, per level."""
    if counts is None:
        return dict.fromkeys(LEVELS)
    return {level: None if c is None else int((c > 0).sum()) for level, c in counts.per_level.items()}


def unbalance(counts: CategoryCounts | None, tree: CategoryTree | None) -> dict | None:
    """The paper's reading of Figure 3: share of products in the largest 10% / smallest 75%."""
    if counts is None or not counts.known:
        return None
    sizes = np.sort(counts.per_level["level3"][counts.per_level["level3"] > 0])[::-1]
    top, bottom = max(1, round(0.10 * len(sizes))), round(0.75 * len(sizes))
    biggest = int(np.argmax(counts.per_level["level3"]))
    category_id = int(counts.level3_ids[biggest])
    return {
        "top_10pct_categories_share": round(float(sizes[:top].sum() / sizes.sum()), 4),
        "bottom_75pct_categories_share": round(float(sizes[len(sizes) - bottom :].sum() / sizes.sum()), 4),
        "largest_category": {
            "category_id": category_id,
            "name": None if tree is None else tree.name(biggest),
            "products": int(sizes[0]),
        },
    }


@dataclass
class Md5Counts:
    """How often each distinct MD5 occurs, and how many carry more than one label."""

    repeats: np.ndarray  # one entry per distinct MD5: its number of images
    conflicting: int | None  # None when no image is labelled


def md5_counts(scan: Scan) -> Md5Counts:
    """Sort (md5, category) pairs once: group sizes give the repeats, label changes the conflicts."""
    keys = np.frombuffer(scan.md5, np.uint64)
    cats = np.frombuffer(scan.md5_category, np.int64)
    order = np.lexsort((cats, keys))
    keys, cats = keys[order], cats[order]
    del order  # at full scale every 8-byte-per-image array is ~100 MB: keep few alive
    first = np.r_[True, keys[1:] != keys[:-1]] if len(keys) else np.zeros(0, bool)
    repeats = np.diff(np.r_[np.flatnonzero(first), len(keys)])
    # within one MD5 the categories are sorted with -1 (no label) first, so two different
    # labels always meet as a neighbouring pair
    clash = ~first[1:] & (cats[1:] != cats[:-1]) & (cats[:-1] >= 0)
    conflicting = len(np.unique(keys[1:][clash])) if (cats >= 0).any() else None
    return Md5Counts(repeats, conflicting)


def md5_table(md5: Md5Counts) -> dict:
    """Unique MD5s, the most repeated image, and the paper's 'images appearing at most k times'."""
    repeats = md5.repeats
    if not len(repeats):
        return {"unique_md5": 0, "max_md5_repeat": 0, "images_with_unique_md5": 0,
                "images_repeat_p75": None, "conflicting_md5": md5.conflicting, "md5_repeat_histogram": {}}
    n_md5 = np.bincount(repeats)  # n_md5[r]: MD5s seen exactly r times
    images_by_repeat = n_md5 * np.arange(len(n_md5))
    p75 = int(np.searchsorted(np.cumsum(images_by_repeat), 0.75 * images_by_repeat.sum()))
    return {
        "unique_md5": int(len(repeats)),
        "max_md5_repeat": int(repeats.max()),
        "images_with_unique_md5": int(n_md5[1]) if len(n_md5) > 1 else 0,
        "images_repeat_p75": p75,
        "conflicting_md5": md5.conflicting,
        "md5_repeat_histogram": {str(r): int(k) for r, k in enumerate(n_md5) if k},  # repeat -> MD5s
    }


# -------------------------------------------------------------------------------------------
# figures


def _log_bins(max_value: int, per_decade: int = 5) -> np.ndarray:
    """Bin edges 1, 10^(1/5), 10^(2/5)... up past max_value: the paper's log-width bins."""
    top = max(1, math.ceil(math.log10(max_value + 1) * per_decade))
    return 10 ** (np.arange(top + 1) / per_decade)


def _save(fig: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")


def plot_products_per_category(counts: CategoryCounts, path: Path) -> None:
    """Figure 2: histograms of products per category, one panel per level, log-width bins."""
    fig = Figure(figsize=(15, 4))
    for ax, level in zip(fig.subplots(1, 3), LEVELS):
        ax.set_title(f"Figure 2: Cat {'I' * (LEVELS.index(level) + 1)}")
        c = counts.per_level[level]
        if c is None:
            ax.text(0.5, 0.5, "needs --categories", ha="center", va="center", transform=ax.transAxes)
            continue
        c = c[c > 0]
        ax.hist(c, bins=_log_bins(c.max()), edgecolor="black")
        ax.set_xscale("log")
        ax.set_xlabel("products per category")
        ax.set_ylabel("categories")
    _save(fig, path)


def plot_cumulative_share(counts: CategoryCounts, path: Path) -> None:
    """Figure 3: cumulative % of products against level-3 categories, largest first."""
    sizes = np.sort(counts.per_level["level3"][counts.per_level["level3"] > 0])[::-1]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(np.arange(1, len(sizes) + 1), 100 * np.cumsum(sizes) / sizes.sum())
    ax.set_xlabel("number of Cat III categories (largest first)")
    ax.set_ylabel("cumulative % of products")
    ax.set_ylim(0, 100)
    ax.set_title("Figure 3: share of products in the largest categories")
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_md5_duplicates(md5: Md5Counts, path: Path) -> None:
    """Figure 4: images by how many times their MD5 occurs, log-log."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    if len(md5.repeats):
        ax.hist(md5.repeats, bins=_log_bins(md5.repeats.max()), weights=md5.repeats, edgecolor="black")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("occurrences of the image's MD5 in the file")
    ax.set_ylabel("images")
    ax.set_title("Figure 4: images by number of MD5 duplicates")
    _save(fig, path)


def write_figures(counts: CategoryCounts | None, md5: Md5Counts, out: Path) -> dict[str, str]:
    """Figures 2 and 3 need labels; Figure 4 is always drawn. Returns figure -> file name."""
    plots = [("figure4", plot_md5_duplicates, md5)]
    if counts is not None and counts.known:
        plots = [("figure2", plot_products_per_category, counts), ("figure3", plot_cumulative_share, counts)] + plots
    for name, plot, data in plots:
        plot(data, out / FIGURES[name])
    return {name: FIGURES[name] for name, _, _ in plots}


# -------------------------------------------------------------------------------------------
# report


def _row(cells: list) -> str:
    return "| " + " | ".join("-" if c is None else f"{c:,}" if isinstance(c, int) else str(c) for c in cells) + " |"


def _table(header: list[str], rows: list[list]) -> list[str]:
    return [_row(header), "|" + "---|" * len(header), *[_row(r) for r in rows], ""]


def _paper_share(k: str) -> str | None:
    n = PAPER_TABLE3.get(k)
    return None if n is None else f"{n:,} ({n / sum(PAPER_TABLE3.values()):.1%})"


def to_markdown(stats: dict) -> str:
    """stats.md: our numbers beside the paper's (full train set) for each table."""
    by_images, total = stats["products_by_image_count"], max(stats["products"], 1)
    lines = [f"# Statistics of {Path(stats['source']).name}", "",
             f"{stats['products']:,} products, {stats['images']:,} images.", "",
             "Table 2: categories present per level", ""]
    lines += _table(["level", "present", "in CSV", "paper"],
                    [[lvl, stats["categories_per_level"][lvl], (stats["categories_in_csv"] or {}).get(lvl),
                      PAPER_TABLE2[lvl]] for lvl in LEVELS])
    lines += ["Table 3: products with exactly k images", ""]
    lines += _table(["images", "products", "share", "paper"],
                    [[k, n, f"{n / total:.1%}", _paper_share(k)] for k, n in by_images.items()])
    lines += ["MD5 duplicates (Figure 4)", ""]
    lines += _table(["", "here", "paper"],
                    [[key, stats[key], PAPER_MD5.get(key)] for key in
                     ("unique_md5", "images_with_unique_md5", "max_md5_repeat", "images_repeat_p75", "conflicting_md5")])
    if stats["unbalance"]:
        u = stats["unbalance"]
        lines += [f"Unbalance (Figure 3): the largest 10% of categories hold {u['top_10pct_categories_share']:.0%} "
                  f"of products (paper: 75%), the smallest 75% hold {u['bottom_75pct_categories_share']:.0%} (paper: 10%). "
                  f"Largest: {u['largest_category']['name'] or u['largest_category']['category_id']} "
                  f"({u['largest_category']['products']:,} products).", ""]
    lines += [f"Unknown category ids: {stats['unknown_category_ids']:,} products"
              + (f" (e.g. {stats['unknown_category_id_examples']})" if stats["unknown_category_ids"] else ""), "",
              f"Skipped: {stats['skipped']['counts'] or 'nothing'}"
              + "".join(f"; first {k} _ids {v}" for k, v in stats["skipped"].get("first_ids", {}).items()), "",
              "Figures: " + ", ".join(f"[{k}]({v})" for k, v in stats["figures"].items()), ""]
    return "\n".join(lines)


def compute_stats(bson: str | Path, tree: CategoryTree | None, out: str | Path, progress: bool = True) -> dict:
    """Collect, derive every table, draw the figures, write stats.json and stats.md."""
    start, out = time.perf_counter(), Path(out)
    scan = collect(bson, progress)
    scan.skips.report()
    counts, md5 = category_counts(scan, tree), md5_counts(scan)
    if counts is not None and counts.unknown_products:
        log.warning("%s: %d products have a category_id missing from %s", bson, counts.unknown_products, tree.source)
    out.mkdir(parents=True, exist_ok=True)
    stats = {
        "source": str(Path(bson).resolve()),
        "categories_csv": None if tree is None else tree.source,
        "products": scan.products,
        "images": scan.images,
        "products_by_image_count": image_count_table(scan),
        "categories_per_level": categories_per_level(counts),
        "categories_in_csv": None if tree is None else {"level1": tree.n_level1, "level2": tree.n_level2, "level3": len(tree)},
        "unknown_category_ids": 0 if counts is None else counts.unknown_products,
        "unknown_category_id_examples": [] if counts is None else counts.unknown_ids[:10],
        "unlabelled_products": scan.category_counts[-1],
        "unbalance": unbalance(counts, tree),
        **md5_table(md5),
        "figures": write_figures(counts, md5, out),
        "skipped": scan.skips.to_dict(),
        "seconds": round(time.perf_counter() - start, 3),
    }
    write_json(out / "stats.json", stats)
    write_text(out / "stats.md", to_markdown(stats))
    return stats


@dataclass
class StatsOptions:
    bson: str = ""  # any file in the official layout; empty: both splits of the prepared work dir -> <work>/stats/{train,test}
    out: str = ""  # output directory for --bson (default: <work>/stats/<file stem>)
    categories: str = ""  # category_names.csv (default: the work dir's, else the official one)
    tree: bool = True  # --no-tree: ignore the category tree (level 3 = distinct category_id)


def stats_jobs(work: WorkDir, opts: StatsOptions) -> list[tuple[str, Path, str]]:
    """(BSON file, output dir, categories CSV) per file to describe."""
    if opts.bson:
        return [(opts.bson, Path(opts.out) if opts.out else work.stats / Path(opts.bson).stem, opts.categories or str(CATEGORY_NAMES_CSV))]
    paths = DatasetPaths.load(work)
    return [(getattr(paths, split), work.stats / split, opts.categories or paths.categories) for split in ("train", "test")]


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_stage(argv, __doc__, StatsOptions)
    out = []
    for bson, directory, categories in stats_jobs(args.work, args.options):
        tree = CategoryTree.from_csv(categories) if args.options.tree else None
        stats = compute_stats(bson, tree, directory, progress=args.progress)
        print(to_markdown(stats))
        print(f"wrote {directory / 'stats.json'}, stats.md and {len(stats['figures'])} figures in {stats['seconds']:.1f}s")
        out.append(stats)
    return out


if __name__ == "__main__":
    run(main)
