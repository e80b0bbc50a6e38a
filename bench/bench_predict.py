"""Classifying new products: latency of one product and throughput of a batch, for one model and
for the stack, against the exported network alone (onnxruntime) on the same images.

    python bench/bench_predict.py --work work [--model dylan_mini_lite0] [--batch 64] [--repeats 3]

The products are the work dir's own test products (their real files, written as a folder, the
way a user hands them over). Each figure is the median of --repeats calls of
`Predictor.predict_products` (which builds the scratch work dir, indexes the new BSON and reruns
every source the chosen one needs: for the stack every model, blend, MD5, OCR and the stacker),
so it includes the fixed cost of loading every network once per call; the baseline is the
exported network's forward pass alone on the same images (no data path, no TTA, no product mean),
the floor no pipeline over that model beats.
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


def bench_source(work: WorkDir, source: str, products: list[NewProduct], repeats: int) -> dict:
    predictor = Predictor(work, source)
    one = median_seconds(lambda: predictor.predict_products(products[:1], 1), repeats)
    batch = median_seconds(lambda: predictor.predict_products(products, 1), repeats)
    return {"source": source, "sources_rerun": len(predictor.plan), "one_product_s": round(one, 2), "batch_products": len(products),
            "batch_s": round(batch, 2), "products_per_s": round(len(products) / batch, 2)}


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
    return {"source": f"{model} (ONNX forward only)", "sources_rerun": 0, "one_product_s": round(one, 4), "batch_products": len(products),
            "batch_s": round(batch, 4), "products_per_s": round(len(products) / batch, 1)}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True)
    p.add_argument("--model", default="dylan_mini_lite0", help="the one-model row (a single-image model source)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    work = WorkDir(args.work)
    products = test_products(work, args.batch)
    rows = [bench_onnx(work, args.model, products, args.repeats)]
    rows += [bench_source(work, s, products, args.repeats) for s in (args.model, "stack")]
    print(f"{'source':45s} {'sources':>7s} {'1 product s':>11s} {'batch':>6s} {'batch s':>8s} {'products/s':>10s}")
    for r in rows:
        print(f"{r['source']:45s} {r['sources_rerun']:7d} {r['one_product_s']:11.3f} {r['batch_products']:6d} {r['batch_s']:8.3f} {r['products_per_s']:10.2f}")
    return rows


if __name__ == "__main__":
    main()
