"""Training and loader throughput: our loop against timm's own training pipeline, in one run.

    python bench/bench_train.py [--model resnet18] [--size 64] [--batch 64] [--images 1024] [--device cpu]
    python bench/bench_train.py --loader-only [--size 180] [--batch 128] [--workers 2]   # the loaders' CPU cost only

Same model, batch, input size, optimiser (NAdam), loss (label smoothing 0.1) and images for both:
- ours: common.train.fit over ImageDataset reading the BSON through the offset index;
- timm: the pieces timm's train.py assembles (timm.data.create_dataset over an ImageFolder,
  timm.data.create_loader, timm.optim.create_optimizer_v2, timm.loss.LabelSmoothingCrossEntropy)
  in train.py's loop, over the same images exported once to a folder as JPEG files. (train.py
  itself ships neither in timm's wheel nor in its sdist, so its building blocks stand in for it.)
Then the loader alone against a bare decode loop (cv2.imdecode + resize of the same bytes), and
the loader's CPU cost per image (the workers' and the main process's CPU time over a pass, from
getrusage) for both paths, as batches crossed processes before (a CHW tensor per image then
torch.stack; a tensor per JPEG) and as they do now (common.data: tiles collated HWC straight into one
tensor; every JPEG of the batch packed into one tensor with offsets).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.bson_format import BsonWriter  # noqa: E402
from common.bson_index import build_index  # noqa: E402
from common.bson_reader import BsonReader, iter_products  # noqa: E402
from common.config import TrainConfig  # noqa: E402
from common.data import ImageDataset, collate_images, image_table, to_chw  # noqa: E402
from common.images import decode_jpeg, resize  # noqa: E402
from common.models import ModelSpec, create_model, normalization  # noqa: E402
from common.paths import TRAIN_EXAMPLE_BSON  # noqa: E402
from common.train import Runtime, fit, image_batch, train_loader  # noqa: E402

N_CLASSES = 36  # the sample's categories


def build_bench_bson(out: Path, n_images: int) -> tuple[Path, list[tuple[bytes, int]]]:
    """One image per product, cycling the real JPEGs of train_example.bson; labels = its categories."""
    source = list(iter_products(TRAIN_EXAMPLE_BSON))
    categories = sorted({p.category_id for p in source})
    pool = [(img, categories.index(p.category_id)) for p in source for img in p.images]
    items = [pool[i % len(pool)] for i in range(n_images)]
    with BsonWriter(out) as w:
        for pid, (jpeg, label) in enumerate(items):
            w.write(pid, [jpeg], label)
    return out, items


def export_folder(root: Path, items: list[tuple[bytes, int]]) -> Path:
    for i, (jpeg, label) in enumerate(items):
        d = root / f"c{label:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:06d}.jpg").write_bytes(jpeg)
    return root


def bench_ours(args, bson_path: Path, device: torch.device) -> float:
    index = build_index(bson_path, progress=False)
    reader = BsonReader(bson_path, index)
    rows = np.arange(len(index))
    cfg = TrainConfig(solution="bench", name="ours", model=args.model, input_size=args.size, epochs=1, batch_size=args.batch, num_workers=args.workers,
                      optimizer="nadam", lr=1e-3, schedule="constant", label_smoothing=0.1, amp=args.amp, channels_last=device.type == "cuda",
                      resume=False)
    torch.manual_seed(0)
    model = create_model(ModelSpec(args.model, N_CLASSES))
    mean, std = normalization(model)
    labels = index.category_ids.astype(np.int64)
    dataset = ImageDataset(reader, image_table(index.n_imgs, rows), labels, args.size, hflip=True)
    runtime = Runtime(device)
    with tempfile.TemporaryDirectory() as tmp:
        fit(cfg, model, train_loader(dataset, cfg, runtime, collate_images), None, image_batch(mean, std, cfg.channels_last), Path(tmp), runtime)
        return float(pd.read_csv(Path(tmp) / "summary.csv")["samples_per_s"].iloc[-1])


def bench_timm(args, folder: Path, device: torch.device) -> float:
    from timm.data import create_dataset, create_loader
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.optim import create_optimizer_v2

    torch.manual_seed(0)
    model = create_model(ModelSpec(args.model, N_CLASSES)).to(device)
    dataset = create_dataset("", root=str(folder), is_training=True)
    loader = create_loader(dataset, input_size=(3, args.size, args.size), batch_size=args.batch, is_training=True, no_aug=False, hflip=0.5,
                           scale=(1.0, 1.0), ratio=(1.0, 1.0), color_jitter=0.0, num_workers=args.workers, use_prefetcher=device.type == "cuda",
                           device=device, interpolation="bilinear")
    optimizer = create_optimizer_v2(model, "nadam", lr=1e-3)
    criterion = LabelSmoothingCrossEntropy(0.1)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and args.amp != "none")
    model.train()
    seen, start = 0, time.perf_counter()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with amp:
            loss = criterion(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def bench_loader(args, bson_path: Path, items: list[tuple[bytes, int]]) -> tuple[float, float]:
    from torch.utils.data import DataLoader

    index = build_index(bson_path, progress=False)
    dataset = ImageDataset(BsonReader(bson_path, index), image_table(index.n_imgs, np.arange(len(index))), None, args.size, hflip=True)
    loader = DataLoader(dataset, batch_size=args.batch, num_workers=args.workers, collate_fn=collate_images, persistent_workers=args.workers > 0)
    passes = 3
    sum(len(b["label"]) for b in loader)  # warm-up pass: worker start-up is not throughput
    start = time.perf_counter()
    n = sum(len(b["label"]) for _ in range(passes) for b in loader)
    ours = n / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(passes):
        for jpeg, _ in items:
            resize(decode_jpeg(jpeg), args.size)
    bare = passes * len(items) / (time.perf_counter() - start)
    return ours, bare


class BeforePacking(torch.utils.data.Dataset):
    """The items as they crossed processes before: a CHW tensor per tile (collated by torch.stack),
    a tensor per JPEG (collated as a list)."""

    def __init__(self, dataset: ImageDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        x, label, pos, last = self.dataset[i]
        if isinstance(x, bytes):
            return (torch.frombuffer(bytearray(x), dtype=torch.uint8) if x else torch.zeros(0, dtype=torch.uint8)), label, pos, last
        return to_chw(x), label, pos, last


def collate_before(batch: list) -> dict:
    pixels, labels, pos, last = zip(*batch)
    out = {"label": torch.tensor(labels), "pos": torch.tensor(pos)}
    if pixels[0].ndim == 1:
        return {**out, "jpeg": list(pixels), "flip": torch.tensor(last)}
    return {**out, "pixels": torch.stack(pixels), "ok": torch.tensor(last)}


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the loader's workers, joined after a pass)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def loader_cpu_us(args, bson_path: Path) -> dict:
    """CPU-microseconds per image of one loader pass (workers started and joined inside it), per path, before and after packing."""
    from torch.utils.data import DataLoader

    index = build_index(bson_path, progress=False)
    table = image_table(index.n_imgs, np.arange(len(index)))
    out = {}
    for path, device_decode in (("workers decode (cpu path)", False), ("device decode (jpeg path)", True)):
        dataset = ImageDataset(BsonReader(bson_path, index), table, None, args.size, hflip=True, device_decode=device_decode)
        for when, ds, collate in (("before", BeforePacking(dataset), collate_before), ("after", dataset, collate_images)):
            costs = []
            for _ in range(3):  # the least of 3 passes: another process's burst only adds
                start = cpu_seconds()
                n = sum(len(b["label"]) for b in DataLoader(ds, batch_size=args.batch, num_workers=args.workers, collate_fn=collate))
                costs.append((cpu_seconds() - start) / n * 1e6)
            out[(path, when)] = min(costs)
    return out


def print_loader_cost(args, costs: dict) -> None:
    print(f"loader CPU-us per image ({args.size} px, batch {args.batch}, {args.workers} workers, {args.images} images; workers + main process)")
    for path in dict.fromkeys(p for p, _ in costs):
        before, after = costs[(path, "before")], costs[(path, "after")]
        print(f"  {path:28s} before {before:8.1f}   after {after:8.1f}   after / before {after / before:5.2f}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--amp", default="bf16")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--work", default=None, help="folder for the bench files (default: a temporary one)")
    p.add_argument("--loader-only", action="store_true", help="only the loaders' CPU cost per image (no training)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.work or tmp)
        root.mkdir(parents=True, exist_ok=True)
        bson_path, items = build_bench_bson(root / "bench_train.bson", args.images)
        costs = loader_cpu_us(args, bson_path)
        if args.loader_only:
            print_loader_cost(args, costs)
            return {f"{path}, {when}": v for (path, when), v in costs.items()}
        folder = export_folder(root / "folder", items)
        timm_ips = bench_timm(args, folder, device)
        ours_ips = bench_ours(args, bson_path, device)
        loader_ips, bare_ips = bench_loader(args, bson_path, items)
    print(f"device {device}, model {args.model}, {args.size}px, batch {args.batch}, {args.images} images, {args.workers} loader workers, torch threads {torch.get_num_threads()}")
    print(f"{'training images/s, this loop (BSON reader)':48s} {ours_ips:9.1f}")
    print(f"{'training images/s, timm pipeline (JPEG folder)':48s} {timm_ips:9.1f}")
    print(f"{'ratio ours / timm':48s} {ours_ips / timm_ips:9.2f}")
    print(f"{'loader images/s (workers, decode+resize+flip)':48s} {loader_ips:9.1f}")
    print(f"{'bare decode+resize images/s (one process)':48s} {bare_ips:9.1f}")
    print(f"{'ratio loader / bare decode':48s} {loader_ips / bare_ips:9.2f}")
    print_loader_cost(args, costs)
    return {"ours": ours_ips, "timm": timm_ips, "loader": loader_ips, "bare": bare_ips} | {f"{p}, {w}": v for (p, w), v in costs.items()}


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
