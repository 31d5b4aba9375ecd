"""Checkpoints load with weights_only=True; a wrong or damaged one is a clear error naming what differs."""

import os

import pytest
import torch

from dmr_core.errors import CheckpointError
from dmr_core.nets.checkpoints import load_checkpoint
from dmr_core.nets.classifier import build_classifier, load_classifier, save_classifier
from dmr_core.nets.generator import ConvVAE, load_generator, save_generator


def test_wrong_architecture_checkpoint_names_keys(tmp_path):
    save_classifier(build_classifier("resnet20"), "resnet32", tmp_path / "c.pt")  # lies about its arch
    with pytest.raises(CheckpointError, match=r"missing: layer1\.3\.") as info:
        load_classifier(tmp_path / "c.pt")
    assert "architecture" in str(info.value)


def test_shape_mismatch_is_named(tmp_path):
    model = build_classifier("resnet20")
    state = model.state_dict()
    state["linear.weight"] = torch.zeros(100, 64)
    state["linear.bias"] = torch.zeros(100)
    torch.save({"arch": "resnet20", "num_classes": 10, "state_dict": state}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=r"shape mismatch: linear\.bias \(100,\) vs \(10,\)"):
        load_classifier(tmp_path / "c.pt")
    # a checkpoint from before class counts were stored takes its count from the classification layer
    torch.save({"arch": "resnet20", "state_dict": state}, tmp_path / "old.pt")
    assert load_classifier(tmp_path / "old.pt").classifier_head().out_features == 100


def test_truncated_and_foreign_checkpoints_fail_clearly(tmp_path):
    save_classifier(build_classifier("resnet20"), "resnet20", tmp_path / "c.pt")
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a classifier checkpoint"):
        load_classifier(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")


def test_checkpoints_refuse_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"arch": "resnet20", "state_dict": {}, "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(tmp_path / "evil.pt")


def test_generator_checkpoint_with_other_latent_size(tmp_path):
    save_generator(ConvVAE(latent_dim=16, base_channels=8), "conv_vae", tmp_path / "g.pt")
    payload = torch.load(tmp_path / "g.pt", weights_only=True)
    payload["config"]["latent_dim"] = 32  # config and weights disagree
    torch.save(payload, tmp_path / "g.pt")
    with pytest.raises(CheckpointError, match=r"shape mismatch: .*to_mu"):
        load_generator(tmp_path / "g.pt")
