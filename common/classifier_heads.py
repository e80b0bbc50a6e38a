"""Classifier heads a recipe can put on a timm trunk in place of its own (`head:` in a recipe),
registered by name with the trunk they were written for. The 1st place published only two model
files (bestfitting/kaggle: cdiscount/inception_resnet_v2.py, cdiscount/resnet.py); their heads are
these. The trunk keeps its pretrained weights; the head starts from scratch."""
from __future__ import annotations

from dataclasses import dataclass
from torch import nn
from torch.nn import functional as F

from .errors import DataError


@dataclass(frozen=True)
class HeadSpec:
    trunk: str  # the timm architecture it fits
    in_channels: int  # what the trunk's features have where the head starts
    channels: int  # the 1x1 conv's output (the hidden width); 0 = the class count
    replaces: str = ""  # the trunk's last layer it takes the place of ("" = added after the trunk)
    fc_init_std: float = 0.0  # normal init of the Linear layers (0 = PyTorch's default)


CLASSIFIER_HEADS: dict[str, HeadSpec] = {
    # inceptionresnetv2_kxv4: conv2d_7b -> BasicConv2d(2080, 4096, 1x1), avg pool, Linear(4096, 4096) -> BN -> ReLU -> Linear(4096, classes)
    "kxv4": HeadSpec("inception_resnet_v2", 2080, 4096, replaces="conv2d_7b"),
    # resnet50_kxv3a: + Conv1x1(2048, classes) -> BN -> ReLU, avg pool, Linear(classes, classes) -> BN -> ReLU -> Linear, N(0, 0.01) init
    "kxv3a": HeadSpec("resnet50", 2048, 0, fc_init_std=0.01),
}


class _AnyBatch:
    """BatchNorm that normalises a training input of one value per channel (a batch of one product
    at a 1x1 map: a per-K fine-tune of a tiny dataset) with its running statistics, not an error."""

    def forward(self, x):
        if self.training and x.numel() == x.shape[1]:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


class BatchNorm1dAnyBatch(_AnyBatch, nn.BatchNorm1d):
    pass


class BatchNorm2dAnyBatch(_AnyBatch, nn.BatchNorm2d):
    pass


class RecordedHead(nn.Module):
    """trunk features -> 1x1 conv + BN + ReLU -> global average -> Linear + BN + ReLU -> Linear."""

    def __init__(self, trunk: nn.Module, spec: HeadSpec, num_classes: int):
        super().__init__()
        if spec.replaces:
            setattr(trunk, spec.replaces, nn.Identity())
        trunk.reset_classifier(0)
        self.trunk, self.num_classes = trunk, num_classes
        self.pretrained_cfg = getattr(trunk, "pretrained_cfg", {})
        width = spec.channels or num_classes
        self.squeeze = nn.Sequential(nn.Conv2d(spec.in_channels, width, 1, bias=False), BatchNorm2dAnyBatch(width), nn.ReLU(inplace=True))
        self.fc = nn.Sequential(nn.Linear(width, width), BatchNorm1dAnyBatch(width), nn.ReLU(inplace=True), nn.Linear(width, num_classes))
        if spec.fc_init_std:
            for layer in (self.fc[0], self.fc[3]):
                nn.init.normal_(layer.weight, std=spec.fc_init_std)
                nn.init.zeros_(layer.bias)

    def forward(self, x):
        return self.fc(self.squeeze(self.trunk.forward_features(x)).mean((2, 3)))


def with_head(model: nn.Module, name: str, arch: str, num_classes: int) -> nn.Module:
    """The timm model with the named head instead of its classifier ("" keeps timm's)."""
    if not name:
        return model
    if name not in CLASSIFIER_HEADS:
        raise DataError(f"unknown classifier head {name!r}; choose from {sorted(CLASSIFIER_HEADS)}")
    spec = CLASSIFIER_HEADS[name]
    if arch.partition(".")[0] != spec.trunk:
        raise DataError(f"classifier head {name} is written for {spec.trunk}, not {arch}")
    return RecordedHead(model, spec, num_classes)

