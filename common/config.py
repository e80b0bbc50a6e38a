"""Recipe configuration: one YAML per model recipe (the fields of TrainConfig or of a solution's
subclass), overridable from the command line (common/cli.py). The resolved config is saved beside
the checkpoints (config.yaml) and inside the source's summary.json."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Annotated

import yaml

from .atomic import write_text
from .augment import check_augments
from .checks import at_least, between, check_fields, check_names, fraction, positive
from .cli import load_yaml as _load_yaml
from .errors import DataError

CHOICES = {
    "optimizer": {"sgd", "nag", "nadam", "adam", "adamw"},
    "schedule": {"step", "piecewise", "cosine", "constant"},
    "amp": {"bf16", "fp16", "none"},
    "aggregate": {"mean", "geomean"},
    "decode_on": {"workers", "device"},
}
TTA_VIEWS = ("orig", "hflip")


@dataclass
class TrainConfig:
    # what and where
    solution: str = ""  # set from where the recipe file lies (common.recipe.identity): its solution's configs folder, or the trainer running it
    stage: str = "image"  # the kind of recipe (the solution's train.py registers what each stage trains)
    name: str = "model"  # the recipe name: work/models/<solution>/<name>/fold<k>/, source <solution>_<name>
    model: str = "tf_efficientnet_lite0"  # a timm model name (or a solution's head name)
    pretrained: str | None = None  # a registered weight source or a local file
    init_from: str | None = None  # a recipe of the same solution whose trained weights (same fold) start this one; keys it lacks keep their initialisation
    drop_rate: Annotated[float, fraction()] = 0.0
    head: str = ""  # a recorded classifier head instead of timm's (common.classifier_heads: kxv4, kxv3a)
    ablation: bool = False  # trained only to measure a choice: reported, never blended or stacked, not in a profile
    baseline: bool = False  # a control the profile trains (e.g. the single-image model a composed one is measured against): reported like an ablation, never blended or stacked
    recorded: dict = field(default_factory=dict)  # what the original team recorded for this recipe: value, what, on
    # data
    input_size: Annotated[int, at_least(8)] = 180  # side of one image tile as decoded
    crop: Annotated[int, at_least(0)] = 0  # >0: the network sees crop x crop windows: random ones in training, the centre one when predicting (2nd place's member B: 160 of 180)
    hflip: bool = True  # random horizontal flip in training
    augment: list[str] = field(default_factory=list)  # on-device batch augmentations (common.augment.AUGMENTS), training only
    augment_args: dict = field(default_factory=dict)  # {augmentation: {parameter: value}} (their defaults otherwise)
    num_workers: Annotated[int, at_least(0)] = 2
    decode_on: str = "workers"  # workers (OpenCV in loader processes) | device (torchvision.io.decode_jpeg, nvjpeg on CUDA)
    max_images_per_epoch: Annotated[int, at_least(0)] = 0  # 0 = all; >0 samples a fixed-size epoch (mini budgets)
    # optimisation
    epochs: Annotated[int, at_least(1)] = 1
    global_batch: Annotated[int, at_least(0)] = 0  # samples per optimizer step over all processes, as recorded (0 = batch_size x accum_steps)
    batch_size: Annotated[int, at_least(1)] = 64  # the largest micro-batch one process holds (memory); the trainer derives the split
    accum_steps: Annotated[int, at_least(1)] = 1  # used only when global_batch is 0; else derived for the world size
    optimizer: str = "nadam"  # sgd | nag (SGD with Nesterov momentum) | nadam | adam | adamw
    lr: Annotated[float, positive()] = 1e-4
    momentum: Annotated[float, between(0, 1)] = 0.9
    weight_decay: Annotated[float, at_least(0)] = 0.0
    schedule: str = "step"  # step | piecewise | cosine | constant
    lr_milestones: list[int] = field(default_factory=list)  # epochs where a step schedule multiplies by lr_gamma
    lr_gamma: Annotated[float, positive()] = 0.2
    lr_values: list[float] = field(default_factory=list)  # piecewise: the LR from each milestone on (one per milestone)
    warmup_epochs: Annotated[float, at_least(0)] = 0.0
    label_smoothing: Annotated[float, fraction()] = 0.0
    amp: str = "bf16"  # bf16 | fp16 | none (CUDA only; CPU runs fp32)
    channels_last: bool = True  # CUDA only
    compile: bool = False  # torch.compile the training net (--compile): the same losses, faster steps once compiled; checkpoints load without it
    seed: Annotated[int, at_least(0)] = 0
    # inference
    tta: list[str] = field(default_factory=lambda: list(TTA_VIEWS))
    aggregate: str = "mean"  # mean | geomean: a product's probability from its images'
    topk: Annotated[int, at_least(1)] = 20
    eval_batch_size: Annotated[int, at_least(1)] = 256
    folds: list[int] = field(default_factory=list)  # empty = every fold in folds.csv
    val_products: Annotated[int, at_least(0)] = 0  # per-epoch validation on a seeded sample of the fold's products (0 = all); OOF predictions always cover the fold
    # run control
    fast_dev_run: bool = False  # set by --fast-dev-run: the wiring check (a few steps, small input); its numbers mean nothing
    resume: bool = True  # continue an unfinished fold from its last.pt (--no-resume: from scratch)
    # watching a long run (none of these changes what a fold learns)
    log_every_steps: Annotated[int, at_least(0)] = 0  # a dated progress line (step, the epoch's ETA, img/s, loss, lr) every N optimizer steps within an epoch (0 = off)
    log_every_seconds: Annotated[float, at_least(0)] = 60.0  # a progress line whenever this many seconds passed since the last one (0 = off)
    log_epoch_parts: Annotated[int, at_least(0)] = 4  # a progress line at each 1/N of an epoch (4: at 25, 50, 75 %, a mini run's few lines; 0 = off)
    checkpoint_minutes: Annotated[float, at_least(0)] = 30.0  # a resumable mid-epoch checkpoint (step.pt) every this many minutes inside an epoch (0 = at epoch ends only)
    tensorboard: bool = False  # TensorBoard event files in the fold's tensorboard/ (needs `pip install tensorboard`)

    def __post_init__(self) -> None:
        """Reject a misspelt choice or a value of the wrong type or range when the recipe is read, not hours into a run."""
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise DataError(f"recipe option {name}={getattr(self, name)!r}: choose from {sorted(allowed)}")
        unknown = set(self.tta) - set(TTA_VIEWS)
        if unknown or not self.tta:
            raise DataError(f"recipe option tta: unknown views {sorted(unknown)} (choose from {list(TTA_VIEWS)}, at least one)")
        try:  # YAML reads 4e-05 (no dot) as a string
            self.lr_values = [float(v) for v in self.lr_values]
        except ValueError:
            raise DataError(f"recipe {self.name}: lr_values {self.lr_values} must be numbers") from None
        check_fields(self, f"recipe {self.name}")
        check_names("recipe", name=self.name, solution=self.solution, init_from=self.init_from)
        if self.schedule == "piecewise" and len(self.lr_values) != len(self.lr_milestones):
            raise DataError(f"recipe {self.name}: schedule piecewise needs one lr_values entry per lr_milestones entry")
        if self.crop and (self.crop > self.input_size or self.decode_on == "device"):
            raise DataError(f"recipe {self.name}: crop {self.crop} needs crop <= input_size ({self.input_size}) and decode_on: workers")
        try:
            check_augments(self.augment, self.augment_args)
        except ValueError as e:
            raise DataError(f"recipe option augment: {e}") from None

    @property
    def source(self) -> str:
        """The prediction source this recipe writes: work/preds/<solution>_<name>/."""
        return f"{self.solution}_{self.name}"

    def requires(self) -> list[str]:
        """Recipes of the same solution that must be trained first (a head needs its base nets, a
        fine-tuned net the net it starts from)."""
        return [self.init_from] if self.init_from else []

    def to_yaml(self) -> str:
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)

    def save(self, path: str | os.PathLike) -> None:
        write_text(path, self.to_yaml())


@dataclass(frozen=True)
class BatchSplit:
    """How one optimizer step of `global_batch` samples is cut over `world` processes."""

    global_batch: int
    world: int
    micro: int  # samples per process per forward/backward
    accum: int  # micro-steps per optimizer step (gradients all-reduced on the last only)

    def __str__(self) -> str:
        return (f"global batch {self.global_batch} = {self.world} process{'es' * (self.world > 1)} x micro-batch {self.micro}"
                f" x {self.accum} accumulation step{'s' * (self.accum > 1)}")


def batch_split(cfg: TrainConfig, world: int) -> BatchSplit:
    """The recipe's global batch on `world` processes: each takes global/world samples per step, in
    the fewest micro-batches of at most cfg.batch_size (so 1, 2, 4, 8 or 16 GPUs train the same recipe)."""
    total = cfg.global_batch or cfg.batch_size * cfg.accum_steps
    if total % world:
        raise DataError(f"recipe {cfg.name}: global batch {total} does not split evenly over {world} processes; "
                        f"set global_batch to a multiple of {world} or use another process count")
    per = total // world
    accum = -(-per // max(cfg.batch_size, 1))
    while per % accum:
        accum += 1
    return BatchSplit(total, world, per // accum, accum)


def for_world(cfg: TrainConfig, world: int) -> TrainConfig:
    """cfg with batch_size / accum_steps the per-process split of its global batch (idempotent)."""
    split = batch_split(cfg, world)
    return dataclasses.replace(cfg, global_batch=split.global_batch, batch_size=split.micro, accum_steps=split.accum)


# fields that do not change what a fold learns (run length, loader and batch mechanics: the global
# batch is compared, its per-process split is not; how often a run logs and checkpoints): a finished
# fold or a checkpoint stays valid
REUSE_IGNORES = {"epochs", "resume", "num_workers", "eval_batch_size", "folds", "val_products", "decode_on", "batch_size", "accum_steps", "compile",
                 "log_every_steps", "log_every_seconds", "log_epoch_parts", "checkpoint_minutes", "tensorboard"}


def config_changes(old: dict, new: dict) -> list[str]:
    """`field: old -> new` for every field that makes a saved fold or checkpoint another recipe's."""
    keys = sorted((set(old) | set(new)) - REUSE_IGNORES)
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def load_yaml(path: str | os.PathLike, cls: type = TrainConfig) -> dict:
    """A recipe YAML's values, every key a field of `cls` and every value of its type and range
    (common.checks; a DataError naming the file otherwise)."""
    values = _load_yaml(path, cls)
    try:
        cls(**values)
    except DataError as e:
        raise DataError(f"{path}: {e}") from None
    return values
