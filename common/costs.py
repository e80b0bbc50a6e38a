"""What a recipe costs, in the units the plan (common/plan.py) adds up: the data's counts, the
protocol's split, per recipe the images it trains and predicts, GPU-seconds from a throughput
table and bytes on disk. Each recipe kind registers its own cost model (RecipeKind.cost, called
with the recipe and a CostContext); the single-image one lives here, the others in their solution."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError
from .paths import HENG_VALID_IDS, WorkDir
from .throughput import WINNERS, Rate, network, rate_of

OFFICIAL = {"train_products": 7_069_896, "train_images": 12_371_293, "test_products": 1_768_182, "test_images": 3_095_080,
            "bson_bytes": 58.2e9 + 14.5e9, "by_k": {1: 4_369_441, 2: 1_128_588, 3: 542_792, 4: 1_029_075},
            "heng_products": 50_000, "heng_images": 87_648}  # winning-solutions.md (paper Table 3); ../shared/data/SOURCES.txt


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
    rate: str = ""  # where the images/s come from
    speed: str = ""  # its kind: measured | estimated | recorded (I/O: a head bound by reading its stores)
    note: str = ""
    global_batch: int = 0  # samples (tiles) per optimizer step, over every GPU (the schedule's scaling model)
    micro_batch: int = 0  # the most one GPU holds per forward (more per GPU: accumulated micro-batches)
    params: float = 0.0  # trained parameters: the gradients DDP all-reduces per step

    @property
    def gpu_hours(self) -> float:
        return sum(self.gpu_s.values()) / 3600

    @property
    def steps(self) -> float:
        """Optimizer steps of the training images, summed over the protocol's models."""
        return self.train_images / self.global_batch if self.global_batch else 0.0


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
    """A recipe's cost line; a GPU-bound one (a rate) carries its batch and parameters for the schedule."""
    cost = Cost(cfg.source, cfg.solution, cfg.stage, cfg.model, str(cfg.epochs), rate=rate.source if rate else "", speed=rate.kind if rate else "I/O")
    if rate is not None:
        cost.global_batch, cost.micro_batch = cfg.global_batch or cfg.batch_size * cfg.accum_steps, cfg.batch_size
        cost.params = float(network(cfg.model).params)
    return cost


def store_bytes(c: Counts, views: int, dim: int) -> float:
    """One fold's train + test stores: uint8[images, views, dim], the ok bytes, the written rows."""
    images = c.train_images + c.test_images
    return images * (views * dim + 1) + 8 * (c.train_products + c.test_products)


def read_seconds(images: float, bytes_per_image: float, read_mb_s: float) -> float:
    return images * bytes_per_image / (read_mb_s * 1e6)


@dataclass(frozen=True)
class CostContext:
    """What a recipe's cost model reads beside its recipe."""

    split: Split
    counts: Counts
    table: dict  # bench_gpu.json's figures ({} when none)
    recipes: dict  # source -> config of every recipe of the profile (a head's base nets)
    read_mb_s: float  # disk read rate of the heads on stored features
    speeds: str = "estimated"  # a recipe without a measurement: estimated (timm's tables) or recorded (2017 logs)

    def rate(self, cfg) -> Rate:
        """The recipe's images/s per GPU: measured, else estimated or recorded (common.throughput)."""
        return rate_of(cfg, self.table, self.speeds)

    def recipe(self, solution: str, name: str):
        return self.recipes[f"{solution}_{name}"]


def image_cost(cfg, ctx: CostContext) -> Cost:
    """dylan: single images, then the OOF and test products through the inference driver (TTA views)."""
    split, c = ctx.split, ctx.counts
    rate, m = ctx.rate(cfg), split.models
    cost = new_cost(cfg, rate)
    cost.train_images = m * cfg.epochs * epoch_images(cfg, split.train_images)
    cost.predict_images = m * (cfg.epochs * val_images(cfg, split) + len(cfg.tta) * (split.oof_images + c.test_images))
    cost.gpu_s = {"train": cost.train_images / rate.train, "predict": cost.predict_images / rate.infer}
    cost.disk = {"checkpoints": m * checkpoint_bytes(network(cfg.model).params, cfg), "predictions": prediction_bytes(cfg, split, c)}
    return cost


# ----------------------------------------------------------------------------- CPU nodes


@dataclass(frozen=True)
class StageContext:
    """What a CPU node's cost model (Node.cost) reads: the data, the protocol's split, the machine."""

    counts: Counts
    split: Split
    cores: int  # CPU cores of the machine the stage runs on
    stack_rounds: int = 200  # the stacker's boosting rounds

    @property
    def products(self) -> float:
        return self.counts.train_products + self.counts.test_products

    @property
    def images(self) -> float:
        return self.counts.train_images + self.counts.test_images

    @property
    def every_core(self) -> str:
        from .plan_figures import BENCH_CORES

        return f"time: every core, {BENCH_CORES} measured -> {self.cores} assumed, linear scaling assumed"

    def fitted(self, stage: str, units: float, rounds: int = 200) -> tuple[float, float]:
        """(peak bytes, seconds) of a stage from bench_scale's fit at `units` (millions x 1e6): a stage
        that uses every core is scaled from the bench's cores to ours, the stacker by its rounds."""
        from .plan_figures import BENCH_CORES, CPU_FITS, PARALLEL_STAGES, STACK_FIT_ROUNDS

        a, b, s, fixed = CPU_FITS[stage]
        scale = rounds / STACK_FIT_ROUNDS[stage] if stage in STACK_FIT_ROUNDS else 1.0
        if stage in PARALLEL_STAGES:
            scale *= BENCH_CORES / self.cores
        return (a + b * units / 1e6) * 1e6, (s * units / 1e6 + fixed) * scale


def stage_row(stage: str, peak_bytes: float | None, seconds: float | None, source: str) -> dict:
    """One line of the plan's CPU table (a node may have several: OCR's selection, tesseract, text model)."""
    return {"stage": stage, "peak_bytes": peak_bytes, "seconds": seconds, "source": source}
