"""GPU throughput per recipe: measured by bench/bench_gpu.py (its JSON) when present, else the
winners' recorded training speeds, else scaled by FLOPs from the nearest recorded network; every
rate carries where it comes from (common.plan prints it beside each figure)."""
from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError
from .paths import REPO

DEFAULT_THROUGHPUT = REPO / "bench" / "results" / "gpu_throughput.json"
N_CLASSES = 5270  # the official category tree
WINNERS = "../shared/reference/winning-solutions.md"


@dataclass(frozen=True)
class Recorded:
    images_per_s: float  # training images/s of the whole machine
    gpus: int
    where: str

    @property
    def per_gpu(self) -> float:
        return self.images_per_s / self.gpus


# 3rd place (dylan), MXNet fp32, 8 GPUs, 180 px: the "Speed: N samples/sec" lines of its training logs.
RECORDED = {
    "dpn107": Recorded(246.0, 8, "mwbyeon/kaggle-cdiscount train/M14/stderr, 3rd place, MXNet fp32, batch 384"),
    "dpn92": Recorded(532.0, 8, "mwbyeon/kaggle-cdiscount train/M06/stderr, 3rd place, MXNet fp32, batch 512"),
    "densenet161": Recorded(549.0, 8, "mwbyeon/kaggle-cdiscount train/M04/stderr, 3rd place, MXNet fp32, batch 512"),
    "resnext101_32x4d": Recorded(588.0, 8, "mwbyeon/kaggle-cdiscount train/M01/stderr, 3rd place, MXNet fp32, batch 512 (first epoch; 610 later)"),
    "dpn98": Recorded(380.0, 8, "mwbyeon/kaggle-cdiscount train/M05/stderr, 3rd place, MXNet fp32, batch 512"),
    "dpn131": Recorded(273.0, 8, "mwbyeon/kaggle-cdiscount train/M12/stderr, 3rd place, MXNet fp32, batch 384"),
    "resnext101_64x4d": Recorded(338.0, 8, "mwbyeon/kaggle-cdiscount train/M07/stderr, 3rd place, MXNet fp32, batch 512"),
    "seresnext101_64x4d": Recorded(270.0, 8, "mwbyeon/kaggle-cdiscount train/M13/stderr, 3rd place, MXNet fp32, batch 512"),
}
INFER_OVER_TRAIN = 3.0  # no inference speed is recorded: a forward pass is about a third of a training step


@dataclass(frozen=True)
class Net:
    flops: float  # one forward pass of one image at the counted size (2 x multiply-adds)
    params: int
    features: int  # width of the pooled features (the 2nd place's feature stores)


@functools.lru_cache(maxsize=None)
def network(model: str, size: int = 180) -> Net:
    """Counted by torch.utils.flop_counter on the meta device: no weights, no memory, well under a second."""
    import timm
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        net = timm.create_model(model, pretrained=False, num_classes=N_CLASSES)
        with FlopCounterMode(display=False) as counter:
            net(torch.empty(1, 3, size, size))
    return Net(float(counter.get_total_flops()), sum(p.numel() for p in net.parameters()), int(net.num_features))


@dataclass(frozen=True)
class Rate:
    train: float  # images (tiles) per second per GPU
    infer: float  # image forwards per second per GPU (one TTA view)
    source: str


def load_throughput(path: str) -> dict:
    """bench_gpu.py's JSON (`path`, or the default file when present); {} when there is none."""
    file = Path(path) if path else DEFAULT_THROUGHPUT
    if not file.exists():
        if path:
            raise DataError(f"--throughput {path}: no such file (bench/bench_gpu.py writes it)")
        return {}
    data = json.loads(file.read_text())
    data["file"] = str(file)
    return data


def measured_rate(cfg, table: dict) -> Rate | None:
    """The recipe's figures in bench_gpu.json (by source, e.g. dylan_dpn107): loader-fed, else synthetic."""
    entry = table.get("recipes", {}).get(cfg.source)
    if not entry:
        return None
    feed = "loader" if entry.get("train_img_s", {}).get("loader") else "synthetic"
    train, infer = entry["train_img_s"].get(feed), entry.get("infer_img_s", {}).get(feed)
    if not train or not infer:
        return None
    where = f"bench_gpu.json on {table.get('device', '?')}" + ("" if table.get("gpu", True) else " (a CPU: not a GPU figure)")
    return Rate(float(train), float(infer), f"{where}, {feed}-fed, {entry.get('input_size', table.get('size', '?'))} px ({table['file']})")


def recorded_rate(model: str, size: int = 180) -> Rate:
    """The winners' figure for this model (recorded at 180 px), else scaled by FLOPs from the recorded
    model nearest in FLOPs; a recipe at another input size is scaled by its FLOPs at that size."""
    flops, arch = network(model, size).flops, model.split(".")[0]  # a timm pretrained tag (name.tag) is the same network
    if arch in RECORDED and size == 180:
        ref, name, how = RECORDED[arch], arch, "recorded"
    else:
        name = min(RECORDED, key=lambda m: abs(math.log(network(m).flops / flops)))
        ref, how = RECORDED[name], f"scaled by FLOPs from {name} ({network(name).flops / 1e9:.1f} GFLOPs vs {flops / 1e9:.1f} at {size} px)"
    train = ref.per_gpu * network(name).flops / flops
    return Rate(train, INFER_OVER_TRAIN * train, f"{how}: {ref.images_per_s:.0f} img/s on {ref.gpus} GPUs ({ref.where}); "
                                                 f"inference assumed {INFER_OVER_TRAIN:.0f} x training")


def rate_of(cfg, table: dict) -> Rate:
    return measured_rate(cfg, table) or recorded_rate(cfg.model, cfg.input_size)


