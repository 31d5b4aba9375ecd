"""DenseNet-BC-100 (k = 12): the published CIFAR-10 weights load into it and classify the JPEG test split."""

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dmr_core.nets.cifar_nets import DENSENET_BC_MEAN, DENSENET_BC_STD, DenseNetBC
from dmr_core.nets.classifier import PRETRAINED_FILES, architecture_layout, build_classifier, load_pretrained

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def offline_file(name: str, folder: str) -> Path | None:
    home = os.environ.get("DMR_DATA_HOME")
    if not home:
        return None
    path = Path(home).resolve().parent / folder / name if folder == "models" else Path(home) / name
    return path if path.is_file() else None


def test_the_architecture_is_densenet_bc_100():
    model = build_classifier("densenet100_bc", num_classes=10)
    assert isinstance(model, DenseNetBC)
    assert sum(p.numel() for p in model.parameters()) == 769_162  # DenseNet-BC-100, k = 12: 0.77 M (Huang et al.)
    layout = architecture_layout("densenet100_bc")
    assert (layout.default_layer, layout.pooled_layer, layout.penultimate_size) == ("relu", "relu", 342)
    reps = model.eval().representations(torch.rand(2, 3, 32, 32))
    assert reps["feature_map"].shape == (2, 342, 8, 8) and reps["logits"].shape == (2, 10)
    # the logits are the classification layer of the pooled feature map, as ReAct / ASH / KIRBY need
    assert torch.allclose(model.logits_from_feature_map(reps["feature_map"]), reps["logits"], atol=1e-5)
    assert torch.equal(model.mean.flatten(), torch.tensor(DENSENET_BC_MEAN))
    assert torch.equal(model.std.flatten(), torch.tensor(DENSENET_BC_STD))


def test_the_published_weights_classify_the_jpeg_test_split():
    """The file's keys load exactly (checked by the loader) and the network is the one they were trained for:
    on 100 test images of each class it is right about as often as the whole split says (82.3 %)."""
    weights = offline_file(PRETRAINED_FILES["densenet100_bc"], "models")
    archive = offline_file("cifar10.tar", "data")
    if weights is None or archive is None:
        pytest.skip("needs DMR_DATA_HOME with cifar10.tar and the models folder beside it")
    model = load_pretrained("densenet100_bc").eval()
    images, labels, seen = [], [], dict.fromkeys(CIFAR10, 0)
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and parts[1:2] == ["test"] and seen[parts[2]] < 100:
                seen[parts[2]] += 1
                images.append(np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")))
                labels.append(CIFAR10.index(parts[2]))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        predicted = torch.cat([model(x[i:i + 200]).argmax(1) for i in range(0, len(x), 200)])
    accuracy = (predicted.numpy() == np.array(labels)).mean()
    assert len(labels) == 1000 and 0.75 < accuracy < 0.9, accuracy
