"""What a profile costs before any GPU hour is spent: per recipe the images it trains and predicts,
GPU-hours from a throughput table, wall-hours on N GPUs, disk per stage, peak RAM of the CPU stages.

    python -m common.plan --profile full [--gpus 8] [--protocol holdout|kfold] [--n-folds 5]
                          [--holdout-fraction 0.05] [--data DIR --work W [--build-index]]
                          [--throughput bench/results/gpu_throughput.json] [--json plan.json]

Trains nothing and runs in seconds on a CPU (FLOPs and parameters are counted on torch's meta
device, without weights). Without --data it plans the official Kaggle data (7,069,896 train
products / 12,371,293 images, 1,768,182 test / 3,095,080); with --data DIR the counts of DIR's
train.bson / test.bson, read from the index `common.prepare` built in --work (--build-index builds
it with the same code). Every figure says where it comes from:
  bench_gpu.json on <device>    measured by bench/bench_gpu.py (default file read when present)
  recorded: <where>             the winners' own logs (images/s on their machines, fp32, 2017 GPUs)
  scaled by FLOPs from <model>  an extrapolation from a recorded model (FLOPs counted here at 180 px)
  assumed: ...                  a stated assumption (e.g. inference = 3 x training images/s)
  bench/README.md               the CPU stages measured by bench/bench_scale.py
Wall-hours on N GPUs are GPU-hours / N: linear scaling is assumed, never measured here.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import write_json
from .cli import parse_stage, run
from .errors import DataError
from .paths import HENG_VALID_IDS, WorkDir
from .plan_figures import (BENCH_CORES, BENCH_README, COLD_READ_MB_S, CPU_FITS, HASH_BYTES, INDEX_BYTES, MEDIA_IMAGE_SHARE, PARALLEL_STAGES,
                           STACK_FIT_ROUNDS, STACK_SOURCES_NOTE, TESSERACT_IMAGES_S_CORE)
from .recipe import profile_configs
from .throughput import N_CLASSES, WINNERS, Rate, load_throughput, network, rate_of

GB = 1e9


OFFICIAL = {"train_products": 7_069_896, "train_images": 12_371_293, "test_products": 1_768_182, "test_images": 3_095_080,
            "bson_bytes": 58.2e9 + 14.5e9, "by_k": {1: 4_369_441, 2: 1_128_588, 3: 542_792, 4: 1_029_075},
            "heng_products": 50_000, "heng_images": 87_648}  # winning-solutions.md (paper Table 3); ../shared/data/SOURCES.txt



# ----------------------------------------------------------------------------- counts and protocol

@dataclass(frozen=True)
class Counts:
    train_products: float
    train_images: float
    test_products: float
    test_images: float
    bson_bytes: float
    by_k: dict  # train products per image count K (1-4)
    heng_products: float  # the 2nd team's 50,000 holdout ids found in the data (0 = not this data)
    heng_images: float
    source: str


def official_counts() -> Counts:
    o = OFFICIAL
    return Counts(o["train_products"], o["train_images"], o["test_products"], o["test_images"], o["bson_bytes"], o["by_k"],
                  o["heng_products"], o["heng_images"], f"official Kaggle counts ({WINNERS}; holdout images: ../shared/data/SOURCES.txt)")


def _index(work: WorkDir, split: str, bson: Path, build: bool):
    """The index common.prepare builds (built here with the same code when asked)."""
    from .bson_index import get_index, index_is_current, load_index

    prefix = work.index(split)
    if index_is_current(prefix, bson):
        return load_index(prefix)
    if build:
        return get_index(bson, prefix)
    raise DataError(f"{prefix}: no index of {bson} yet: run the index stage first (./run_all.sh --data {bson.parent} --work {work.root} "
                    f"--only index, or python -m common.prepare), or add --build-index (one read of the BSON files)")


def data_counts(data: str, work: WorkDir, build: bool) -> Counts:
    """The counts of a Kaggle-layout folder: usable train products (images, a label), test products with images."""
    import numpy as np

    folder = Path(data).resolve()
    paths = {s: folder / f"{s}.bson" for s in ("train", "test")}
    for path in paths.values():
        if not path.is_file():
            raise DataError(f"--data {data}: no {path.name} in {folder}")
    train, test = (_index(work, s, paths[s], build) for s in ("train", "test"))
    n_train = np.clip(train.n_imgs, 0, None).astype(np.int64)
    usable = (n_train > 0) & (train.category_ids >= 0)
    n_test = np.clip(test.n_imgs, 0, None).astype(np.int64)
    heng = np.isin(train.ids, np.loadtxt(HENG_VALID_IDS, dtype=np.int64)) & usable
    by_k = np.bincount(np.clip(n_train[usable], 1, 4), minlength=5)
    official = heng.sum() >= 0.99 * OFFICIAL["heng_products"]  # the same rule as common.folds
    return Counts(int(usable.sum()), int(n_train[usable].sum()), int((n_test > 0).sum()), int(n_test.sum()),
                  sum(p.stat().st_size for p in paths.values()), {k: int(by_k[k]) for k in range(1, 5)},
                  int(heng.sum()) if official else 0, int(n_train[heng].sum()) if official else 0, f"the index of {folder} in {work.root}")


@dataclass(frozen=True)
class Split:
    """One model of a protocol (all its models alike): what it trains on and predicts out of fold."""

    protocol: str
    models: int
    train_products: float
    train_images: float
    oof_products: float
    oof_images: float
    what: str

    @property
    def oof_per_product(self) -> float:
        return self.oof_images / max(self.oof_products, 1)


def protocol_split(c: Counts, protocol: str, n_folds: int, fraction: float) -> Split:
    """holdout: one model per recipe on everything but the holdout; kfold: n models on (n-1)/n each."""
    if protocol == "kfold":
        if n_folds < 2:
            raise DataError(f"--n-folds {n_folds}: k-fold needs at least 2")
        p, i = c.train_products / n_folds, c.train_images / n_folds
        return Split("kfold", n_folds, c.train_products - p, c.train_images - i, p, i, f"{n_folds} folds of about {p:,.0f} products")
    if protocol != "holdout":
        raise DataError(f"--protocol {protocol!r}: choose holdout or kfold")
    if c.heng_products:
        p, i, what = c.heng_products, c.heng_images, f"the 2nd team's {c.heng_products:,.0f} ids ({HENG_VALID_IDS.name})"
    else:
        if not 0 < fraction < 1:
            raise DataError(f"--holdout-fraction {fraction}: between 0 and 1")
        p, i, what = c.train_products * fraction, c.train_images * fraction, f"a stratified {fraction:.1%} of the products (images pro rata)"
    return Split("holdout", 1, c.train_products - p, c.train_images - i, p, i, what)


# ----------------------------------------------------------------------------- per recipe


@dataclass
class Cost:
    source: str
    solution: str
    stage: str
    model: str
    epochs: str
    train_images: float = 0.0  # training images (tiles; a head: stored images read) summed over the protocol's models
    predict_images: float = 0.0  # image forwards (a head: stored images read): per-epoch validation, OOF + test x TTA views
    feature_images: float = 0.0  # the 2nd place's feature pass (x views)
    gpu_s: dict = field(default_factory=dict)  # train / predict / features
    io_s: float = 0.0  # heads on stored features: reading the stores (does not scale with GPUs)
    disk: dict = field(default_factory=dict)  # bytes: checkpoints / predictions / features
    rate: str = ""
    note: str = ""

    @property
    def gpu_hours(self) -> float:
        return sum(self.gpu_s.values()) / 3600


OPTIMIZER_STATES = {"sgd": 1, "nag": 1, "nadam": 2, "adam": 2, "adamw": 2}  # tensors per parameter beside the weights


def checkpoint_bytes(params: float, cfg) -> float:
    """last.pt: fp32 weights + optimiser state (SGD without momentum keeps none)."""
    states = 0 if cfg.optimizer == "sgd" and not cfg.momentum else OPTIMIZER_STATES[cfg.optimizer]
    return 4.0 * params * (1 + states)


def prediction_bytes(cfg, split: Split, c: Counts) -> float:
    """Top-K rows (int64 id + int16 labels + float16 probs): each model's fold files, then the merged source."""
    row = 8 + 4 * cfg.topk
    return row * (2 * split.models * split.oof_products + (split.models + 1) * c.test_products)


def epoch_images(cfg, n: float) -> float:
    return min(cfg.max_images_per_epoch, n) if cfg.max_images_per_epoch > 0 else n


def val_images(cfg, split: Split) -> float:
    """Per-epoch validation of one model: its fold, or a sample of val_products of it (no TTA)."""
    n = min(cfg.val_products, split.oof_products) if cfg.val_products > 0 else split.oof_products
    return n * split.oof_per_product


def new_cost(cfg, rate: Rate | None) -> Cost:
    return Cost(cfg.source, cfg.solution, cfg.stage, cfg.model, str(cfg.epochs), rate=rate.source if rate else "")


def image_cost(cfg, split: Split, c: Counts, table: dict) -> Cost:
    """dylan: single images, then the OOF and test products through the inference driver (TTA views)."""
    rate, m = rate_of(cfg, table), split.models
    cost = new_cost(cfg, rate)
    cost.train_images = m * cfg.epochs * epoch_images(cfg, split.train_images)
    cost.predict_images = m * (cfg.epochs * val_images(cfg, split) + len(cfg.tta) * (split.oof_images + c.test_images))
    cost.gpu_s = {"train": cost.train_images / rate.train, "predict": cost.predict_images / rate.infer}
    cost.disk = {"checkpoints": m * checkpoint_bytes(network(cfg.model).params, cfg), "predictions": prediction_bytes(cfg, split, c)}
    return cost


def composed_cost(cfg, split: Split, c: Counts, table: dict) -> Cost:
    """bestfitting: a shared model on every product's tiles, then finetune_epochs on the products of each K."""
    rate, m, ft = rate_of(cfg, table), split.models, cfg.finetune_epochs
    cost = new_cost(cfg, rate)
    cost.epochs = f"{cfg.epochs} + {ft} per K" if ft else str(cfg.epochs)
    k_images = [k * n for k, n in c.by_k.items()]
    share = [x / sum(k_images) for x in k_images]
    tune = sum(epoch_images(cfg, s * split.train_images) for s in share) if ft else 0.0  # each K's stage, capped like an epoch
    cost.train_images = m * (cfg.epochs * epoch_images(cfg, split.train_images) + ft * tune)
    cost.predict_images = m * ((cfg.epochs + ft) * val_images(cfg, split) + len(cfg.tta) * (split.oof_images + c.test_images))
    cost.gpu_s = {"train": cost.train_images / rate.train, "predict": cost.predict_images / rate.infer}
    models = 1 + (len(c.by_k) if ft else 0)  # shared/ and k1..k4/ each keep a last.pt
    cost.disk = {"checkpoints": m * models * checkpoint_bytes(network(cfg.model).params, cfg), "predictions": prediction_bytes(cfg, split, c)}
    cost.note = "a product's tiles = its images (1-4)"
    return cost


def store_bytes(c: Counts, views: int, dim: int) -> float:
    """One fold's train + test stores: uint8[images, views, dim], the ok bytes, the written rows."""
    images = c.train_images + c.test_images
    return images * (views * dim + 1) + 8 * (c.train_products + c.test_products)


def base_cost(cfg, split: Split, c: Counts, table: dict) -> Cost:
    """2nd place's base nets: train, then ONE pass over every train and test image x views that predicts
    the OOF and test products and stores the features (a store per model)."""
    rate, m, net = rate_of(cfg, table), split.models, network(cfg.model)
    cost = new_cost(cfg, rate)
    stored = split.train_images if cfg.feature_train_products <= 0 else min(cfg.feature_train_products, split.train_products) * \
        split.train_images / max(split.train_products, 1)
    cost.train_images = m * cfg.epochs * epoch_images(cfg, split.train_images)
    cost.predict_images = m * cfg.epochs * val_images(cfg, split)
    cost.feature_images = m * len(cfg.tta) * (stored + split.oof_images + c.test_images)
    cost.gpu_s = {"train": cost.train_images / rate.train, "predict": cost.predict_images / rate.infer,
                  "features": cost.feature_images / rate.infer}
    cost.disk = {"checkpoints": m * checkpoint_bytes(net.params, cfg), "predictions": prediction_bytes(cfg, split, c),
                 "features": m * store_bytes(c, len(cfg.tta), net.features)}
    cost.note = f"store: {len(cfg.tta)} views x {net.features} uint8 per image"
    return cost


def read_seconds(images: float, bytes_per_image: float, read_mb_s: float) -> float:
    return images * bytes_per_image / (read_mb_s * 1e6)


def head_params(cfg, dim: int, copies: int) -> int:
    """Parameters of a fuse recipe's head, built on the meta device as fuse_fold builds it."""
    import torch

    from solutions.convoluted.fuse import head_for

    with torch.device("meta"):
        head = head_for(cfg, dim, copies, N_CLASSES)
    return sum(p.numel() for p in head.parameters())


def fuse_cost(cfg, split: Split, c: Counts, table: dict, bases: dict, read_mb_s: float) -> Cost:
    """A head on stored features: per epoch every training product's images (all copies) are read."""
    dims = [network(bases[b].model).features for b in cfg.bases]
    views = len(bases[cfg.bases[0]].tta)
    cost, m = new_cost(cfg, None), split.models
    cost.train_images = m * cfg.epochs * epoch_images(cfg, split.train_images)
    cost.predict_images = m * (cfg.epochs * val_images(cfg, split) + split.oof_images + c.test_images)
    cost.io_s = read_seconds(cost.train_images + cost.predict_images, views * sum(dims), read_mb_s)
    cost.disk = {"checkpoints": m * checkpoint_bytes(head_params(cfg, sum(dims), views), cfg), "predictions": prediction_bytes(cfg, split, c)}
    cost.rate = f"bound by reading {views} x {sum(dims)} bytes per image at {read_mb_s:,.0f} MB/s (the cold read of bench/README.md; a lower bound)"
    return cost


def rank_count_cost(cfg, split: Split, c: Counts, table: dict, bases: dict, read_mb_s: float) -> Cost:
    """Member C on stored features: 6 specialists (2 by rank, 4 by count: each image twice an epoch), the OOF
    through 4 variants, the test set once."""
    base = bases[cfg.base]
    dim, views, m = network(base.model).features, len(base.tta), split.models
    cost = new_cost(cfg, None)
    cost.train_images = m * 2 * cfg.epochs * epoch_images(cfg, split.train_images)
    cost.predict_images = m * (2 * cfg.epochs * val_images(cfg, split) + 4 * split.oof_images + c.test_images)
    cost.io_s = read_seconds(cost.train_images + cost.predict_images, views * dim, read_mb_s)
    cost.disk = {"checkpoints": m * 6 * checkpoint_bytes(dim * N_CLASSES + N_CLASSES, cfg), "predictions": prediction_bytes(cfg, split, c)}
    cost.rate = f"bound by reading {views} x {dim} bytes per image at {read_mb_s:,.0f} MB/s (the cold read of bench/README.md; a lower bound)"
    return cost


def specialists_cost(cfg, split: Split, c: Counts, table: dict) -> Cost:
    """2nd place's member C as whole nets: six fine-tunes of its base (each image in one rank and one
    count model), then every image on its tta_crops through three nets (base, rank, count)."""
    rate, m = rate_of(cfg, table), split.models
    cost, k_images = new_cost(cfg, rate), {k: k * n for k, n in c.by_k.items()}
    crops = sum(cfg.tta_crops[min(int(k), 4) - 1] * v for k, v in k_images.items()) / sum(k_images.values())
    cost.train_images = m * 2 * cfg.epochs * epoch_images(cfg, split.train_images)
    cost.predict_images = m * (6 * cfg.epochs * val_images(cfg, split) + 3 * crops * (split.oof_images + c.test_images))
    cost.gpu_s = {"train": cost.train_images / rate.train, "predict": cost.predict_images / rate.infer}
    cost.disk = {"checkpoints": m * 6 * checkpoint_bytes(network(cfg.model).params, cfg), "predictions": prediction_bytes(cfg, split, c)}
    cost.note = f"6 whole-net fine-tunes; {crops:.1f} crops x 3 nets per image"
    return cost


GPU_COSTS = {"image": image_cost, "composed": composed_cost, "base": base_cost, "rank_count_net": specialists_cost}
HEAD_COSTS = {"fuse": fuse_cost, "rank_count": rank_count_cost}


def recipe_costs(recipes: list, split: Split, c: Counts, table: dict, read_mb_s: float) -> list[Cost]:
    bases = {cfg.name: cfg for cfg in recipes if cfg.stage == "base"}
    costs = []
    for cfg in recipes:
        if cfg.stage in GPU_COSTS:
            costs.append(GPU_COSTS[cfg.stage](cfg, split, c, table))
        elif cfg.stage in HEAD_COSTS:
            costs.append(HEAD_COSTS[cfg.stage](cfg, split, c, table, bases, read_mb_s))
        else:
            raise DataError(f"recipe {cfg.source}: the plan has no cost model for stage {cfg.stage!r}")
    return costs


# ----------------------------------------------------------------------------- CPU stages and disk

def fitted(stage: str, units: float, cores: int, rounds: int = 200) -> tuple[float, float]:
    """(peak bytes, seconds) of a stage from bench_scale's fit at `units` (millions x 1e6): a stage
    that uses every core is scaled from the bench's cores to `cores`, the stacker by its rounds."""
    a, b, s, fixed = CPU_FITS[stage]
    scale = rounds / STACK_FIT_ROUNDS[stage] if stage in STACK_FIT_ROUNDS else 1.0
    if stage in PARALLEL_STAGES:
        scale *= BENCH_CORES / cores
    return (a + b * units / 1e6) * 1e6, (s * units / 1e6 + fixed) * scale


def cpu_stages(c: Counts, split: Split, cores: int, rounds: int) -> list[dict]:
    """Peak RAM and time of each CPU stage (measured per-unit figures; 'not measured' where none exist)."""
    every = c.train_products + c.test_products
    images = c.train_images + c.test_images
    held = split.models * split.oof_products + c.test_products  # the rows the stacker holds
    stack, stack_units = ("stack_holdout", every) if split.protocol == "holdout" else ("stack_all", held)
    cored = f"time: every core, {BENCH_CORES} measured -> {cores} assumed, linear scaling assumed"
    read = MEDIA_IMAGE_SHARE * c.train_products
    text_ram, text_s = fitted("ocr_text", read, cores)  # one fold model; the protocol's models one after another
    rows = [("index", *fitted("index", every, cores), f"{BENCH_README}; time = both BSON files at the {COLD_READ_MB_S:,.0f} MB/s cold read"),
            ("stats", *fitted("stats", every, cores), BENCH_README),
            ("ocr (selection)", *fitted("ocr_select", every, cores), BENCH_README),
            ("ocr (tesseract)", None, MEDIA_IMAGE_SHARE * images / (TESSERACT_IMAGES_S_CORE * cores),
             f"bench/README.md: {TESSERACT_IMAGES_S_CORE} images/s per core on {MEDIA_IMAGE_SHARE:.1%} of the images, {cores} cores assumed; "
             "RAM: one tesseract process per core, not measured"),
            ("ocr (text model)", text_ram, text_s * split.models,
             f"{BENCH_README}: one fold model on {read:,.0f} read train products ({MEDIA_IMAGE_SHARE:.1%}), x {split.models} model(s); {cored}"),
            ("md5", *fitted("md5", every, cores), f"{BENCH_README}; {cored}"),
            ("stack", *fitted(stack, stack_units, cores, rounds), f"{BENCH_README}, " + (
                f"the holdout protocol's shape ({STACK_SOURCES_NOTE}), {every:,.0f} products" if stack == "stack_holdout" else
                f"every OOF product trains, {held:,.0f} products held (OOF + test); fit from an older run with 3 synthetic sources, "
                f"not the full profile's: more than 32 GB at full scale, cap it with --max-train-products") + f", time x {rounds}/{STACK_FIT_ROUNDS[stack]} rounds; {cored}"),
            ("report", *fitted("report", every, cores), BENCH_README)]
    out = [{"stage": s, "peak_bytes": ram, "seconds": t, "source": src} for s, ram, t, src in rows]
    out[0]["seconds"] = c.bson_bytes / (COLD_READ_MB_S * 1e6)
    return out


def disk_by_stage(c: Counts, costs: list[Cost], split: Split) -> dict:
    """Bytes each stage leaves in the work dir (the Kaggle files themselves not included)."""
    row = 8 + 4 * 20
    side = 6 * row * (split.models * split.oof_products + c.test_products)  # 3 solution blends, ocr, md5, stack
    by = {"index": INDEX_BYTES * (c.train_products + c.test_products), "md5 hashes": HASH_BYTES * (c.train_images + c.test_images)}
    for what in ("checkpoints", "predictions", "features"):
        by[f"{what} (recipes)"] = sum(cost.disk.get(what, 0.0) for cost in costs)
    by["predictions (3 blends, ocr, md5, stack; an upper bound)"] = side
    return by


# ----------------------------------------------------------------------------- the plan


@dataclass
class PlanOptions:
    profile: str = "full"  # mini | full: the recipes planned
    data: str = ""  # a Kaggle-layout folder (train.bson, test.bson): its counts (from --work's index); empty = the official counts
    gpus: int = 1  # GPUs the training stages share (wall-hours = GPU-hours / gpus: linear scaling assumed)
    protocol: str = ""  # holdout | kfold (default: holdout for full, kfold for mini, as run_all.sh)
    n_folds: int = 5  # kfold: models per recipe
    holdout_fraction: float = 0.05  # holdout when the 2nd team's 50,000 ids are not in the data
    throughput: str = ""  # bench/bench_gpu.py's JSON (default bench/results/gpu_throughput.json when present)
    json: str = ""  # also write the plan as JSON here
    build_index: bool = False  # with --data: build the missing index (what common.prepare does) instead of stopping
    cores: int = 16  # CPU cores of the machine the CPU stages run on (OCR, MD5, the text model and the stacker use every core)
    read_mb_s: float = COLD_READ_MB_S  # disk read rate for the heads on stored features
    stack_rounds: int = 200  # the stacker's boosting rounds (ensembling/stack/config.py default)


def plan(opts: PlanOptions, work: WorkDir) -> dict:
    if opts.gpus < 1:
        raise DataError(f"--gpus {opts.gpus}: at least 1")
    protocol = opts.protocol or ("holdout" if opts.profile == "full" else "kfold")
    counts = data_counts(opts.data, work, opts.build_index) if opts.data else official_counts()
    split = protocol_split(counts, protocol, opts.n_folds, opts.holdout_fraction)
    table = load_throughput(opts.throughput)
    costs = recipe_costs(profile_configs(opts.profile), split, counts, table, opts.read_mb_s)
    cpu = cpu_stages(counts, split, opts.cores, opts.stack_rounds)
    disk = disk_by_stage(counts, costs, split)
    return {"profile": opts.profile, "gpus": opts.gpus, "counts": dataclasses.asdict(counts), "split": dataclasses.asdict(split),
            "throughput_file": table.get("file"), "recipes": [dataclasses.asdict(x) | {"gpu_hours": x.gpu_hours} for x in costs],
            "cpu_stages": cpu, "disk_bytes": disk, "totals": totals(costs, cpu, disk, opts.gpus)}


def totals(costs: list[Cost], cpu: list[dict], disk: dict, gpus: int) -> dict:
    gpu_h = sum(x.gpu_hours for x in costs)
    by_part = {p: sum(x.gpu_s.get(p, 0.0) for x in costs) / 3600 for p in ("train", "predict", "features")}
    heads_h = sum(x.io_s for x in costs) / 3600
    cpu_h = sum(s["seconds"] or 0.0 for s in cpu) / 3600
    peak = max((s for s in cpu if s["peak_bytes"]), key=lambda s: s["peak_bytes"])
    return {"gpu_hours": gpu_h, "gpu_hours_by_part": by_part, "wall_hours_gpu": gpu_h / gpus, "heads_io_hours": heads_h,
            "cpu_stage_hours": cpu_h, "wall_hours": gpu_h / gpus + heads_h + cpu_h, "disk_bytes": sum(disk.values()),
            "peak_ram_bytes": peak["peak_bytes"], "peak_ram_stage": peak["stage"], "scaling": f"GPU-hours / {gpus}: linear scaling assumed"}


# ----------------------------------------------------------------------------- printing


def _m(n: float) -> str:
    return f"{n / 1e6:,.1f}M"


def _h(seconds: float) -> str:
    return f"{seconds / 3600:,.1f}"


def header(p: dict) -> list[str]:
    c, s = p["counts"], p["split"]
    models = "1 model per recipe" if s["models"] == 1 else f"{s['models']} models per recipe"
    throughput = p["throughput_file"] or "no bench_gpu.json (bench/bench_gpu.py writes it): the winners' recorded figures"
    return [f"Plan of the {p['profile']} profile on {p['gpus']} GPU{'s' * (p['gpus'] > 1)}: protocol {s['protocol']}, {models}, each trains on "
            f"{s['train_products']:,.0f} products / {s['train_images']:,.0f} images and predicts {s['oof_products']:,.0f} / "
            f"{s['oof_images']:,.0f} out of fold ({s['what']}) and the test set",
            f"Data: {c['train_products']:,.0f} train products / {c['train_images']:,.0f} images, {c['test_products']:,.0f} test / "
            f"{c['test_images']:,.0f}; train products by image count {c['by_k']} ({c['source']})",
            f"Throughput: {throughput}"]


def _rates(r: dict) -> tuple[str, str]:
    """(train, inference) images/s per GPU of a recipe line; heads on stored features have none."""
    g = r["gpu_s"]
    if not g:
        return "I/O", "I/O"
    infer = (r["predict_images"] + r["feature_images"]) / (g.get("predict", 0.0) + g.get("features", 0.0))
    return f"{r['train_images'] / g['train']:.1f}", f"{infer:.1f}"


def recipe_table(p: dict) -> tuple[list[str], list[str]]:
    """One line per recipe, its throughput source as a footnote letter."""
    sources: list[str] = list(dict.fromkeys(r["rate"] for r in p["recipes"]))
    lines = [f"{'recipe':34s} {'epochs':>11s} {'train img':>9s} {'pred img':>9s} {'train/s':>8s} {'infer/s':>8s} src "
             f"{'GPU-h train':>11s} {'predict':>8s} {'features':>8s} {'GPU-h':>8s} {'wall-h':>7s} {'disk GB':>8s}"]
    for r in p["recipes"]:
        g, (train, infer) = r["gpu_s"], _rates(r)
        wall = r["gpu_hours"] / p["gpus"] + r["io_s"] / 3600
        lines.append(f"{r['solution'] + '/' + r['source'].split('_', 1)[1]:34s} {r['epochs']:>11s} {_m(r['train_images']):>9s} "
                     f"{_m(r['predict_images'] + r['feature_images']):>9s} {train:>8s} {infer:>8s} {chr(97 + sources.index(r['rate'])):>3s} "
                     f"{_h(g.get('train', 0)):>11s} {_h(g.get('predict', 0)):>8s} {_h(g.get('features', 0)):>8s} {r['gpu_hours']:8,.1f} "
                     f"{wall:7,.1f} {sum(r['disk'].values()) / GB:8,.1f}")
    return lines, [f"  [{chr(97 + i)}] {s}" for i, s in enumerate(sources)]


def solution_table(p: dict) -> list[str]:
    lines = [f"{'solution':14s} {'GPU-hours':>10s} {'wall-h on ' + str(p['gpus']):>12s} {'heads I/O h':>11s} {'disk GB':>9s}"]
    for sol in dict.fromkeys(r["solution"] for r in p["recipes"]):
        rs = [r for r in p["recipes"] if r["solution"] == sol]
        gpu = sum(r["gpu_hours"] for r in rs)
        io = sum(r["io_s"] for r in rs) / 3600
        lines.append(f"{sol:14s} {gpu:10,.1f} {gpu / p['gpus']:12,.1f} {io:11,.1f} {sum(sum(r['disk'].values()) for r in rs) / GB:9,.1f}")
    return lines


def render(p: dict) -> str:
    t = p["totals"]
    rows, notes = recipe_table(p)
    out = header(p) + ["", "Per recipe (images summed over the protocol's models; pred img = per-epoch validation + OOF/test x TTA views"
                           " + the feature pass; throughput per GPU):"] + rows + ["Throughput sources:"] + notes
    out += ["", "Per solution:"] + solution_table(p)
    out += ["", "Disk per stage (GB):"] + [f"  {k:58s} {v / GB:10,.1f}" for k, v in p["disk_bytes"].items()]
    out += ["", "CPU stages (peak RAM, time on one machine):"]
    for s in p["cpu_stages"]:
        ram = f"{s['peak_bytes'] / GB:6.1f} GB" if s["peak_bytes"] else "     n/a "
        time = f"{s['seconds'] / 3600:6.2f} h" if s["seconds"] is not None else "   n/a  "
        out.append(f"  {s['stage']:16s} {ram} {time}  {s['source']}")
    parts = ", ".join(f"{k} {v:,.1f}" for k, v in t["gpu_hours_by_part"].items())
    out += ["", f"TOTAL GPU-hours {t['gpu_hours']:,.1f} ({parts})",
            f"TOTAL wall-hours on {p['gpus']} GPU{'s' * (p['gpus'] > 1)} {t['wall_hours']:,.1f} = {t['wall_hours_gpu']:,.1f} GPU stages "
            f"({t['scaling']}) + {t['heads_io_hours']:,.1f} heads on stored features (I/O-bound) + {t['cpu_stage_hours']:,.1f} CPU stages",
            f"TOTAL disk {t['disk_bytes'] / GB:,.1f} GB (work dir; the Kaggle files add {p['counts']['bson_bytes'] / GB:,.1f} GB); "
            f"peak RAM of the CPU stages {t['peak_ram_bytes'] / GB:,.1f} GB ({t['peak_ram_stage']})"]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    args = parse_stage(argv, __doc__, PlanOptions)
    result = plan(args.options, args.work)
    print(render(result))
    if args.options.json:
        write_json(args.options.json, result)
    return result


if __name__ == "__main__":
    run(main)
