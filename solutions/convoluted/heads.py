"""Second-level nets over a product's padded views of base-net features (2nd place).

Every head takes (x float[B, V, D], mask bool[B, V]) and returns logits [B, C]; a masked view
(missing image, undecodable image) never contributes. Heads are chosen by name (`model:` in a
fuse recipe) through HEADS, like timm's registry.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

HEADS: dict[str, Callable[..., nn.Module]] = {}


def register_head(name: str):
    def wrap(cls):
        HEADS[name] = cls
        return cls

    return wrap


@register_head("fusion_gated")
class GatedFusionHead(nn.Module):
    """Member A's FcNet3 (heng/code/solution-submit-1/net/model/cdiscount/fcnet3.py): dropout,
    per-view SE gate sigmoid(fc(relu(fc(x)))) * x with a C/gate_reduction bottleneck, sum over
    views, Linear -> PReLU -> dropout -> Linear -> PReLU -> dropout -> classes. Recorded: hidden
    7168 then 4096, gate C/2, dropout 0.5 on the input and 0.1 after each PReLU (fuse_gated.yaml)."""

    def __init__(self, in_dim: int, num_classes: int, hidden: int = 2048, hidden2: int = 0, gate_reduction: int = 16,
                 drop_rate: float = 0.5, hidden_drop: float = 0.0, **_: object):
        super().__init__()
        self.num_classes = num_classes
        self.drop = nn.Dropout(drop_rate)
        squeeze = max(in_dim // gate_reduction, 8)
        self.gate = nn.Sequential(nn.Linear(in_dim, squeeze), nn.ReLU(inplace=True), nn.Linear(squeeze, in_dim), nn.Sigmoid())
        second = hidden2 or hidden
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.PReLU(), nn.Dropout(hidden_drop),
                                 nn.Linear(hidden, second), nn.PReLU(), nn.Dropout(hidden_drop), nn.Linear(second, num_classes))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.drop(x)
        x = self.gate(x) * x * mask.unsqueeze(-1).to(x.dtype)
        return self.mlp(x.sum(dim=1))


ACTIVATIONS = {"relu": lambda: nn.ReLU(inplace=True), "selu": nn.SELU, "prelu": nn.PReLU}


@register_head("fusion_max")
class MaxFusionHead(nn.Module):
    """Member B's second-level net (miha/layer2_models/l2_inceptionresnet_10k.py): a Dense layer per
    view (shared weights), max over the real views, dropout, the classifier. Recorded: 10,000 or
    12,000 SELU units with lecun_normal weights, no input dropout, dropout 0.3 (fuse_b_*.yaml); the
    mini head: ReLU, dropout on the input too (`input_drop` -1 = drop_rate)."""

    def __init__(self, in_dim: int, num_classes: int, hidden: int = 2048, drop_rate: float = 0.5, activation: str = "relu",
                 input_drop: float = -1.0, **_: object):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {sorted(ACTIVATIONS)}")
        self.num_classes = num_classes
        dense = nn.Linear(in_dim, hidden)
        if activation == "selu":  # SELU keeps its self-normalising property only from lecun_normal weights
            nn.init.normal_(dense.weight, std=in_dim**-0.5)
            nn.init.zeros_(dense.bias)
        self.per_view = nn.Sequential(nn.Dropout(drop_rate if input_drop < 0 else input_drop), dense, ACTIVATIONS[activation]())
        self.classifier = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.per_view(x)
        h = h.masked_fill(~mask.unsqueeze(-1), torch.finfo(h.dtype).min)
        pooled = h.max(dim=1).values
        pooled = torch.where(mask.any(dim=1, keepdim=True), pooled, torch.zeros_like(pooled))  # no view at all -> zeros
        return self.classifier(pooled)


def create_head(name: str, in_dim: int, num_classes: int, **kwargs) -> nn.Module:
    if name not in HEADS:
        raise ValueError(f"unknown fusion head {name!r}; choose from {sorted(HEADS)}")
    return HEADS[name](in_dim, num_classes, **kwargs)
