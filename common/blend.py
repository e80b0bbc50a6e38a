"""Blend prediction sources (a solution's models, a team's members) into one source + submission."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .atomic import write_json
from .infer import average_topk
from .metrics import accuracy, class_prior_accuracy, product_report
from .paths import WorkDir
from .predictions import DEFAULT_K, TopK, load_topk, save_topk
from .prepare import DatasetPaths
from .submission import score_submission, submission_from_topk


@dataclass
class Labels:
    """Train labels and image counts by _id, for scoring OOF predictions."""

    ids: np.ndarray
    labels: np.ndarray
    n_imgs: np.ndarray

    @classmethod
    def load(cls, work: WorkDir) -> "Labels":
        paths = DatasetPaths.load(work)
        index = paths.index(work, "train")
        order = np.argsort(index.ids, kind="stable")
        labels = paths.tree().to_index(index.category_ids[order], strict=False)
        return cls(np.asarray(index.ids[order]), labels, np.asarray(index.n_imgs[order]))

    def rows(self, ids: np.ndarray) -> np.ndarray:
        return np.clip(np.searchsorted(self.ids, ids), 0, len(self.ids) - 1)

    def of(self, ids: np.ndarray) -> np.ndarray:
        return self.labels[self.rows(ids)]


def find_sources(work: WorkDir, prefix: str) -> list[str]:
    """Finished sources named <prefix>*, ablation recipes (…_ablation_…) left out of blends."""
    root = work.root / "preds"
    found = [p for p in root.glob(f"{prefix}*") if (p / "oof.npz").exists() and (p / "test.npz").exists()]
    return sorted(p.name for p in found if "_ablation_" not in p.name)


def oof_accuracy(preds: TopK, labels: Labels) -> float:
    return accuracy(preds.top1, labels.of(preds.ids))


def power_mean(parts: list[TopK], k: int, weights: list[float] | None = None, power: float = 1.0) -> TopK:
    """Weighted mean of p**power, raised back to 1/power (power 0.5 = the 2nd place's sqrt blend:
    it lets a confident member weigh less than in a plain mean). Argmax is what matters; the
    1/power keeps the scores on a probability-like scale for later stages."""
    if power == 1.0:
        return average_topk(parts, k, weights)
    raised = [TopK(p.ids, p.labels, (p.probs.astype(np.float32) ** power).astype(np.float16)) for p in parts]
    out = average_topk(raised, k, weights)
    return TopK(out.ids, out.labels, (out.probs.astype(np.float32) ** (1.0 / power)).astype(np.float16))


def blend(work: WorkDir, sources: list[str], name: str, weights: list[float] | None = None, k: int = DEFAULT_K, power: float = 1.0) -> dict:
    """Weighted (power) mean of the sources' probabilities on their common OOF products and on
    test; writes preds/<name>/ and submissions/<name>.csv.gz; returns the figures it printed."""
    if not sources:
        raise FileNotFoundError(f"no prediction sources to blend under {work.root / 'preds'}")
    labels = Labels.load(work)
    oofs = [load_topk(work.preds(s) / "oof.npz") for s in sources]
    common_ids = oofs[0].ids
    for o in oofs[1:]:
        common_ids = np.intersect1d(common_ids, o.ids)
    oofs = [o.take(np.searchsorted(o.ids, common_ids)) for o in oofs]
    oof = power_mean(oofs, k, weights, power)
    test = power_mean([load_topk(work.preds(s) / "test.npz") for s in sources], k, weights, power)
    save_topk(work.preds(name) / "oof.npz", oof)
    save_topk(work.preds(name) / "test.npz", test)
    paths = DatasetPaths.load(work)
    tree, test_index = paths.tree(), paths.index(work, "test")
    prior = int(np.bincount(labels.labels[labels.labels >= 0]).argmax())
    sub, fallback = submission_from_topk(work.submissions / f"{name}.csv.gz", test, np.asarray(test_index.ids), tree, prior)
    report = {
        "name": name,
        "sources": {s: oof_accuracy(o, labels) for s, o in zip(sources, oofs)},
        "weights": weights or [1.0] * len(sources),
        "power": power,
        "oof_products": int(len(oof)),
        "oof_product_accuracy": oof_accuracy(oof, labels),
        "oof_report": product_report(oof.top1, labels.of(oof.ids), labels.n_imgs[labels.rows(oof.ids)], tree),
        "class_prior_accuracy": class_prior_accuracy(labels.labels[labels.labels >= 0], labels.of(oof.ids)),
        "submission": str(sub),
        "test_rows_from_fallback": fallback,
        "test_accuracy": score_submission(sub, paths.test_labels) if paths.test_labels else None,
    }
    write_json(work.preds(name) / "summary.json", report)
    return report


def print_report(report: dict) -> None:
    for source, acc in report["sources"].items():
        print(f"  {source:40s} OOF product accuracy {acc:.4f}")
    print(f"  {report['name'] + ' (blend)':40s} OOF product accuracy {report['oof_product_accuracy']:.4f} on {report['oof_products']} products")
    print(f"  {'class-prior baseline':40s} OOF product accuracy {report['class_prior_accuracy']:.4f}")
    by_count = report["oof_report"]["by_image_count"]
    print("  blend OOF accuracy by image count: " + ", ".join(f"{k}: {v['accuracy']:.3f} ({v['products']})" for k, v in by_count.items()))
    print(f"  blend OOF level-1 accuracy: {report['oof_report']['level1_accuracy']:.4f}")
    if report["test_accuracy"] is not None:
        print(f"  mini test accuracy of {report['submission']}: {report['test_accuracy']:.4f}")
    print(f"  test rows from the fallback (no image prediction): {report['test_rows_from_fallback']}")


def solution_main(solution: str, description: str, argv: list[str] | None = None) -> dict:
    """`[--work W] [--sources a b]`: average a solution's sources (default: preds/<solution>_*)."""
    import argparse

    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=None)
    p.add_argument("--sources", nargs="*", help=f"prediction sources to average (default: every preds/{solution}_*)")
    args = p.parse_args(argv)
    work = WorkDir(args.work)
    sources = args.sources or find_sources(work, f"{solution}_")
    report = blend(work, sources, solution)
    print(f"{solution}: mean of {len(sources)} models")
    print_report(report)
    return report
