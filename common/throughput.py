"""GPU throughput per recipe, three kinds, each rate labelled with its kind and where it comes from
(common.plan prints both beside each figure):

  measured   bench/bench_gpu.py's JSON (bench/results/gpu_throughput.json when present)
  estimated  timm's published AMP training / inference tables (one RTX 3090), scaled to an H100 by
             the ratio of their memory bandwidths and to the recipe's input size by FLOPs: the
             default until a measurement overrides it
  recorded   the 3rd place's 2017 MXNet fp32 training logs (8 GPUs of 2017): `--speeds recorded`
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError
from .atomic import write_json
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


# ----------------------------------------------------------------------------- estimated: timm's tables

TIMM_TABLES = ("huggingface/pytorch-image-models results/benchmark-train-amp-nhwc-pt112-cu113-rtx3090.csv (train_samples_per_sec) and "
               "results/benchmark-infer-amp-nhwc-pt112-cu113-rtx3090.csv (infer_samples_per_sec)")
TIMM_SETUP = "one RTX 3090, PyTorch 1.12 + CUDA 11.3, AMP, channels_last, synthetic input"
H100_OVER_RTX3090 = 3.35e12 / 936e9  # HBM3 of an H100 SXM (3.35 TB/s) over the 3090's GDDR6X (936 GB/s): conv nets in AMP are bandwidth-bound


@dataclass(frozen=True)
class Published:
    row: str  # the table's model name (timm has renamed some since)
    train: float  # images/s
    train_size: int
    infer: float
    infer_size: int


# Our architecture -> its rows of the two tables (same network; the name the 2022 tables use).
PUBLISHED = {
    "densenet161": Published("densenet161", 399.17, 224, 1366.11, 224),
    "densenet169": Published("densenet169", 752.52, 224, 2421.68, 224),
    "dpn92": Published("dpn92", 353.0, 224, 1303.44, 224),
    "dpn98": Published("dpn98", 290.11, 224, 1188.11, 224),
    "dpn107": Published("dpn107", 194.08, 224, 736.42, 224),
    "dpn131": Published("dpn131", 216.53, 224, 866.66, 224),
    "resnext101_32x4d": Published("resnext101_32x4d", 609.01, 224, 1924.17, 224),
    "resnext101_64x4d": Published("gluon_resnext101_64x4d", 363.93, 224, 1176.11, 224),
    "seresnext101_64x4d": Published("gluon_seresnext101_64x4d", 319.51, 224, 1088.94, 224),
    "legacy_seresnext101_32x4d": Published("legacy_seresnext101_32x4d", 484.7, 224, 1697.89, 224),
    "legacy_seresnet50": Published("legacy_seresnet50", 1003.5, 224, 3311.17, 224),
    "resnet50": Published("resnet50", 1218.01, 224, 3676.35, 224),
    "resnet101": Published("resnet101", 747.89, 224, 2246.09, 224),
    "inception_v3": Published("inception_v3", 782.35, 299, 2512.32, 299),
    "inception_resnet_v2": Published("inception_resnet_v2", 358.54, 299, 1108.79, 299),
    "legacy_xception": Published("xception", 497.64, 299, 1578.2, 299),
    "tf_efficientnet_lite0": Published("tf_efficientnet_lite0", 2134.89, 224, 8115.07, 224),
}


@dataclass(frozen=True)
class Net:
    flops: float  # one forward pass of one image at the counted size (2 x multiply-adds)
    params: int
    features: int  # width of the pooled features (the 2nd place's feature stores)


COSTS_FILE = REPO / "common" / "resources" / "network_costs.json"  # `python -m common.throughput --write-costs` writes it
COUNTED: dict[str, Net] = {}  # what this process counted itself (what --write-costs saves)
READ_SAVED = True  # False while --write-costs counts everything


def library_versions() -> dict[str, str]:
    """timm's and torch's versions (from their package metadata: nothing imported): what a count depends on."""
    from importlib.metadata import PackageNotFoundError, version

    def of(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return ""

    return {"timm": of("timm"), "torch": of("torch"), "n_classes": str(N_CLASSES)}


@functools.lru_cache(maxsize=1)
def counted_table() -> dict[str, Net]:
    """The saved counts when they were made with this timm, torch and class count; else {} (everything
    is counted again: a new timm may change an architecture)."""
    if not COSTS_FILE.exists():
        return {}
    data = json.loads(COSTS_FILE.read_text())
    if data.get("versions") != library_versions():
        return {}
    return {key: Net(float(v["flops"]), int(v["params"]), int(v["features"])) for key, v in data["networks"].items()}


@functools.lru_cache(maxsize=None)
def network(model: str, size: int = 180) -> Net:
    """FLOPs, parameters and feature width of a timm network at an input size: from the saved table
    (common/resources/network_costs.json: the plan then imports neither torch nor timm and takes
    seconds, not the half minute of counting its ~50 networks), else counted now."""
    return (counted_table().get(f"{model}@{size}") if READ_SAVED else None) or count_network(model, size)


def count_network(model: str, size: int) -> Net:
    """Counted by torch.utils.flop_counter on the meta device: no weights, no memory, about a second."""
    import timm
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        net = timm.create_model(model, pretrained=False, num_classes=N_CLASSES)
        with FlopCounterMode(display=False) as counter:
            net(torch.empty(1, 3, size, size))
    COUNTED[f"{model}@{size}"] = found = Net(float(counter.get_total_flops()), sum(p.numel() for p in net.parameters()), int(net.num_features))
    return found


def write_costs(profiles: tuple[str, ...] = ("full", "mini"), gpus: tuple[int, ...] = (1, 8)) -> Path:
    """Count every network the plan asks for (each profile, both kinds of speeds, nothing measured)
    and save the table: run again when a recipe names a new network or size (a missing entry is
    only slower: counted when asked)."""
    import tempfile

    from .paths import WorkDir
    from .plan import PlanOptions, plan

    global READ_SAVED
    with tempfile.TemporaryDirectory() as tmp:
        unmeasured = Path(tmp) / "unmeasured.json"
        unmeasured.write_text('{"recipes": {}}')
        READ_SAVED = False
        network.cache_clear()
        try:
            for profile, speeds, n in [(p, s, n) for p in profiles for s in SPEEDS for n in gpus]:
                plan(PlanOptions(profile=profile, gpus=n, speeds=speeds, throughput=str(unmeasured)), WorkDir(Path(tmp) / "work"))
        finally:
            READ_SAVED = True
            counted_table.cache_clear()
            network.cache_clear()
    table = {"versions": library_versions(), "what": "per timm network at an input size (model@size): FLOPs (2 x multiply-adds) of one "
             "forward pass of one image, parameters, pooled feature width; counted by torch.utils.flop_counter on the meta device",
             "written_by": "python -m common.throughput --write-costs", "networks": {k: dataclasses.asdict(v) for k, v in sorted(COUNTED.items())}}
    write_json(COSTS_FILE, table)
    return COSTS_FILE


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-costs", action="store_true", help=f"count every network the plan asks for and write {COSTS_FILE.relative_to(REPO)}")
    if parser.parse_args(argv).write_costs:
        path = write_costs()
        print(f"wrote {path}: {len(json.loads(path.read_text())['networks'])} networks")
    else:
        parser.print_help()


@dataclass(frozen=True)
class Rate:
    train: float  # images (tiles) per second per GPU
    infer: float  # image forwards per second per GPU (one TTA view)
    source: str
    kind: str = "recorded"  # measured | estimated | recorded


SPEEDS = ("estimated", "recorded")  # what a recipe without a measurement gets (common.plan --speeds)


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
    if not entry or "error" in entry:  # an errored or partial entry: the next kind of figure stands in
        return None
    trains, infers = entry.get("train_img_s") or {}, entry.get("infer_img_s") or {}
    feed = "loader" if trains.get("loader") and infers.get("loader") else "synthetic"
    train, infer = trains.get(feed), infers.get(feed)
    if not train or not infer:
        return None
    where = f"bench_gpu.json on {table.get('device', '?')}" + ("" if table.get("gpu", True) else " (a CPU: not a GPU figure)")
    return Rate(float(train), float(infer), f"{where}, {feed}-fed, {entry.get('input_size', table.get('size', '?'))} px ({table['file']})",
                "measured")


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
                                                 f"inference assumed {INFER_OVER_TRAIN:.0f} x training", "recorded")


def estimated_rate(model: str, size: int = 180) -> Rate:
    """timm's published figures for this architecture (else the published one nearest in FLOPs),
    x H100_OVER_RTX3090, scaled by FLOPs from the table's input size to the recipe's."""
    arch, flops = model.split(".")[0], network(model, size).flops
    name = arch if arch in PUBLISHED else min(PUBLISHED, key=lambda m: abs(math.log(network(m, 224).flops / network(model, 224).flops)))
    pub = PUBLISHED[name]
    train = pub.train * H100_OVER_RTX3090 * network(name, pub.train_size).flops / flops
    infer = pub.infer * H100_OVER_RTX3090 * network(name, pub.infer_size).flops / flops
    how = pub.row if name == arch else f"{pub.row} (nearest published in FLOPs)"
    return Rate(train, infer, f"estimated: timm's {how}, {pub.train:.0f} train / {pub.infer:.0f} infer img/s at {pub.train_size} px on an RTX 3090 "
                              f"(AMP, channels_last), x {H100_OVER_RTX3090:.2f} to an H100 (memory bandwidth, assumed), FLOPs-scaled to {size} px", "estimated")


def rate_of(cfg, table: dict, speeds: str = "estimated") -> Rate:
    """Measured when bench_gpu.json has the recipe, else `speeds`: estimated (timm's tables) or recorded (2017)."""
    if speeds not in SPEEDS:
        raise DataError(f"--speeds {speeds!r}: choose from {', '.join(SPEEDS)}")
    fallback = estimated_rate if speeds == "estimated" else recorded_rate
    return measured_rate(cfg, table) or fallback(cfg.model, cfg.crop or cfg.input_size)  # the network sees the crop




if __name__ == "__main__":  # through the imported module: the plan counts into its COUNTED, not __main__'s
    from common.cli import run
    from common.throughput import main as imported_main

    run(imported_main)
