"""Classifying new products with the loaded predictor: the time and memory it takes to load, the
median latency of one product, and a batch's throughput, for one model and for the stack, against
the exported network alone (onnxruntime) on the same images.

    python bench/bench_predict.py --work work [--model dylan_mini_lite0] [--singles 50] [--batch 64] [--repeats 3]

The products are the work dir's own test products (their JPEG bytes, as a user hands them over).
`Predictor.from_work` loads every source the chosen one is made from once (for the stack every
fold model, the blends, the MD5 dictionary, OCR's text models and the stacker); "1 product" is the
median over --singles different products, one `predict_products` call each (a product the CNNs
call media is read by tesseract, so it costs more than the median); "batch" the median of
--repeats calls on --batch products. Memory: the process's resident set after loading, less what
it held before (VmRSS). The baseline is the exported network's forward pass alone on the same
images (no data path, no TTA, no product mean), the floor no pipeline over that model beats.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python bench/bench_predict.py` from anywhere

from common.bson_reader import iter_products  # noqa: E402
from common.images import decode_jpeg, resize  # noqa: E402
from common.paths import WorkDir  # noqa: E402
from ensembling.predict.predictor import Predictor  # noqa: E402
from ensembling.predict.products import NewProduct  # noqa: E402


def test_products(work: WorkDir, n: int) -> list[NewProduct]:
    test_bson = json.loads((work.root / "dataset.json").read_text())["test"]
    out = []
    for p in iter_products(test_bson):
        if p.images:
            out.append(NewProduct(str(p.product_id), list(p.images)))
        if len(out) == n:
            break
    return out


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def resident_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_source(work: WorkDir, source: str, singles: list[NewProduct], products: list[NewProduct], repeats: int) -> dict:
    before, t0 = resident_mb(), time.perf_counter()
    predictor = Predictor.from_work(work, source)
    load_s, loaded_mb = time.perf_counter() - t0, resident_mb() - before
    predictor.predict_products(singles[:1], 1)  # warm-up: first-call allocations
    one = []
    for p in singles:
        t0 = time.perf_counter()
        predictor.predict_products([p], 1)
        one.append(time.perf_counter() - t0)
    batch = median_seconds(lambda: predictor.predict_products(products, 1), repeats)
    predictor.close()
    return {"source": source, "sources": len(predictor.plan), "load_s": round(load_s, 1), "loaded_mb": round(loaded_mb),
            "one_product_s": round(statistics.median(one), 3), "one_product_p90_s": round(float(np.percentile(one, 90)), 3),
            "batch_products": len(products), "batch_s": round(batch, 2), "products_per_s": round(len(products) / batch, 1)}


def bench_onnx(work: WorkDir, model: str, products: list[NewProduct], repeats: int) -> dict:
    import onnxruntime as ort

    from ensembling.predict.onnx_export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(work, model, Path(tmp) / "m.onnx")
        meta = json.loads((Path(tmp) / "m.onnx.json").read_text())
        session = ort.InferenceSession(str(Path(tmp) / "m.onnx"))
    size = meta["resize_to"]
    images = [img for p in products for img in p.images]
    pixels = np.stack([resize(decode_jpeg(b), size) for b in images]).transpose(0, 3, 1, 2).copy()
    one = median_seconds(lambda: session.run(["probs"], {"pixels": pixels[: len(products[0].images)]}), repeats)
    batch = median_seconds(lambda: session.run(["probs"], {"pixels": pixels}), repeats)
    return {"source": f"{model} (ONNX forward only)", "sources": 0, "load_s": float("nan"), "loaded_mb": float("nan"),
            "one_product_s": round(one, 4), "one_product_p90_s": float("nan"), "batch_products": len(products), "batch_s": round(batch, 4),
            "products_per_s": round(len(products) / batch, 1)}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True)
    p.add_argument("--model", default="dylan_mini_lite0", help="the one-model row (a single-image model source)")
    p.add_argument("--singles", type=int, default=50, help="different products timed one by one (the median is reported)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    work = WorkDir(args.work)
    pool = test_products(work, args.batch + args.singles)
    products, singles = pool[: args.batch], pool[args.batch :]
    rows = [bench_onnx(work, args.model, products, args.repeats)]
    rows += [bench_source(work, s, singles, products, args.repeats) for s in (args.model, "stack")]
    print(f"{'source':45s} {'sources':>7s} {'load s':>6s} {'MB':>5s} {'1 product s':>11s} {'p90 s':>6s} {'batch':>6s} {'batch s':>8s} {'products/s':>10s}")
    for r in rows:
        print(f"{r['source']:45s} {r['sources']:7d} {r['load_s']:6.1f} {r['loaded_mb']:5.0f} {r['one_product_s']:11.3f} {r['one_product_p90_s']:6.3f} "
              f"{r['batch_products']:6d} {r['batch_s']:8.3f} {r['products_per_s']:10.1f}")
    return rows


if __name__ == "__main__":
    main()
