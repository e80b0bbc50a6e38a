"""One trained single-image CNN of a work dir as ONNX, its preprocessing in a JSON beside it.

    python -m ensembling.predict --work W --export-onnx dylan_mini_lite0 --out model.onnx [--fold K]

The graph takes what the data path hands the network before normalising: `pixels`, uint8
[N, 3, S, S] RGB (an image decoded, resized to input_size with OpenCV's INTER_AREA when shrinking,
then the centre `crop` window when the recipe has one), and returns `probs`, float32 [N, C], the
softmax (mean / std are inside the graph). Not included, as the JSON says: TTA (the recipe's
views, e.g. the mean with the mirrored image) and the product's mean over its images; output k is
the category_id at position k of `category_ids`.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import numpy as np

from common.atomic import write_json
from common.errors import DataError
from common.paths import WorkDir
from common.prepare import DatasetPaths
from common.sources import read_source

from .plan import recipe_of

OPSET = 18


def softmax_net(model, mean, std):
    """uint8 RGB NCHW -> probabilities: the normalisation the data path applies, then the net."""
    import torch

    class Probabilities(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255)
            self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255)

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.net((pixels.float() - self.mean) / self.std).softmax(1)

    return Probabilities().eval()


def exported_model(work: WorkDir, source: str, fold: int):
    """(the recipe, the fold, its trained net) of a single-image model source."""
    from common.recipe import solution_kinds, trained_model

    info = read_source(work, source)
    if info.kind not in ("model", "ablation"):
        raise DataError(f"--export-onnx {source}: a {info.kind}, not one trained model (choose a model source)")
    cfg = recipe_of(work, info)
    kinds, _ = solution_kinds(info.solution)
    if not kinds[cfg.stage].single_image:
        raise DataError(f"--export-onnx {source}: recipe stage {cfg.stage!r} is not one single-image net "
                        f"(exportable: the stages {sorted(k for k, v in kinds.items() if v.single_image)} of {info.solution})")
    folds = info.summary.get("folds", [])
    fold = folds[0] if fold < 0 and folds else fold
    if fold not in folds:
        raise DataError(f"--export-onnx {source}: fold {fold} is not one of its trained folds {folds}")
    n_classes = len(DatasetPaths.load(work).tree())
    return cfg, fold, trained_model(cfg, n_classes, work.model_dir(info.solution, cfg.name, fold) / "last.pt")


def export_onnx(work: WorkDir, source: str, out: str | os.PathLike, fold: int = -1) -> str:
    """Write out (.onnx) and out.json (preprocessing, classes); returns a line saying what was written."""
    import torch

    from common.models import normalization

    cfg, fold, model = exported_model(work, source, fold)
    mean, std = normalization(model)
    net = softmax_net(model, mean, std)
    size = cfg.crop or cfg.input_size
    example = torch.zeros(2, 3, size, size, dtype=torch.uint8)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(sys.stderr):  # the exporter's progress lines
        torch.onnx.export(net, (example,), str(out), input_names=["pixels"], output_names=["probs"], opset_version=OPSET, dynamo=True,
                          dynamic_shapes={"pixels": {0: torch.export.Dim("n", min=1)}},  # torch.export's exporter (onnxscript)
                          external_data=False)  # the weights inside model.onnx: one file to copy (a net under 2 GB, every recipe's)
    tree = DatasetPaths.load(work).tree()
    write_json(out.with_name(out.name + ".json"), {
        "source": source, "fold": fold, "model": cfg.model, "input": "pixels: uint8 [N, 3, S, S] RGB", "output": "probs: float32 [N, C] softmax",
        "resize_to": cfg.input_size, "resize": "OpenCV INTER_AREA when shrinking, INTER_LINEAR when enlarging (common/images.resize)",
        "centre_crop": cfg.crop or None, "mean": list(mean), "std": list(std), "normalisation": "inside the graph: (pixels - 255 mean) / (255 std)",
        "not_included": {"tta": list(cfg.tta), "product": f"the {cfg.aggregate} over a product's images"},
        "category_ids": [int(c) for c in tree.to_id(np.arange(len(tree)))], "opset": OPSET})
    return f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) and {out.name}.json: {source} fold {fold}, input {size} px"
