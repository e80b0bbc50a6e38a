"""2nd place, member A's base nets: single-image classifiers (SGD, shift-scale-rotate + hflip +
rot90), then one pass per fold that both predicts and stores penultimate features.

Per fold k the base net trains on the other folds; the same net then
  - predicts fold k and test (mean of a product's image probabilities, TTA): the source
    preds/convoluted_<name>, i.e. the "plain mean" the fusion heads are measured against;
  - writes the features of every TTA view (orig, and the hflip copy) of fold k's products, of the
    training products the heads learn from, and of the test products into
    work/features/convoluted/<name>/fold<k>/{train,test}.*
So a fusion head of fold k only ever sees features from nets that never saw fold k's labels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from common.config import TrainConfig
from common.infer import predict_images
from common.models import normalization, penultimate_features
from common.predictions import TopK
from common.recipe import FoldJob, FoldOutput, train_image_model, trained_model
from common.train import Batch, Runtime, save_checkpoint

from .feature_store import FeatureWriter


@dataclass
class BaseConfig(TrainConfig):
    solution: str = "convoluted"
    stage: str = "base"
    optimizer: str = "sgd"
    feature_clip: float = 3.0  # the team clipped features to [0, 3] before uint8 quantisation
    feature_train_products: int = 0  # training products whose features are stored for the heads (0 = all)
    # the store keeps one copy per TTA view: tta [orig, hflip] stores the flip copy, [orig] halves the store


def classifier_as_linear(model: nn.Module) -> nn.Linear:
    """The model's classifier as a Linear on pooled features (DPN's is a 1x1 conv)."""
    clf = model.get_classifier()
    weight = clf.weight.detach().reshape(clf.weight.shape[0], -1)
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=clf.bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if clf.bias is not None:
            linear.bias.copy_(clf.bias.detach())
    return linear.to(weight.device)


def ranks_in_batch(pos: np.ndarray) -> np.ndarray:
    """Image rank within its product, for a batch of whole products in index order."""
    starts = np.r_[0, np.flatnonzero(pos[1:] != pos[:-1]) + 1]
    first = np.repeat(starts, np.diff(np.r_[starts, len(pos)]))
    return np.arange(len(pos)) - first


class FeatureTap(nn.Module):
    """The base net as the inference driver sees it: logits from its own classifier on the pooled
    features, each call's features kept (one call per TTA view) for the feature store."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.classifier = net, classifier_as_linear(net)
        self.num_classes, self.pretrained_cfg = self.classifier.out_features, getattr(net, "pretrained_cfg", {})
        self.views: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = penultimate_features(self.net, x).float()
        self.views.append(features)
        return self.classifier(features)

    def take(self) -> np.ndarray:
        """float32[n, views, dim] of the batch just predicted."""
        out = torch.stack(self.views, 1).cpu().numpy()
        self.views.clear()
        return out


def extract_split(tap: FeatureTap, reader, rows: np.ndarray, job: FoldJob, split: str) -> TopK:
    """Predict `rows` and store their features in <features>/<split>.*: rank 0 creates the file,
    every rank fills its products and fsyncs them, then (after a barrier, so on several nodes
    sharing a filesystem no rank's rows are still in flight) rank 0 renames it into place; every
    rank returns once the store is complete (a later stage on any node may open it)."""
    cfg, runtime = job.cfg, job.runtime
    directory = job.work.features(cfg.solution, cfg.name, job.fold)
    make = lambda create: FeatureWriter(directory, split, reader.index.n_imgs, tap.classifier.in_features, cfg.tta, cfg.feature_clip,  # noqa: E731
                                        cfg.model, create=create)
    writer = make(True) if runtime.is_main else None
    _barrier(runtime)
    writer = writer or make(False)

    def store(raw: dict, batch: Batch) -> None:
        pos = raw["pos"].numpy()
        writer.write(rows[pos], ranks_in_batch(pos), tap.take(), batch.ok.cpu().numpy())

    preds = predict_images(tap, reader, rows, cfg, runtime, *normalization(tap.net), after_batch=store, desc=f"features {split}")
    writer.close()  # fsync'ed: this rank's rows are on the (shared) disk
    _barrier(runtime)
    if runtime.is_main:
        writer.commit(rows[reader.index.n_imgs[rows] > 0])
    _barrier(runtime)
    return preds


def _barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        torch.distributed.barrier()


def feature_rows(cfg: BaseConfig, train_rows: np.ndarray, fold: int) -> np.ndarray:
    """The training products whose features the heads will learn from (all, or a seeded sample)."""
    if 0 < cfg.feature_train_products < len(train_rows):
        rng = np.random.default_rng([cfg.seed, fold])
        return np.sort(rng.choice(train_rows, cfg.feature_train_products, replace=False))
    return train_rows


def save_classifier(job: FoldJob, tap: FeatureTap) -> None:
    """The base net's classifier beside its features: the rank / count heads start from it."""
    features = job.work.features(job.cfg.solution, job.cfg.name, job.fold)
    if job.runtime.is_main:
        features.mkdir(parents=True, exist_ok=True)
        save_checkpoint(features / "classifier.pt", {"weight": tap.classifier.weight.detach().cpu(), "bias": tap.classifier.bias.detach().cpu()})


def base_test(job: FoldJob, tap: FeatureTap) -> TopK:
    return extract_split(tap, job.data.test, job.data.test_rows, job, "test")


def base_fold(job: FoldJob) -> FoldOutput:
    cfg, data = job.cfg, job.data
    tap = FeatureTap(train_image_model(job)).eval()
    train_rows, val_rows = job.rows
    save_classifier(job, tap)
    seen = extract_split(tap, data.train, np.union1d(feature_rows(cfg, train_rows, job.fold), val_rows), job, "train")
    oof = seen.take(np.flatnonzero(np.isin(seen.ids, data.train.index.ids[val_rows])))
    return FoldOutput(oof, base_test(job, tap))


def base_load_test(job: FoldJob) -> FeatureTap:
    """The trained net, tapped: predicting the test split stores its features for the heads (base_test)."""
    return FeatureTap(trained_model(job.cfg, job.num_classes, job.out / "last.pt")).eval().to(job.runtime.device)
